"""`grove data ...`: synthetic data, conversion of official formats, video catalogs."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator, Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("convert")
def convert(
    fmt: str = typer.Option(..., "--format", help="Input format: howtoground (HowToGround1M/iGround pickle or per-clip dir), vidstg, anet."),
    source: Path = typer.Option(..., "--input", help="Annotation file (or, for howtoground, a one-pickle-per-clip directory)."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to write; other splits already there are kept."),
    split: Optional[str] = typer.Option(None, "--split", help="Split name (default: train/val/test from the file name, else 'all')."),
    split_ids: Optional[Path] = typer.Option(None, "--split-ids", help="anet: split_ids_anet_entities.json."),
    processed: bool = typer.Option(False, "--processed", help="howtoground: the pickle holds processed (union) boxes."),
    keys: Optional[Path] = typer.Option(None, "--keys", help="howtoground: key list (pickled list or text, one per line) to read."),
    fps: Optional[float] = typer.Option(None, "--fps", help="anet: frame rate for videos whose entry has none."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Value of the clip table's dataset column (default: the folder name)."),
) -> None:
    """Convert one split of an official annotation file into canonical tables in a dataset folder."""
    from tqdm import tqdm

    from grove.data.convert import convert_to_dataset

    interval = 0.5 if sys.stderr.isatty() else 10.0  # only pickles are slow enough to need a bar
    with _clear_errors(), tqdm(unit="clip", desc="convert", mininterval=interval, disable=fmt != "howtoground") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        summary = convert_to_dataset(fmt, source, out, split=split, split_ids=split_ids, processed_input=processed,
                                     keys=keys, fps=fps, dataset=dataset, on_progress=progress)
    raw = "no raw" if summary.raw_boxes is None else f"{summary.raw_boxes} raw"
    typer.echo(f"converted {source} -> {summary.root} (split {summary.split}: {summary.clips} clips, "
               f"{raw} / {summary.processed_boxes} processed boxes)")


@app.command("export")
def export(
    dataset_dir: Path = typer.Option(..., "--dataset", help="Dataset folder."),
    split: str = typer.Option(..., "--split", help="Split to export."),
    out: Path = typer.Option(..., "--out", help="Official pickle to write (a directory with --per-clip)."),
    processed: bool = typer.Option(False, "--processed", help="Export the processed (union-merged) boxes instead of the raw ones."),
    per_clip: bool = typer.Option(False, "--per-clip", help="One pickle per clip, <out>/<key>.pkl, as the official preprocessing makes."),
) -> None:
    """Write a split of a dataset folder in the official HowToGround1M/iGround pickle layout."""
    from grove.data.convert import export_official

    with _clear_errors():
        path = export_official(dataset_dir, split, out, processed=processed, per_clip=per_clip)
    typer.echo(f"exported {dataset_dir} split {split} ({'processed' if processed else 'raw'}) -> {path}")


@contextlib.contextmanager
def _clear_errors() -> Iterator[None]:
    """Bad input ends the command with its message (which names the file and clip), not a traceback."""
    from grove.data.safe_pickle import PickleReadError, UnsafePickleError
    from grove.data.schema import SchemaError

    try:
        yield
    except (SchemaError, UnsafePickleError, PickleReadError, FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
