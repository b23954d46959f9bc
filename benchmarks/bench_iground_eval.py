"""iGround evaluation speed: evaluation.iground vs a baseline with the official evaluator's structure.

Split: generated, iGround-sized (1,000 clips, ~40 frames, ~3 boxes a frame, GROVE-layout predictions).
Baseline (tests/evaluation/official_iground.py): GROVE's eval_iground.py AP50 and Recall step by step,
one pycocotools COCOeval per video, phrase embeddings computed per frame (already kinder than the
original, which scans every annotation per frame and embeds per phrase pair). Ours: one vectorised
AP over all frames, each distinct phrase embedded once. Both use the same phrase-embedding model and
neither computes the caption metrics (identical pycocoevalcap calls, Java-bound).

Prints both times, the ratio (goal >= 10x) and the largest difference in any metric (goal 0).

    .venv/bin/python benchmarks/bench_iground_eval.py [--clips 1000] [--frames 40] [--embedding-model auto]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from evaluation.embeddings import load_phrase_embedder  # noqa: E402
from evaluation.iground import OFFICIAL, evaluate_iground, gt_from_tables  # noqa: E402
from grove.data.howtoground import records_to_tables  # noqa: E402
from grove.data.predictions import clip_prediction  # noqa: E402
from tests.evaluation.iground_fixtures import make_split  # noqa: E402
from tests.evaluation.official_iground import official_iground  # noqa: E402

GOAL = 10.0


class TimedEmbedder:
    """The embedder, timing its calls, so each side's time splits into embedding and the rest."""

    def __init__(self, embed):
        self.embed, self.seconds, self.phrases = embed, 0.0, 0

    def __call__(self, phrases):
        start = time.perf_counter()
        out = self.embed(phrases)
        self.seconds += time.perf_counter() - start
        self.phrases += len(phrases)
        return out

    def take(self) -> tuple[float, int]:
        taken = (self.seconds, self.phrases)
        self.seconds, self.phrases = 0.0, 0
        return taken


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--boxes", type=int, default=3)
    parser.add_argument("--vocabulary", type=int, default=4000, help="distinct noun phrases to draw from")
    parser.add_argument("--embedding-model", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for both sides (1 avoids OpenMP thrashing on a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    gt_records, pred_records = make_split(args.clips, args.frames, args.boxes, args.seed, vocabulary=args.vocabulary)
    clips, boxes = records_to_tables(gt_records, "iground", "test")
    gt = gt_from_tables(clips, boxes)
    predictions = {key: clip_prediction(key, record) for key, record in pred_records.items()}
    embedder = load_phrase_embedder(args.embedding_model)
    embedder(["warm-up phrase"])
    frames = sum(c.num_frames for c in gt.values())
    phrases = {p for c in gt.values() for p in c.labels} | {p for r in pred_records.values() for p in r["pred_phrases"]}
    print(f"split: {len(gt)} clips, {frames} frames, {boxes.num_rows} GT boxes "
          f"({boxes.num_rows / frames:.2f} per frame), {len(phrases)} distinct phrases; embeddings: {embedder.name}, "
          f"{args.threads} torch thread(s)")

    timed = TimedEmbedder(embedder)
    start = time.perf_counter()
    ours = evaluate_iground(gt, predictions, timed, OFFICIAL, embedder.name, captions=False)
    ours_s = time.perf_counter() - start
    embed_s, embedded = timed.take()
    print(f"ours:     {ours_s:8.2f} s ({embed_s:.2f} s embedding {embedded} phrases)  "
          f"AP50 {ours.metrics['AP50']:.6f}  Recall {ours.metrics['Recall']:.6f}", flush=True)

    start = time.perf_counter()
    baseline = official_iground(gt_records, pred_records, timed)
    baseline_s = time.perf_counter() - start
    embed_s, embedded = timed.take()
    print(f"baseline: {baseline_s:8.2f} s ({embed_s:.2f} s embedding {embedded} phrases)  "
          f"AP50 {baseline['AP50']:.6f}  Recall {baseline['Recall']:.6f}")

    differences = [abs(ours.metrics["AP50"] - baseline["AP50"]), abs(ours.metrics["Recall"] - baseline["Recall"])]
    differences += [abs(ours.per_item[k]["AP50"] - v) for k, v in baseline["ap_per_video"].items()]
    differences += [abs(ours.per_item[k]["Recall"] - v) for k, v in baseline["recall_per_video"].items()]
    ratio = baseline_s / ours_s
    print(f"speed-up: {ratio:.1f}x (goal >= {GOAL:.0f}x, ratio to goal {ratio / GOAL:.2f}); "
          f"max metric difference {max(differences):.3g} over {len(baseline['ap_per_video'])} videos")
    return 0 if ratio >= GOAL and max(differences) <= 1e-9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
