"""How good is the automatic annotation? Scores against ground truth with evaluation/'s iGround metrics.

Like the paper's "automatic annotation" row, an annotated dataset is read as a GROVE prediction
(caption, tagged phrases, boxes per frame with their phrase) and scored against the truth's raw boxes
and captions: METEOR, CIDEr, AP50, Recall (evaluation.iground; this module computes no metric itself).
The baseline "stage-1 naive" labels every stage-1 box with its own frame-level phrase and takes the
middle frame's caption (what a per-frame captioner gives without stages 2 and 3). `run_ablation`
annotates the catalog once per stage-1 noise level, stage-2/stage-3 engine, stage-3 tracking
("none" with fill_gaps 0 is the paper's stage 3) and tube completion, and scores every variant.
Every box scores 1.0 here, as in the official protocol, so AP50 ranks boxes by frame order: a stage-3
confidence cannot raise it; only dropping wrong boxes and keeping (or completing) right ones can.

Protocol: the official one with two corrections, recorded in every row's report: a clip the annotator
rejected counts as an empty prediction (`missing_predictions="zero"`), so rejecting hard clips cannot
raise the scores; and Recall's IoU is computed on xyxy boxes (`recall_boxes="xyxy"`): the official
evaluator reads xywh boxes as corners, which on small frames leaves almost no pair above IoU 0.5.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from annotation.records import clip_frames_from_table
from annotation.shards import AnnotatorConfig, annotate, load_catalog
from grove.data.boxes import boxes_by_key
from grove.data.dataset import load_dataset
from grove.data.predictions import ClipPrediction
from grove.io import atomic_write_json

logger = logging.getLogger(__name__)

METRICS = ("METEOR", "CIDEr", "AP50", "Recall")


def quality_protocol() -> Any:
    from evaluation.iground import OFFICIAL

    return dataclasses.replace(OFFICIAL, missing_predictions="zero", recall_boxes="xyxy")


def predictions_from_tables(clips: pa.Table, boxes: pa.Table) -> dict[str, ClipPrediction]:
    """An annotated dataset's clips and raw boxes as GROVE predictions (boxes zipped with their phrase)."""
    by_key = boxes_by_key(boxes)
    predictions = {}
    for row in clips.to_pylist():
        frames_boxes: list[list[list[float]]] = [[] for _ in range(row["num_frames"])]
        frames_labels: list[list[str]] = [[] for _ in range(row["num_frames"])]
        table = by_key.get(row["key"])
        if table is not None:
            for box in table.to_pylist():
                frames_boxes[box["frame_index"]].append([box["x1"], box["y1"], box["x2"], box["y2"]])
                frames_labels[box["frame_index"]].append(box["phrase"])
        predictions[row["key"]] = ClipPrediction(
            pred_bboxes=[np.asarray(b, np.float64).reshape(-1, 4) for b in frames_boxes],
            pred_labels=frames_labels,
            pred_text=row["caption"],
            pred_phrases=list(row["phrases"]),
            pred_text_tagged=row["tagged_caption"],
        )
    return predictions


