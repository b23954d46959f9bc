"""evaluation.ap against pycocotools' COCOeval itself: per video, class-agnostic, AP at IoU 0.5."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from evaluation.ap import coco_ap_per_video


def _coco(images, gts, categories=(1,)):
    dataset = {"images": [{"id": i} for i in images], "categories": [{"id": c} for c in categories], "annotations": [
        {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for k, (i, b, c) in enumerate(gts)]}
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def cocoeval_ap50(images, gts, dts, use_cats=True):
    """stats[1] of one COCOeval over `images` (GT: (image, xywh, cat); dets: (image, xywh, score, cat))."""
    gt = _coco(images, gts, sorted({c for *_, c in gts} | {c for *_, c in dts} | {1}))
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes([{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, b, s, c in dts])
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.imgIds = list(images)
        evaluator.params.useCats = int(use_cats)
        if use_cats:
            evaluator.params.catIds = sorted({c for *_, c in gts})
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[1]


def ours(videos):
    """videos: list of (images, gts, dets) with string image ids; returns AP per video."""
    gt_boxes, gt_image, dt_boxes, dt_image, dt_scores, image_video, image_rank = [], [], [], [], [], [], []
    for v, (images, gts, dts) in enumerate(videos):
        base = len(image_video)
        index = {image: base + k for k, image in enumerate(images)}
        image_video += [v] * len(images)
        order = sorted(images)  # COCOeval walks images in sorted id order
        image_rank += [order.index(image) for image in images]
        gt_boxes += [b for _, b, _ in gts]
        gt_image += [index[i] for i, _, _ in gts]
        dt_boxes += [b for _, b, _, _ in dts]
        dt_image += [index[i] for i, _, _, _ in dts]
        dt_scores += [s for _, _, s, _ in dts]
    return coco_ap_per_video(np.array(gt_boxes).reshape(-1, 4), np.array(gt_image, int), np.array(dt_boxes).reshape(-1, 4),
                             np.array(dt_image, int), np.array(dt_scores), np.array(image_video), np.array(image_rank),
                             len(videos))


def random_video(rng, v, max_frames):
    images = [f"clip{v}_{f}" for f in range(int(rng.integers(1, max_frames + 1)))]
    gts, dts = [], []
    for image in images:
        frame_gts = []
        if rng.random() > 0.25:  # empty frames
            for _ in range(int(rng.integers(0, 4))):
                box = [float(x) for x in rng.integers(0, 60, 2)] + [float(x) for x in rng.integers(-3, 35, 2)]
                frame_gts.append(box)  # negative sizes: ignored GTs (area out of range)
        gts += [(image, b, 1) for b in frame_gts]
        crowded = rng.random() < 0.08  # more than maxDets=100 detections
        for _ in range(int(rng.integers(95, 110)) if crowded else int(rng.integers(0, 6))):
            if frame_gts and rng.random() < 0.6:
                g = frame_gts[int(rng.integers(0, len(frame_gts)))]
                box = [g[k] + float(rng.integers(-5, 6)) for k in range(4)]
            else:
                box = [float(x) for x in rng.integers(0, 60, 2)] + [float(x) for x in rng.integers(-2, 35, 2)]
            score = 1.0 if rng.random() < 0.4 else float(rng.choice([0.9, 0.5, rng.random()]))  # many ties
            dts.append((image, box, score, 1))
    if rng.random() < 0.1:
        gts = []  # a video without GT: COCOeval reports -1
    if rng.random() < 0.1:
        dts = []  # a video without detections
    return images, gts, dts


@pytest.mark.parametrize("seed", range(12))
def test_equals_cocoeval_per_video_on_random_videos(seed):
    rng = np.random.default_rng(seed)
    videos = [random_video(rng, v, max_frames=13) for v in range(16)]  # >10 frames: '_10' sorts before '_2'
    got = ours(videos)
    for v, (images, gts, dts) in enumerate(videos):
        if not dts and not gts:
            assert got[v] == -1
            continue
        if not dts:  # loadRes cannot take an empty list; COCOeval's answer is 0 with GT, -1 without
            assert got[v] == (0.0 if any(b[2] * b[3] >= 0 for _, b, _ in gts) else -1.0)
            continue
        assert abs(got[v] - cocoeval_ap50(images, gts, dts)) <= 1e-9, f"video {v}"


def test_constant_scores_make_ap_depend_on_image_order():
    # two frames, one GT each; frame '_10' has an FP, frame '_2' a TP: with equal scores COCOeval ranks
    # '_10' first (sorted ids), so the FP comes first
    images = ["c_2", "c_10"]
    gts = [("c_2", [0, 0, 10, 10], 1), ("c_10", [0, 0, 10, 10], 1)]
    dts = [("c_2", [0, 0, 10, 10], 1.0, 1), ("c_10", [50, 50, 10, 10], 1.0, 1), ("c_10", [0, 0, 10, 10], 1.0, 1)]
    reference = cocoeval_ap50(images, gts, dts)
    assert ours([(images, gts, dts)])[0] == pytest.approx(reference, abs=1e-12)
    swapped = [(i, b, s, c) for i, b, s, c in dts[::-1]]
    assert ours([(images, gts, swapped)])[0] == pytest.approx(cocoeval_ap50(images, gts, swapped), abs=1e-12)


def test_metrics_spec_class_agnostic_vectors():
    images = ["a", "b"]
    gts = [("a", [0, 0, 10, 10], 1), ("b", [20, 20, 10, 10], 2)]
    perfect = [("a", [0, 0, 10, 10], 0.9, 1), ("b", [20, 20, 10, 10], 0.8, 2)]
    fp_first = [("a", [40, 40, 5, 5], 0.95, 1), ("a", [0, 0, 10, 10], 0.9, 1), ("b", [20, 20, 10, 10], 0.8, 2)]
    wrong_class = [("a", [0, 0, 10, 10], 0.9, 1), ("b", [20, 20, 10, 10], 0.8, 1)]  # b is class 2
    assert cocoeval_ap50(images, gts, perfect) == pytest.approx(1.0)
    assert cocoeval_ap50(images, gts, fp_first) == pytest.approx(0.75)
    assert cocoeval_ap50(images, gts, wrong_class) == pytest.approx(0.5)
    agnostic = [(images, [(i, b, 1) for i, b, _ in gts], [(i, b, s, 1) for i, b, s, _ in d]) for d in (perfect, fp_first, wrong_class)]
    assert ours(agnostic).tolist() == pytest.approx([1.0, 2 / 3, 1.0], abs=1e-12)
    assert cocoeval_ap50(images, gts, fp_first, use_cats=False) == pytest.approx(ours(agnostic[1:2])[0], abs=1e-12)


def test_empty_inputs():
    assert ours([(["x_0"], [], [])]).tolist() == [-1.0]
    assert ours([(["x_0"], [("x_0", [0, 0, 5, 5], 1)], [])]).tolist() == [0.0]
