"""The `grove` command: the user's entry point. Sub-commands live next to the code they drive."""

from __future__ import annotations

import logging

import typer

from annotation.cli import app as annotate_app
from grove.cli import app as model_app
from evaluation.cli import app as eval_app
from grove.data.cli import app as data_app
from grove.weights.cli import app as weights_app
from orchestration.commands import compare_command, demo_command, pipeline_app, report_command, ui_command
from orchestration.data_versions import dvc_app

app = typer.Typer(
    name="grove",
    help="GROVE grounded video captioning: data, annotation, training, inference, evaluation, orchestration.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(data_app, name="data", help="Synthetic data, conversion of official formats, video catalogs.")
app.registered_commands += model_app.registered_commands  # `grove train`, `grove infer`
app.add_typer(weights_app, name="weights", help="Import official GROVE / GLaMM checkpoints into this project's format.")
app.add_typer(annotate_app, name="annotate", help="Three-stage automatic annotation of a catalog; its quality against ground truth.")
app.add_typer(eval_app, name="eval", help="Evaluate predictions: iGround, VidSTG, ActivityNet-Entities, temporal benchmarks.")
app.command("demo")(demo_command)
app.command("compare")(compare_command)
app.command("report")(report_command)
app.command("ui")(ui_command)
app.add_typer(dvc_app, name="dvc", help="Data versioning of a profile that dvc.yaml does not describe (paper): track its outputs, push them to a remote.")
app.add_typer(pipeline_app, name="pipeline", help="Lineage steps of the orchestration layer, for DVC stages (iground, subset, standin, benchmark, predict-benchmark, evaluate-benchmark, curve).")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


if __name__ == "__main__":
    app()
