"""`grove train`, `grove infer` and `grove convert-checkpoint`: thin commands over grove.train and grove.infer.

Runnable on its own too (`python -m grove.cli train ...`), which is what `torchrun` launches for a
distributed run; `grove train --nproc N` does that launch itself (with `--multinode`, as this node
of a Slurm / Kubernetes / GROVE_* multi-node job: grove.distributed).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="GROVE training and inference.")
logger = logging.getLogger(__name__)


def _echo_metrics(step: int, metrics: dict[str, float]) -> None:
    """Validation results on stdout (training lines go through logging, with rate and ETA)."""
    if any(name.startswith("val/") for name in metrics):
        typer.echo(f"step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))


def _relaunch_with_torchrun(nproc: int, multinode: bool) -> int:
    """Run this same `train` command as `nproc` torchrun ranks (without --nproc / --multinode)."""
    from grove.distributed import RendezvousError, rendezvous_from_env, torchrun_command

    args = sys.argv[sys.argv.index("train") :]
    cleaned = [a for i, a in enumerate(args)
               if a not in ("--nproc", "--multinode") and not a.startswith("--nproc=") and args[i - 1] != "--nproc"]
    try:
        rendezvous = rendezvous_from_env() if multinode else None
    except RendezvousError as exc:
        raise typer.BadParameter(str(exc), param_hint="--multinode") from exc
    if multinode and rendezvous is None:
        raise typer.BadParameter("no multi-node job in the environment (Slurm, Kubernetes indexed Job or GROVE_NNODES/GROVE_NODE_RANK)",
                                 param_hint="--multinode")
    command = torchrun_command(sys.executable, "grove.cli", cleaned, nproc, rendezvous)
    logger.info("launching %s", " ".join(command))
    return subprocess.call(command)


def _overrides(items: list[str]) -> dict[str, object]:
    """`--override KEY=VALUE` items as TrainConfig.model_overrides (VALUE parsed as JSON when it is JSON)."""
    values: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: not KEY=VALUE", param_hint="--override")
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = text
    return values


@app.command("train")
def train_command(
    train: str = typer.Option(..., "--train", help="Training data: a dataset folder, or a clip table (clips.parquet)."),
    out: Path = typer.Option(..., "--out", help="Output folder: checkpoints, best model, metrics. An existing run there resumes."),
    config: str = typer.Option("tiny", "--config", help="Model profile: tiny | paper."),
    overrides: list[str] = typer.Option([], "--override", help="A model config field of the profile, KEY=VALUE (VALUE read as JSON, else text); repeatable, e.g. --override freezing=paper."),
    val: Optional[str] = typer.Option(None, "--val", help="Validation data (default: the --val-split of --train, when it has one)."),
    train_split: str = typer.Option("train", "--train-split", help="Split of --train to train on ('all' for every split; 'pool' for the pre-training pool)."),
    val_split: str = typer.Option("val", "--val-split", help="Split used for validation."),
    init: Optional[str] = typer.Option(None, "--init", help="Start from this checkpoint's weights (fine-tuning a pre-trained model)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimiser steps (overrides --epochs)."),
    epochs: float = typer.Option(20.0, "--epochs", help="Passes over the training clips."),
    batch_size: int = typer.Option(8, "--batch-size", help="Global batch: ranks x accumulation x micro batch."),
    micro_batch_size: int = typer.Option(1, "--micro-batch-size", help="Clips per forward pass (the paper: 1)."),
    lr: float = typer.Option(5e-5, "--lr", help="Peak learning rate."),
    warmup_steps: int = typer.Option(100, "--warmup-steps", help="Linear warm-up steps, then linear decay to 0."),
    seed: int = typer.Option(42, "--seed"),
    workers: int = typer.Option(2, "--workers", help="DataLoader worker processes."),
    log_every: int = typer.Option(10, "--log-every"),
    eval_every: int = typer.Option(0, "--eval-every", help="Steps between validations (0: each epoch)."),
    save_every: int = typer.Option(0, "--save-every", help="Steps between checkpoints (0: at each validation)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    boxes: Optional[str] = typer.Option(None, "--boxes", help="Box table for a --train clip table (default: next to it)."),
    videos: Optional[str] = typer.Option(None, "--videos", help="Folder that relative video paths resolve against."),
    skip_bad_clips: bool = typer.Option(False, "--skip-bad-clips", help="Drop clips whose caption and phrases do not fit."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if --out holds a checkpoint."),
    nproc: int = typer.Option(1, "--nproc", help="Processes on this machine (DDP through torchrun)."),
    multinode: bool = typer.Option(False, "--multinode", help="This is one node of a multi-node job: rendezvous with the others (grove.distributed)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads per process (default 1; see grove.train.cpu_threads)."),
    strategy: str = typer.Option("ddp", "--strategy", help="ddp (replicas) | fsdp (sharded weights, optimiser state and checkpoints)."),
    save_minutes: float = typer.Option(30.0, "--save-minutes", help="Also checkpoint when this many minutes passed since the last one (0: off)."),
    keep_last: int = typer.Option(2, "--keep-last", help="Step checkpoints kept."),
    bf16: Optional[bool] = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast (default: on a GPU only)."),
    gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing",
                                                          help="Recompute layer activations in backward (default: on a GPU only)."),
) -> None:
    """Pre-train or fine-tune GROVE; prints where the best and last checkpoints are."""
    if strategy not in ("ddp", "fsdp"):
        raise typer.BadParameter(f"{strategy!r}: not ddp or fsdp", param_hint="--strategy")
    if (nproc > 1 or multinode) and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_relaunch_with_torchrun(nproc, multinode))
    from grove.train import TrainConfig, train as run_training

    result = run_training(
        TrainConfig(
            train_data=train, out_dir=str(out), model=config, model_overrides=_overrides(overrides), val_data=val, train_split=train_split,
            val_split=val_split, init=init, max_steps=max_steps, epochs=epochs, batch_size=batch_size,
            micro_batch_size=micro_batch_size, lr=lr, warmup_steps=warmup_steps, seed=seed, num_workers=workers,
            log_every=log_every, eval_every=eval_every, save_every=save_every, device=device, train_boxes=boxes,
            video_root=videos, skip_bad_clips=skip_bad_clips, resume=not no_resume, cpu_threads=threads,
            strategy=strategy, save_minutes=save_minutes, keep_last=keep_last, bf16=bf16, gradient_checkpointing=gradient_checkpointing,
        ),
        callback=_echo_metrics,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(json.dumps(result.to_dict(), indent=2))


@app.command("convert-checkpoint")
def convert_checkpoint_command(
    checkpoint: Path = typer.Argument(..., help="A sharded step checkpoint (an fsdp run's checkpoints/step_N), or a training folder (its last)."),
    out: Path = typer.Option(..., "--out", help="Folder of the single-file checkpoint (model.safetensors, config.json, state.json, provenance.json)."),
) -> None:
    """A sharded (torch distributed) training checkpoint as the project's single-file format; no GPU or process group needed."""
    from grove.checkpoint import is_sharded
    from grove.train import convert_sharded_checkpoint, latest_checkpoint

    folder = checkpoint
    if not is_sharded(folder):
        folder = latest_checkpoint(checkpoint) or checkpoint
    if not is_sharded(folder):
        raise typer.BadParameter(f"{checkpoint}: not a sharded checkpoint nor a training folder whose last checkpoint is one",
                                 param_hint="CHECKPOINT")
    typer.echo(f"{folder} -> {convert_sharded_checkpoint(folder, out)}")


