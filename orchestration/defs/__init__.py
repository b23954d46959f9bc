"""Dagster definitions, one folder per domain of the lineage (ARCHITECTURE.md, asset groups)."""