def naive_predictions(auto_dir: str | Path, gt_clips: pa.Table) -> dict[str, ClipPrediction]:
    """Stage-1 output as it comes: every box under its own frame phrase, the middle frame's caption."""
    num_frames = dict(zip(gt_clips["key"].to_pylist(), gt_clips["num_frames"].to_pylist()))
    predictions = {}
    for path in sorted((Path(auto_dir) / "shards" / "stage1").glob("*/frames.parquet")):
        for clip in clip_frames_from_table(pq.read_table(path)):
            if clip.key not in num_frames:
                continue
            frames_boxes: list[list[Any]] = [[] for _ in range(num_frames[clip.key])]
            frames_labels: list[list[str]] = [[] for _ in range(num_frames[clip.key])]
            for frame in clip.frames:
                frames_boxes[frame.frame_index] = [list(b) for b in frame.boxes]
                frames_labels[frame.frame_index] = list(frame.phrases)
            middle = clip.frames[len(clip.frames) // 2].caption if clip.frames else ""
            predictions[clip.key] = ClipPrediction(
                [np.asarray(b, np.float64).reshape(-1, 4) for b in frames_boxes], frames_labels, middle, []
            )
    if not predictions:
        raise FileNotFoundError(f"{auto_dir}: no stage-1 shard outputs (shards/stage1/*/frames.parquet)")
    return predictions


class Scorer:
    """Ground truth, the phrase embedder and METEOR's JVM, loaded once for many scorings."""

    def __init__(self, gt_dir: str | Path, split: str | None = None, embedding_model: str = "auto",
                 captions: bool = True) -> None:
        from evaluation.embeddings import load_phrase_embedder
        from evaluation.iground import gt_from_tables

        dataset = load_dataset(gt_dir, processed=False)
        if split is not None:
            dataset = dataset.split(split)
        self.gt_clips = dataset.clips
        self.gt = gt_from_tables(dataset.clips, dataset.boxes, str(gt_dir))
        self.embedder = load_phrase_embedder(embedding_model)
        self.captions = captions
        self.split = split or "all"
        self._meteor: Any = None  # one METEOR JVM for every scoring

    def close(self) -> None:
        if self._meteor is not None:
            self._meteor.close()
            self._meteor = None

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def score(self, predictions: dict[str, ClipPrediction], variant: dict[str, Any]) -> dict[str, Any]:
        from evaluation.captions import MeteorScorer
        from evaluation.iground import evaluate_iground

        predictions = {k: v for k, v in predictions.items() if k in self.gt}
        if self.captions and self._meteor is None:
            self._meteor = MeteorScorer()
        report = evaluate_iground(self.gt, predictions, self.embedder, quality_protocol(), self.embedder.name,
                                  captions=self.captions, meteor=self._meteor, split=self.split)
        row = dict(variant)
        for name in METRICS:
            value = report.metrics.get(name)
            row[name] = round(100.0 * value, 2) if value is not None and value == value else None
        row["clips"] = len(self.gt)
        row["annotated"] = len(predictions)
        row["embedding_model"] = self.embedder.name
        return row


def score_annotation(auto_dir: str | Path, gt_dir: str | Path, split: str | None = None,
                     scorer: Scorer | None = None, naive: bool = True) -> dict[str, Any]:
    """METEOR, CIDEr, AP50, Recall (x100) of an annotated dataset folder; with `naive`, the baseline too."""
    owned = scorer is None
    scorer = scorer or Scorer(gt_dir, split)
    try:
        auto = load_dataset(auto_dir, processed=False)
        row = scorer.score(predictions_from_tables(auto.clips, auto.boxes), {"variant": "stage 3 output"})
        if naive and (Path(auto_dir) / "shards" / "stage1").exists():
            row["naive"] = scorer.score(naive_predictions(auto_dir, scorer.gt_clips), {"variant": "stage-1 naive"})
    finally:
        if owned:
            scorer.close()
    return row


def _seed_from(previous: Path | None, target: Path, stages: Sequence[int]) -> None:
    """Copy finished shards of earlier variants; the runner re-checks their versions before trusting them."""
    if previous is None:
        return
    for stage in stages:
        source = previous / "shards" / f"stage{stage}"
        if source.exists():
            shutil.copytree(source, target / "shards" / f"stage{stage}", dirs_exist_ok=True)


def run_ablation(
    catalog_dir: str | Path,
    gt_dir: str | Path,
    out_dir: str | Path,
    noise_levels: Sequence[str] = ("low", "moderate", "high"),
    stage2_engines: Sequence[str] = ("consensus",),
    stage3_engines: Sequence[str] = ("lexical", "embedding"),
    fill_gaps: Sequence[int] = (0, 2),
    stage2_options: dict[str, Any] | None = None,
    stage3_options: dict[str, Any] | None = None,
    split: str | None = None,
    shard_size: int = 1000,
    captions: bool = True,
    tracking: Sequence[str] = ("none", "iou"),
    smooth_radius: Sequence[int] = (0,),
) -> list[dict[str, Any]]:
    """One row per (noise, stage-2 engine, stage-3 engine, tracking, fill_gaps, smooth_radius), plus a
    stage-1 naive row per noise. Tracking "none" with fill_gaps 0 and smooth_radius 0 is the paper's stage 3.
    """
    out = Path(out_dir)
    load_catalog(catalog_dir)  # a bad catalog fails here, before any work
    variants = [(stage3, track, gaps, smooth) for stage3 in stage3_engines for track in tracking
                for gaps in fill_gaps for smooth in smooth_radius]
    with Scorer(gt_dir, split, captions=captions) as scorer:
        rows = _ablation_rows(catalog_dir, scorer, out, noise_levels, stage2_engines, variants,
                              stage2_options, stage3_options, shard_size)
    atomic_write_json(out / "ablation.json", rows)
    return rows


def _ablation_rows(catalog_dir: str | Path, scorer: Scorer, out: Path, noise_levels: Sequence[str],
                   stage2_engines: Sequence[str], variants: Sequence[tuple[str, str, int, int]],
                   stage2_options: dict[str, Any] | None, stage3_options: dict[str, Any] | None,
                   shard_size: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for noise in noise_levels:
        previous: Path | None = None
        for stage2 in stage2_engines:
            for stage3, tracking, gaps, smooth in variants:
                config = AnnotatorConfig(
                    stage1_options={"noise": noise}, stage2=stage2, stage3=stage3, fill_gaps=gaps, tracking=tracking,
                    smooth_radius=smooth,
                    stage2_options=dict(stage2_options or {}) if stage2 != "consensus" else {},
                    stage3_options=dict(stage3_options or {}) if stage3 in ("vllm", "transformers") else {},
                )
                name = f"{stage2}-{stage3}-track{tracking}-fill{gaps}" + (f"-smooth{smooth}" if smooth else "")
                target = out / f"noise-{noise}" / name
                _seed_from(previous, target, (1, 2))
                run = annotate(catalog_dir, target, config, shard_size=shard_size)
                variant = {"noise": noise, "stage2": stage2, "stage3": stage3, "tracking": tracking,
                           "fill_gaps": gaps, "smooth": smooth, "annotator_version": run.version}
                if previous is None:
                    naive = scorer.score(naive_predictions(target, scorer.gt_clips),
                                         {"noise": noise, "stage2": "-", "stage3": "stage-1 naive", "tracking": "-",
                                          "fill_gaps": "-", "smooth": "-"})
                    rows.append(naive)
                rows.append(scorer.score(predictions_from_tables(*_tables(target)), variant))
                logger.info("ablation %s", rows[-1])
                previous = target
    return rows


def _tables(folder: Path) -> tuple[pa.Table, pa.Table]:
    dataset = load_dataset(folder, processed=False)
    return dataset.clips, dataset.boxes


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of score rows (a row's `naive` baseline, if any, printed under it)."""
    flat: list[dict[str, Any]] = []
    for row in rows:
        flat.append({k: v for k, v in row.items() if k != "naive"})
        if "naive" in row:
            flat.append(row["naive"])
    keys = ("noise", "stage2", "stage3", "tracking", "fill_gaps", "smooth", "variant")
    columns = [c for c in keys if any(c in r for r in flat)]
    columns += [*METRICS, "annotated", "clips"]
    cells = [[("" if r.get(c) is None else f"{r[c]:.1f}" if isinstance(r.get(c), float) else str(r[c]))
              if c in r else "" for c in columns] for r in flat]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    model = next((r.get("embedding_model") for r in flat if r.get("embedding_model")), "")
    return "\n".join(lines + ([f"(Recall phrase similarity: {model})"] if model else []))

