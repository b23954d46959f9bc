"""`grove data ...`: synthetic data, conversion of official formats, video catalogs."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Iterator, Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Dataset folder to write (created; a re-run skips finished work)."),
    clips: Optional[int] = typer.Option(None, "--clips", help="Total clips, split 70/15/5/10 % into pool/train/val/test."),
    pool: Optional[int] = typer.Option(None, "--pool", help="Clips in the pre-training pool (overrides --clips' share)."),
    train: Optional[int] = typer.Option(None, "--train", help="Clips in the iGround-like train split."),
    val: Optional[int] = typer.Option(None, "--val", help="Clips in the val split."),
    test: Optional[int] = typer.Option(None, "--test", help="Clips in the test split."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Dataset seed (default: the profile's)."),
    width: Optional[int] = typer.Option(None, "--width", help="Frame width in pixels (even)."),
    height: Optional[int] = typer.Option(None, "--height", help="Frame height in pixels (even)."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Native frame rate (annotations are on its 5 fps grid)."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Clip length in seconds."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Render processes (default: one per CPU)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="params.yaml profile for the defaults (default: $GROVE_PROFILE or the file's)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params.yaml to read the profile from; without it, built-in defaults."),
    name: str = typer.Option("synthetic", "--name", help="Dataset name in the manifest."),
    vidstg: Optional[int] = typer.Option(None, "--vidstg", help="Clips of the VidSTG-like stand-in (default: the profile's benchmarks.vidstg.clips when its source is synthetic, else 0)."),
    anet: Optional[int] = typer.Option(None, "--anet", help="Clips of the ActivityNet-Entities-like stand-in (default: the profile's benchmarks.anet_entities.clips when its source is synthetic, else 0)."),
    benchmarks_out: Optional[Path] = typer.Option(None, "--benchmarks-out", help="Folder of the stand-ins (default: OUT's sibling OUT_benchmarks; never inside OUT, whose videos the pool catalog scans)."),
) -> None:
    """Render the synthetic grounded-video dataset: MP4 clips, canonical tables, official pickles, frame objects;
    and the VidSTG- and ActivityNet-Entities-like stand-ins in their official layouts."""
    from tqdm import tqdm

    from grove.data import synthetic, synthetic_benchmarks

    with _clear_errors():
        if params.exists():
            config = synthetic.config_from_params(params, profile)
            standins = synthetic_benchmarks.standin_config_from_params(params, profile)
        elif profile is not None:
            raise FileNotFoundError(f"{params}: no such params file (needed for --profile {profile})")
        else:
            config = synthetic.SynthConfig()
            standins = synthetic_benchmarks.StandinConfig(config, vidstg_clips=0, anet_entities_clips=0)
        if clips is not None:
            config = synthetic.with_split_counts(config, synthetic.split_counts_for_total(clips))
        counts = {"pool": pool, "train": train, "val": val, "test": test}
        config = synthetic.with_split_counts(config, {k: v for k, v in counts.items() if v is not None})
        overrides = {"seed": seed, "width": width, "height": height, "fps": fps, "seconds": seconds}
        config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
        # a bar on a terminal; in logs (CI, Dagster) a line every 10 s
        interval = 0.5 if sys.stderr.isatty() else 10.0
        with tqdm(total=sum(config.split_counts.values()), unit="clip", desc="synth", mininterval=interval) as bar:
            summary = synthetic.generate_dataset(out, config, workers=workers, name=name,
                                                 progress=lambda done, _: bar.update(done - bar.n))
        standins = synthetic_benchmarks.with_clips(dataclasses.replace(standins, render=config),
                                                   {"vidstg": vidstg, "anet_entities": anet})
        folder = benchmarks_out or synthetic_benchmarks.standins_folder(out)
        made = synthetic_benchmarks.generate_standins(folder, standins, workers=workers)
    state = "already up to date" if summary.up_to_date else f"{summary.encoded} videos encoded, {summary.seconds:.1f} s"
    splits = ", ".join(f"{split} {n}" for split, n in config.split_counts.items())
    typer.echo(f"synthetic dataset: {summary.root} ({splits}; {state})")
    for standin in made:
        state = "already up to date" if standin.up_to_date else f"{standin.encoded} videos encoded, {standin.seconds:.1f} s"
        typer.echo(f"{standin.benchmark} stand-in: {standin.root} ({standin.clips} clips; {state})")


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


@app.command("ingest")
def ingest(
    videos: Path = typer.Option(..., "--videos", help="Folder of videos (searched recursively), or a synthetic dataset folder."),
    out: Path = typer.Option(..., "--out", help="Catalog folder: catalog.parquet, rejects.parquet, clips.parquet, catalog.json."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", help="Annotation file whose clips name videos under --videos."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Format of --annotations: howtoground, vidstg or anet."),
    split: Optional[str] = typer.Option(None, "--split", help="Split of --annotations (default: from its file name, else 'all')."),
    split_ids: Optional[Path] = typer.Option(None, "--split-ids", help="anet: split_ids_anet_entities.json."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Probe processes (default: one per CPU)."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds one file may take to probe before it is rejected."),
    full_decode: bool = typer.Option(False, "--full-decode", help="Decode every frame (default: first and last)."),
) -> None:
    """Probe, hash and vet every video; bad files go to rejects.parquet with their reason."""
    from tqdm import tqdm

    from grove.data.catalog import build_catalog

    with _clear_errors(), tqdm(unit="file", desc="ingest", mininterval=0.5 if sys.stderr.isatty() else 10.0) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        summary = build_catalog(videos, out, annotations=annotations, fmt=fmt, split=split, split_ids=split_ids,
                                workers=workers, timeout_s=timeout, full_decode=full_decode, progress=progress)
    rejects = ", ".join(f"{reason} {n}" for reason, n in summary.rejects.items()) or "none"
    typer.echo(f"catalog: {summary.out} ({summary.videos} videos, {summary.clips} clips; rejects: {rejects}; "
               f"{summary.reused} reused, {summary.seconds:.1f} s)")


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
