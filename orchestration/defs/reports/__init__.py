"""Dagster definitions of one domain of the lineage."""
