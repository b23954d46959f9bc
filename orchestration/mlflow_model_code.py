"""The code that defines a logged GROVE MLflow model ("models from code"): MLflow copies this file into
the model and runs it when the model loads, instead of unpickling an object. Not imported by the project."""

from mlflow.models import set_model

from orchestration.mlflow_model import GrovePyfunc

set_model(GrovePyfunc())