@app.command("infer")
def infer_command(
    checkpoint: str = typer.Option(..., "--checkpoint", help="A checkpoint folder, or a training --out folder (its best model)."),
    video: Optional[Path] = typer.Option(None, "--video", help="A video file to caption and ground (no annotation needed)."),
    data: Optional[Path] = typer.Option(None, "--data", help="A dataset folder: predict every clip of --split (official layout)."),
    split: str = typer.Option("test", "--split", help="Split of --data."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write predictions (.json; .pkl for the official pickle with --data)."),
    visualize: Optional[Path] = typer.Option(None, "--visualize", help="With --video: render boxes and phrases to an .mp4 or a .png frame grid."),
    query: Optional[str] = typer.Option(None, "--query", help="With --video: also find when this sentence is visible (objectness curve)."),
    threshold: float = typer.Option(0.5, "--threshold", help="Temporal objectness threshold (0 keeps every box)."),
    mode: str = typer.Option("caption", "--mode", help="With --data: caption (iGround) | reference (the reference caption teacher-forced: grounding alone) | phrase (VidSTG: the caption as one phrase)."),
    start: Optional[float] = typer.Option(None, "--start", help="With --video: first second to use."),
    end: Optional[float] = typer.Option(None, "--end", help="With --video: last second to use."),
    max_clips: Optional[int] = typer.Option(None, "--max-clips", help="With --data: only the first N clips."),
    device: str = typer.Option("cpu", "--device"),
    threads: int = typer.Option(1, "--threads", help="CPU threads (small ops: 1 is fastest on a busy machine)."),
) -> None:
    """Grounded captions: for one video file (--video) or for a dataset split (--data)."""
    if (video is None) == (data is None):
        raise typer.BadParameter("give exactly one of --video FILE or --data DIR")
    import torch

    from grove.infer import infer_video, predict_dataset, temporal_grounding
    from grove.train import load_model, provenance_note

    if device == "cpu":
        torch.set_num_threads(max(1, threads))

    note = provenance_note(checkpoint)
    if note is not None:
        typer.echo(f"note: {note}", err=True)
    model = load_model(checkpoint, device)
    if data is not None:
        from grove.data.predictions import write_predictions

        predictions = predict_dataset(checkpoint, data, split, threshold, mode, device, max_clips, model=model)
        target = out or Path(f"predictions_{split}.json")
        write_predictions(target, predictions)
        typer.echo(f"{len(predictions)} clips predicted -> {target}")
        return
    if not video.exists():
        raise typer.BadParameter(f"{video}: no such file", param_hint="--video")
    result = infer_video(model, video, threshold, start, end)
    payload = result.to_json()
    if note is not None:
        payload["note"] = note
    if query is not None:
        grounding = temporal_grounding(model, result.frames, result.times_s, query, threshold, (result.frames.shape[2], result.frames.shape[1]))
        payload["query"] = {"text": query, "start_s": grounding.start_s, "end_s": grounding.end_s,
                            "probs": [round(p, 4) for p in grounding.probs]}
    if out is not None:
        from grove.io import atomic_write_json

        atomic_write_json(out, payload)
    typer.echo(f"caption: {result.result.caption}")
    typer.echo(f"phrases: {', '.join(result.result.phrases) or '(none)'}")
    if query is not None:
        typer.echo(f"query visible: {payload['query']['start_s']:.2f}s - {payload['query']['end_s']:.2f}s")
    if visualize is not None:
        from grove.visualize import render_grid, render_video

        boxes, labels = result.result.kept(threshold)
        render = render_grid if visualize.suffix.lower() == ".png" else render_video
        kwargs = {} if render is render_grid else {"fps": 5.0}
        render(result.frames, boxes, labels, result.result.phrases, visualize, caption=result.result.caption, **kwargs)
        typer.echo(f"rendered -> {visualize}")
    if out is not None:
        typer.echo(f"predictions -> {out}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    app()
