"""`grove weights import`: official GROVE / GLaMM checkpoints into this project's format."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Import official GROVE / GLaMM checkpoints.")
logger = logging.getLogger(__name__)


@app.command("import")
def import_command(
    src: Path = typer.Argument(..., help="The checkpoint: a folder (save_pretrained layout) or one state-dict file."),
    kind: str = typer.Option(..., "--from", help="grove (released GROVE, grove_transformers layout) | grove-train (model/GROVE.py zero_to_fp32 .bin) | glamm (GLaMM-GranD-Pretrained / FullScope)."),
    out: Path = typer.Option(..., "--out", help="New folder for the imported checkpoint (never overwritten)."),
    clip: Optional[Path] = typer.Option(None, "--clip", help="A CLIP folder (transformers layout, e.g. openai/clip-vit-large-patch14-336) to take the vision tower from, as the official code reloads --vision_tower."),
    like: Optional[Path] = typer.Option(None, "--like", help="For a bare state-dict file: the folder of the model it came from (its config.json and tokenizer)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Tokenizer folder (default: beside the checkpoint, or --like)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default: the checkpoint's own)."),
    decoder_heads: int = typer.Option(8, "--decoder-heads", help="Attention heads of SAM's two-way transformer (8 in SAM and GROVE; not in the weights)."),
    grounding_size: Optional[int] = typer.Option(None, "--grounding-size", help="SAM input size (px) of the imported model; its position embeddings are resized to it (default: GROVE's 512 for --from glamm, the checkpoint's own otherwise). 1024 keeps GLaMM's own, as GLaMM's grounded conversation generation (stage-1 annotation) needs."),
    shard_gb: float = typer.Option(2.0, "--shard-gb", help="Largest output shard, GB (memory use follows it)."),
    no_hash: bool = typer.Option(False, "--no-hash", help="Do not record the SHA-256 of the source files."),
) -> None:
    """Convert an official checkpoint; prints what was mapped, dropped (and why) and started fresh."""
    from grove.weights.importer import SOURCE_KINDS, WeightsImportError, import_checkpoint
    from grove.weights.sources import CheckpointReadError

    if kind not in SOURCE_KINDS:
        raise typer.BadParameter(f"{kind!r}: choose one of {', '.join(SOURCE_KINDS)}", param_hint="--from")
    try:
        report = import_checkpoint(
            kind, src, out, clip=str(clip) if clip else None, like=str(like) if like else None,
            tokenizer=str(tokenizer) if tokenizer else None, dtype=dtype, decoder_heads=decoder_heads, grounding_size=grounding_size,
            max_shard_bytes=int(shard_gb * 1024**3),
            hash_sources=not no_hash,
        )
    except (WeightsImportError, CheckpointReadError, FileNotFoundError, FileExistsError, KeyError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    summary = report.summary()
    typer.echo(f"imported {src} ({kind}) -> {out} in {report.seconds:.1f}s, dtype {report.dtype}")
    typer.echo(f"  mapped {summary['mapped']} tensors: {json.dumps(summary['by_transform'])}")
    typer.echo(f"  dropped {summary['dropped']}:")
    for reason, count in sorted(summary["drop_reasons"].items()):
        typer.echo(f"    {count:5d}  {reason}")
    typer.echo(f"  fresh {summary['fresh']}: " + ", ".join(sorted({f['module'] for f in report.fresh})))
    if report.adapter_gates:
        gates = ", ".join(f"{k.split('.adapters.')[0]}.{k.split('.')[-2]}={v:+.3f}" for k, v in sorted(report.adapter_gates.items()))
        typer.echo(f"  adapter gates alpha (each adapter adds tanh(alpha) x its branch; 0 = identity): {gates}")
    typer.echo(f"  tokens: {json.dumps(report.tokens)}")
    typer.echo(f"  report: {Path(out) / 'import_report.json'}")
