"""GROVE's `eval_iground.py` (AP50, mIoU and Recall, `--evaluation_mode per_video`), restated step by step.

What `evaluation.iground` is tested against on RANDOMISED splits (many seeds, layouts and options)
and benchmarked against (benchmarks/bench_iground_eval.py): COCO-format conversion, one pycocotools
COCOeval per video, the mIoU and recall loops with phrase embeddings computed per frame. The real
official script is run on one fixed fixture (scripts/official_parity/official_eval.py, its output
committed under tests/fixtures/official_eval/, checked by tests/evaluation/test_official_parity.py);
that is the ground truth, this restatement extends it to random inputs without the official checkout.
Two departures, neither changing a number: the official script finds each frame's annotations by
scanning every annotation (quadratic), this uses pycocotools' own image index; and it embeds a
frame's phrases in one batch instead of two forward passes per phrase pair.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def compute_iou(pred_bbox: Sequence[float], gt_bbox: Sequence[float]) -> float:
    x_a, y_a = max(pred_bbox[0], gt_bbox[0]), max(pred_bbox[1], gt_bbox[1])
    x_b, y_b = min(pred_bbox[2], gt_bbox[2]), min(pred_bbox[3], gt_bbox[3])
    inter = max(0, x_b - x_a + 1) * max(0, y_b - y_a + 1)
    area_a = (pred_bbox[2] - pred_bbox[0] + 1) * (pred_bbox[3] - pred_bbox[1] + 1)
    area_b = (gt_bbox[2] - gt_bbox[0] + 1) * (gt_bbox[3] - gt_bbox[1] + 1)
    if float(area_a + area_b - inter) == 0:
        return 0.0
    return inter / float(area_a + area_b - inter)


def find_best_matches(gt_boxes: list, gt_labels: list, dt_boxes: list, dt_labels: list,
                      text_sims: np.ndarray, iou_threshold: float = 0.5, sim_threshold: float = 0.5) -> int:
    ious = np.zeros((len(gt_boxes), len(dt_boxes)))
    for i, g in enumerate(gt_boxes):
        for j, d in enumerate(dt_boxes):
            ious[i, j] = compute_iou(g, d)
    text_sims = text_sims.copy()
    matches = 0
    while ious.size > 0 and text_sims.size > 0:
        best = np.unravel_index(np.argmax(ious), ious.shape)
        if ious[best] < iou_threshold or text_sims[best] < sim_threshold:
            break
        matches += 1
        ious[best[0], :] = 0
        ious[:, best[1]] = 0
        text_sims[best[0], :] = 0
        text_sims[:, best[1]] = 0
    return matches


def clamp_bbox(bbox: np.ndarray, width: int, height: int) -> np.ndarray:
    bbox = np.array(bbox, dtype=np.float64)
    bbox[[0, 2]] = np.clip(bbox[[0, 2]], 0, width)
    bbox[[1, 3]] = np.clip(bbox[[1, 3]], 0, height)
    return bbox


def to_coco(gt_data: Mapping[str, Any], pred_data: Mapping[str, Any]) -> tuple[dict, list, dict, list[str]]:
    """`transform_data_to_coco_format`, in memory: GT boxes, predicted boxes (score 1.0), per-frame labels."""
    gt_bbox: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    pred_bbox: list = []
    labels: dict = {}
    video_ids: list[str] = []
    ann_id = 0
    for video_id, gt in gt_data.items():
        if video_id not in pred_data:
            continue
        pred = pred_data[video_id]
        gt_bboxes, gt_labels = gt["bboxes"], gt["labels"]
        pred_bboxes, pred_labels = list(pred["pred_bboxes"]), list(pred["pred_labels"])
        if len(pred_bboxes) > len(gt_bboxes):
            pred_bboxes = pred_bboxes[:-1]
        if len(pred_labels) > len(gt_labels):
            pred_labels = pred_labels[:-1]
        if len(pred_bboxes) == 0 and len(pred_labels) == 0:
            continue
        assert len(gt_bboxes) == len(gt_labels) == len(pred_bboxes) == len(pred_labels), video_id
        video_ids.append(video_id)
        for frame_idx, (f_gt, f_gt_labels, f_pred, f_pred_labels) in enumerate(
                zip(gt_bboxes, gt_labels, pred_bboxes, pred_labels)):
            image_id = f"{video_id}_{frame_idx}"
            gt_bbox["images"].append({"id": image_id, "video_id": video_id, "frame_idx": frame_idx})
            for bbox, _ in zip(f_gt, f_gt_labels):
                x_min, y_min, x_max, y_max = map(int, bbox)
                ann_id += 1
                gt_bbox["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": 1,
                                               "bbox": [x_min, y_min, x_max - x_min, y_max - y_min],
                                               "area": (x_max - x_min) * (y_max - y_min), "iscrowd": 0})
            for bbox, _ in zip(f_pred, f_pred_labels):
                x_min, y_min, x_max, y_max = map(int, clamp_bbox(bbox, gt["width"], gt["height"]))
                pred_bbox.append({"image_id": image_id, "category_id": 1,
                                  "bbox": [x_min, y_min, x_max - x_min, y_max - y_min], "score": 1.0})
            labels[image_id] = (list(f_gt_labels), list(f_pred_labels))
    return gt_bbox, pred_bbox, labels, video_ids


def official_iground(gt_data: Mapping[str, Any], pred_data: Mapping[str, Any],
                     embed: Callable[[list[str]], np.ndarray]) -> dict[str, Any]:
    """AP50 and Recall per video and averaged, as `eval_iground.py --evaluation_mode per_video` computes them."""
    gt_bbox, pred_bbox, labels, video_ids = to_coco(gt_data, pred_data)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_bbox
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(pred_bbox)
        frames_of = {v: [] for v in video_ids}
        for image in coco_gt.dataset["images"]:
            frames_of[image["video_id"]].append(image["id"])
        ap = []
        for video_id in video_ids:
            evaluator = COCOeval(coco_gt, coco_dt, "bbox")
            evaluator.params.catIds = [1]
            evaluator.params.imgIds = frames_of[video_id]
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            ap.append(evaluator.stats[1])
    mious = []
    for video_id in video_ids:
        frame_mious = []
        for frame_id in frames_of[video_id]:
            gt_boxes = [a["bbox"] for a in coco_gt.imgToAnns[frame_id]]
            dt_boxes = [a["bbox"] for a in coco_dt.imgToAnns[frame_id]]
            if dt_boxes and gt_boxes:
                frame_mious.append(np.array([[compute_iou(d, g) for g in gt_boxes] for d in dt_boxes]).mean())
        mious.append(np.mean(frame_mious) if frame_mious else 0.0)
    recalls = []
    for video_id in video_ids:
        tp = positives = 0
        for frame_id in frames_of[video_id]:
            gt_boxes = [a["bbox"] for a in coco_gt.imgToAnns[frame_id]]
            dt_boxes = [a["bbox"] for a in coco_dt.imgToAnns[frame_id]]
            gt_labels, dt_labels = labels[frame_id]
            positives += len(gt_labels)
            sims = np.zeros((len(gt_labels), len(dt_labels)))
            if gt_labels and dt_labels:
                vectors = embed(gt_labels + dt_labels).astype(np.float64)
                vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-300)
                sims = vectors[:len(gt_labels)] @ vectors[len(gt_labels):].T
            tp += find_best_matches(gt_boxes, gt_labels, dt_boxes, dt_labels, sims)
        recalls.append(tp / positives if positives > 0 else 0)
    return {"AP50": float(np.mean(ap)) if ap else 0.0, "Recall": float(np.mean(recalls)) if recalls else 0.0,
            "mIoU": float(np.mean(mious)) if mious else 0.0, "ap_per_video": dict(zip(video_ids, ap)),
            "recall_per_video": dict(zip(video_ids, recalls)), "miou_per_video": dict(zip(video_ids, mious))}
