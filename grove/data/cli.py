"""`grove data ...`: synthetic data, conversion of official formats, video catalogs."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)
