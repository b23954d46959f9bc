"""Dagster orchestration of the GROVE lineage, and the `grove` command line."""
