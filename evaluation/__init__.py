"""Evaluation: metrics faithful to the official protocols, and metric tables.

Modules: captions (pycocoevalcap), iground (AP50, Recall), ap (vectorised COCOeval AP), vidstg,
anet_entities, temporal (grounding, NExT-GQA, timestamp parsing), dense_captioning (METEOR, SODA_c),
hierarchical (Video ReCap), pointing, tables (DuckDB), cli (`grove eval`). Pure functions over arrays,
tables and strings; never imports grove.model, dagster or mlflow.
"""
