"""Generated iGround-like splits: official raw GT records and GROVE-layout predictions (no downloads).

Used by the tests and by benchmarks/bench_iground_eval.py. Predictions mimic GROVE's output in the
official layout: one box per [DET] query on every frame, kept where its objectness passes 0.5 (so
frames drop queries, some all of them), labels of the kept queries, one probability per query; with
`all_query=True` every query's box is also written (`all_bboxes`, what `grove infer` adds). Some boxes
are jittered copies of GT boxes, some are elsewhere, some reach outside the frame; phrases are GT
phrases, near-synonyms or unrelated words, and some answers have one [DET] query more than phrases;
a few frames and one clip have no GT box; every fifth clip has the extra last frame GROVE emits.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from grove.data.predictions import official_record

NOUNS = ["man", "woman", "knife", "onion", "board", "pan", "bowl", "hand", "hands", "spoon", "tomato", "cup",
         "table", "oil", "water", "bread", "egg", "plate", "dough", "pot", "lid", "glass", "bottle", "towel"]
ADJECTIVES = ["a", "the", "a red", "the wooden", "a small", "a large", "the white", "some"]


RELATIONS = ["", "", " on the", " with the", " next to the", " in the", " of the"]


def phrase_vocabulary(rng: np.random.Generator, size: int) -> list[str]:
    """Up to ~8,000 distinct noun phrases ("a red knife", "the bowl next to the sink")."""
    phrases: set[str] = set()
    for _ in range(size * 20):
        relation = str(rng.choice(RELATIONS))
        tail = f"{relation} {rng.choice(NOUNS)}" if relation else ""
        phrases.add(f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}{tail}")
        if len(phrases) >= size:
            break
    return sorted(phrases)


def make_split(num_clips: int = 20, frames: int = 40, boxes_per_frame: int = 3, seed: int = 0,
               width: int = 455, height: int = 256, vocabulary: int = 150,
               all_query: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(GT records keyed `{video_id}_{clip_id}` in the official raw layout, predictions in GROVE's layout)."""
    rng = np.random.default_rng(seed)
    vocab = phrase_vocabulary(rng, vocabulary)
    gt: dict[str, Any] = {}
    pred: dict[str, Any] = {}
    for c in range(num_clips):
        key = f"vid{c:05d}_{c % 7}"
        num_frames = int(max(1, frames + rng.integers(-3, 4)))
        phrases = list(rng.choice(vocab, size=int(rng.integers(2, 2 + boxes_per_frame)), replace=False))
        tracks = {p: np.array([rng.uniform(0, width - 60), rng.uniform(0, height - 60), 0, 0]) for p in phrases}
        for box in tracks.values():
            box[2:] = box[:2] + rng.uniform(20, 150, 2)
        bboxes, labels = [], []
        for t in range(num_frames):
            frame_boxes, frame_labels = [], []
            if c != 3 and rng.random() > 0.1:  # clip 3 and ~10% of frames have no GT box
                for p in phrases:
                    for _ in range(int(rng.integers(1, 3)) if rng.random() < 0.3 else 1):
                        box = np.clip(tracks[p] + rng.normal(0, 6, 4), 0, [width, height, width, height])
                        frame_boxes.append([float(v) for v in box])
                        frame_labels.append(p)
                        if len(frame_boxes) >= boxes_per_frame + 2:
                            break
            bboxes.append(frame_boxes)
            labels.append(frame_labels)
        caption = "'" + " and ".join(phrases) + " are seen in the kitchen'"
        gt[key] = {"video_fname": f"{key}.mp4", "video_id": key.rsplit("_", 1)[0], "clip_id": key.rsplit("_", 1)[1],
                   "fps": 25.0, "clip_start_frame": 0, "clip_end_frame": (num_frames - 1) * 5, "width": width,
                   "height": height, "caption": caption, "tagged_caption": " ".join(f"<p>{p}</p>" for p in phrases),
                   "phrases": phrases, "bboxes": bboxes, "labels": labels}
        pred_phrases = [p if rng.random() < 0.6 else (p.replace("a ", "the ", 1) if rng.random() < 0.5
                                                         else str(rng.choice(vocab))) for p in phrases]
        pred_phrases += [str(rng.choice(vocab)) for _ in range(int(rng.integers(0, 2)))]
        pred_phrases = [str(p) for p in pred_phrases]
        queries = len(pred_phrases) + int(c % 6 == 1)  # a malformed answer: one [DET] more than phrases
        pred_boxes, probs = [], []
        for t in range(num_frames + int(c % 5 == 0)):  # some clips carry the extra last frame GROVE emits
            frame = []
            for j in range(queries):
                p = pred_phrases[min(j, len(pred_phrases) - 1)]
                anchor = tracks.get(phrases[j] if j < len(phrases) else p, tracks[phrases[0]])
                if rng.random() < 0.7:
                    box = anchor + rng.normal(0, 10, 4)
                else:
                    box = np.array([rng.uniform(-20, width), rng.uniform(-20, height), 0, 0])
                    box[2:] = box[:2] + rng.uniform(5, 200, 2)
                frame.append(box)
            pred_boxes.append(np.array(frame, np.float32).reshape(-1, 4))
            probs.append(rng.random(queries).astype(np.float32))
        record = official_record(pred_boxes, probs, pred_phrases, " and ".join(pred_phrases) + " in a kitchen", "", 0.5)
        pred[key] = record.to_record()
        if not all_query:
            del pred[key]["all_bboxes"], pred[key]["objectness_threshold"]
    return gt, pred


def hashed_bag_of_words(phrases: list[str], dim: int = 64) -> np.ndarray:
    """A deterministic stand-in for a text encoder: phrases sharing words get positive cosine similarity."""
    out = np.zeros((len(phrases), dim), np.float32)
    for i, phrase in enumerate(phrases):
        for word in phrase.lower().split():
            out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % dim] += 1.0
    return out
