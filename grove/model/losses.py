"""GROVE's loss (grove_spec 2.1): L = w_ce*CE + w_giou*GIoU + w_l1*L1 + w_tobj*BCE(objectness).

- CE: shifted next-token cross-entropy, averaged over the supervised (answer) tokens of the batch.
- P = the (clip, frame, phrase) triples whose object is present; N_P = |P|.
  GIoU = (1/N_P) sum_P [1 - GIoU(xyxy(pred), xyxy(gt))] (torchvision's generalized_box_iou_loss on
  the normalised boxes); L1 = (1/N_P) sum_P ||pred - gt||_1 over the 4 normalised cxcywh numbers.
- tobj = (1/N_all) sum over every real (clip, frame, phrase) of BCEWithLogits(logit, present).
- Normalisers are sums over the whole batch. Prediction j pairs with phrase j (no matching).
With no present pair the box terms are 0 (still attached to the graph).

Not in the paper, only with `box_readout="mask"` and `mask_loss_weight > 0` (config.py):
- mask = mean over the frame's mask cells of the present pairs of BCEWithLogits(mask logit, the
  fraction of the cell that the GT box covers): SAM's mask supervision, with the box as the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou_loss

from grove.model.box_decoder import mask_cell_centres

IGNORE_INDEX = -100


@dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0
    giou: float = 2.0
    l1: float = 2.0
    tobj: float = 2.0
    mask: float = 0.0
    dice: float = 0.0


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of already-selected (shifted) positions: logits (M, V), targets (M,)."""
    if targets.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets)


def box_losses(pred: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(GIoU, L1) over present pairs; pred / target (..., 4) normalised cxcywh, present (...) bool."""
    pred_present = pred[present].float()
    if pred_present.shape[0] == 0:
        zero = pred.sum() * 0.0
        return zero, zero
    target_present = target[present].float()
    count = pred_present.shape[0]
    giou = generalized_box_iou_loss(
        box_convert(pred_present, "cxcywh", "xyxy"), box_convert(target_present, "cxcywh", "xyxy"), reduction="sum"
    )
    l1 = (pred_present - target_present).abs().sum()
    return giou / count, l1 / count


def objectness_loss(logits: torch.Tensor, present: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over the valid (clip, frame, phrase) triples."""
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[valid].float(), present[valid].float())


def _covered(lo: torch.Tensor, hi: torch.Tensor, cells: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """Fraction of each 1-D cell [c - cell/2, c + cell/2] inside [lo, hi]: lo / hi (M,), cells (M, K), cell (M, 1)."""
    left = torch.maximum(cells - cell / 2, lo[:, None])
    right = torch.minimum(cells + cell / 2, hi[:, None])
    return (right - left).clamp(min=0) / cell


def box_mask_targets(boxes: torch.Tensor, extent: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The box rasterised on the mask grid: boxes (M, 4) normalised cxcywh, extent (M, 2) of each box's
    frame -> (covered fraction of each cell (M, side, side), the cells inside the frame (M, side, side))."""
    xs, ys = mask_cell_centres(extent, side)
    cell_w, cell_h = 1.0 / (side * extent[:, 0:1]), 1.0 / (side * extent[:, 1:2])
    boxes = boxes.float()
    x1, x2 = boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 0] + boxes[:, 2] / 2
    y1, y2 = boxes[:, 1] - boxes[:, 3] / 2, boxes[:, 1] + boxes[:, 3] / 2
    cover = _covered(y1, y2, ys, cell_h)[:, :, None] * _covered(x1, x2, xs, cell_w)[:, None, :]
    inside = (ys[:, :, None] < 1) & (xs[:, None, :] < 1)
    return cover, inside


def _present_masks(mask_logits, gt_boxes, present, extent) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The present pairs' mask logits (M, H, W) with their rasterised GT boxes and in-frame cells."""
    logits = mask_logits[present].float()
    extents = extent[:, :, None, :].expand(*present.shape, 2)[present]
    target, inside = box_mask_targets(gt_boxes[present], extents, logits.shape[-1])
    return logits, target, inside


def mask_loss(mask_logits: torch.Tensor, gt_boxes: torch.Tensor, present: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """BCE of the mask logits against the rasterised GT boxes over the frame's cells of present pairs.

    mask_logits (B,T,P,H,W), gt_boxes (B,T,P,4), present (B,T,P), extent (B,T,2).
    """
    if not bool(present.any()):
        return mask_logits.sum() * 0.0
    logits, target, inside = _present_masks(mask_logits, gt_boxes, present, extent)
    per_cell = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per_cell * inside).sum() / inside.sum().clamp(min=1)


def mask_dice_loss(mask_logits: torch.Tensor, gt_boxes: torch.Tensor, present: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """GLaMM's / LISA's dice loss, 1 - (2 sum(s t) + 1) / (sum(s) + sum(t) + 1) with s = sigmoid(logit),
    over the frame's cells of each present pair, averaged over the pairs. Unlike the per-cell BCE it
    does not shrink with the object: a mask that is all background costs ~1 for a 2 % object too."""
    if not bool(present.any()):
        return mask_logits.sum() * 0.0
    logits, target, inside = _present_masks(mask_logits, gt_boxes, present, extent)
    scores = logits.sigmoid() * inside
    overlap = (scores * target).flatten(1).sum(-1)
    return (1 - (2 * overlap + 1) / (scores.flatten(1).sum(-1) + target.flatten(1).sum(-1) + 1)).mean()


def grove_loss(
    ce: torch.Tensor,
    pred_boxes: torch.Tensor,
    objectness_logits: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_present: torch.Tensor,
    phrase_mask: torch.Tensor,
    weights: LossWeights = LossWeights(),
    use_objectness: bool = True,
    mask_logits: torch.Tensor | None = None,
    extent: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its terms. pred/gt boxes (B,T,P,4), logits / present (B,T,P), phrase_mask (B,P);
    with `weights.mask` > 0 also mask_logits (B,T,P,H,W) and the frames' extent (B,T,2)."""
    valid = phrase_mask[:, None, :].expand_as(gt_present)
    present = gt_present & valid
    giou, l1 = box_losses(pred_boxes, gt_boxes, present)
    tobj = objectness_loss(objectness_logits, present, valid) if use_objectness else objectness_logits.sum() * 0.0
    total = weights.ce * ce + weights.giou * giou + weights.l1 * l1 + weights.tobj * tobj
    terms = {"ce": ce, "giou": giou, "l1": l1, "tobj": tobj}
    if weights.mask > 0:
        if mask_logits is None or extent is None:
            raise ValueError("a mask loss weight needs the mask logits and the frames' extent")
        terms["mask"] = mask_loss(mask_logits, gt_boxes, present, extent)
        total = total + weights.mask * terms["mask"]
    if weights.dice > 0:
        if mask_logits is None or extent is None:
            raise ValueError("a dice loss weight needs the mask logits and the frames' extent")
        terms["dice"] = mask_dice_loss(mask_logits, gt_boxes, present, extent)
        total = total + weights.dice * terms["dice"]
    return total, terms
