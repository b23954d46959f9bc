"""Weights from outside: official GROVE and GLaMM checkpoints imported into this project's format.

`official.py` is the only place that knows the official state-dict names; `sources.py` reads their
files shard by shard; `importer.py` converts (`grove weights import`, cli.py).
"""
