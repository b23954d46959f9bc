"""`grove annotate`: run the three-stage annotator over a catalog; score it against ground truth.

    grove annotate --catalog CAT --out DIR [--stage1 simulated] [--stage2 consensus] [--stage3 lexical]
                   [--shard-size 1000] [--batch-size 32] [--stage1-option noise=high] [--stage2-option model=PATH] ...
    grove annotate quality --auto DIR --gt GT
    grove annotate ablation --catalog CAT --gt GT --out DIR [--noise low --noise moderate ...]

Re-running on the same --out resumes: finished shards are skipped, a shard that a killed run left
half done restarts at its first unfinished batch, and videos added to the catalog since the last run
go into new shards (finished shards are never touched; annotation/shards.py explains the plan).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import typer

from annotation.shards import DEFAULT_BATCH_SIZE  # light: the stage engines load only when a stage runs

app = typer.Typer(no_args_is_help=False, add_completion=False, invoke_without_command=True)
logger = logging.getLogger(__name__)


def parse_options(items: list[str], flag: str) -> dict[str, Any]:
    """`key=value` pairs; values are JSON where they parse (numbers, booleans, lists), else strings."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not key=value", param_hint=flag)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _progress_printer() -> Any:
    started: dict[str, float] = {}

    def report(what: str, done: int, total: int) -> None:
        if done == 0:
            started[what] = time.perf_counter()
            return
        start = started.get(what, time.perf_counter())
        elapsed = time.perf_counter() - start
        eta = elapsed / done * (total - done)
        typer.echo(f"{what}: shard {done}/{total} ({elapsed:.0f} s, ETA {eta:.0f} s)", err=True)

    return report


@app.callback()
def annotate(
    ctx: typer.Context,
    catalog: Optional[Path] = typer.Option(None, "--catalog", help="Catalog folder from `grove data ingest`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output dataset folder (resumable)."),
    stage1: str = typer.Option("simulated", help="simulated | glamm | florence2 | package.module:Class"),
    stage2: str = typer.Option("consensus", help="consensus | transformers | vllm"),
    stage3: str = typer.Option("lexical", help="lexical | embedding | transformers | vllm"),
    shard_size: int = typer.Option(1000, help="Clips per new shard (shards already planned keep theirs)."),
    batch_size: int = typer.Option(
        DEFAULT_BATCH_SIZE, help="Clips a stage runs between two resume points (a killed run loses at most one batch)."
    ),
    stage1_option: list[str] = typer.Option([], "--stage1-option", help="key=value for the stage-1 backend."),
    stage2_option: list[str] = typer.Option([], "--stage2-option", help="key=value for stage 2 (model=... for LLMs)."),
    stage3_option: list[str] = typer.Option([], "--stage3-option", help="key=value for stage 3."),
    frame_stride: int = typer.Option(1, help="Caption every N-th frame of the 5 fps grid."),
    fill_gaps: int = typer.Option(2, help="Stage 3: interpolate tubes over at most N missed frames (0: paper)."),
    smooth_radius: int = typer.Option(0, help="Stage 3: median-smooth tubes over N frames either side."),
    tracking: str = typer.Option("iou", help="Stage 3: label boxes by IoU-linked track (iou), or alone (none: paper)."),
    clip_seconds: Optional[float] = typer.Option(None, help="Split longer videos into clips; writes the caption hierarchy."),
    segment_clips: int = typer.Option(4, help="Long videos: clips per segment description."),
    video_backend: str = typer.Option("pyav", help="Video decoding backend for real stage-1 models."),
    dataset_name: str = typer.Option("auto", "--dataset-name", help="The `dataset` column of the annotated clips (what a model trained on them records)."),
    force: bool = typer.Option(False, help="Redo shards that are already done."),
) -> None:
    """Annotate a catalog: frame captions, video captions with tagged phrases, boxes per phrase."""
    if ctx.invoked_subcommand is not None:
        return
    if catalog is None or out is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)
    from annotation.shards import AnnotatorConfig, annotate as run_annotation

    config = AnnotatorConfig(
        stage1=stage1, stage2=stage2, stage3=stage3,
        stage1_options=parse_options(stage1_option, "--stage1-option"),
        stage2_options=parse_options(stage2_option, "--stage2-option"),
        stage3_options=parse_options(stage3_option, "--stage3-option"),
        frame_stride=frame_stride, fill_gaps=fill_gaps, smooth_radius=smooth_radius, tracking=tracking,
        video_backend=video_backend, clip_seconds=clip_seconds, segment_clips=segment_clips, dataset_name=dataset_name,
    )
    try:
        run = run_annotation(catalog, out, config, shard_size=shard_size, progress=_progress_printer(), force=force,
                             batch_size=batch_size)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    manifest = json.loads((out / "dataset.json").read_text())
    stats = manifest["stats"]
    typer.echo(f"annotated {stats['clips']} clips ({stats['rejects']} rejected) -> {out}")
    typer.echo(f"annotator version {run.version}; {run.shards} shards ({len(run.new_shards)} new)")
    for stage in (1, 2, 3):
        rate = run.clips_per_second(stage)
        ran = run.ran(stage)
        resumed = sum(r.resumed_batches for r in run.results if r.stage == stage)
        done = f"{len(ran)} shards run, {rate:.1f} clips/s" + (f", {resumed} batches resumed" if resumed else "")
        typer.echo(f"stage {stage}: {'all shards already done' if not ran else done}")
    for stage in ("stage2", "stage3"):
        if stats[stage].get("fallbacks"):
            typer.echo(f"{stage}: {stats[stage]['fallbacks']} LLM answers fell back ({stats[stage]['fallback_reasons']})")


@app.command("quality")
def quality(
    auto: Path = typer.Option(..., "--auto", help="Automatically annotated dataset folder."),
    gt: Path = typer.Option(..., "--gt", help="Ground-truth dataset folder (e.g. `grove data synth`)."),
    split: Optional[str] = typer.Option(None, help="Score only this split of the ground truth."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
) -> None:
    """Score an automatic annotation against ground truth with the iGround metrics."""
    from annotation.quality import format_table, score_annotation

    row = score_annotation(auto, gt, split=split)
    typer.echo(json.dumps(row, indent=2, sort_keys=True) if as_json else format_table([row]))


@app.command("ablation")
def ablation(
    catalog: Path = typer.Option(..., "--catalog", help="Catalog of the synthetic dataset."),
    gt: Path = typer.Option(..., "--gt", help="The synthetic dataset folder (ground truth)."),
    out: Path = typer.Option(..., "--out", help="Work folder: one annotation per variant, and ablation.json."),
    noise: list[str] = typer.Option(["low", "moderate", "high"], help="Stage-1 noise levels."),
    stage2: list[str] = typer.Option(["consensus"], help="Stage-2 engines."),
    stage3: list[str] = typer.Option(["lexical", "embedding"], help="Stage-3 engines."),
    fill_gaps: list[int] = typer.Option([0, 2], help="Stage-3 tube completion settings (0: as the paper)."),
    tracking: list[str] = typer.Option(["none", "iou"], help="Stage-3 box linking: none (as the paper) | iou."),
    smooth_radius: list[int] = typer.Option([0], help="Stage-3 tube smoothing radii (0: as the paper)."),
    stage2_option: list[str] = typer.Option([], "--stage2-option", help="key=value for LLM stage-2 engines."),
    stage3_option: list[str] = typer.Option([], "--stage3-option", help="key=value for LLM stage-3 engines."),
    split: Optional[str] = typer.Option(None, help="Score only this split."),
    shard_size: int = typer.Option(1000, help="Clips per shard."),
) -> None:
    """The ablation table: naive stage-1 labels and each engine pair, per stage-1 noise level."""
    from annotation.quality import format_table, run_ablation

    rows = run_ablation(
        catalog, gt, out, noise_levels=noise, stage2_engines=stage2, stage3_engines=stage3, fill_gaps=fill_gaps,
        tracking=tracking, smooth_radius=smooth_radius,
        stage2_options=parse_options(stage2_option, "--stage2-option"),
        stage3_options=parse_options(stage3_option, "--stage3-option"), split=split, shard_size=shard_size,
    )
    typer.echo(format_table(rows))
    typer.echo(f"rows written to {out / 'ablation.json'}")
