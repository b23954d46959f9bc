"""GROVE's loss (grove_spec 2.1): L = w_ce*CE + w_giou*GIoU + w_l1*L1 + w_tobj*BCE(objectness).

- CE: shifted next-token cross-entropy, averaged over the supervised (answer) tokens of the batch.
- P = the (clip, frame, phrase) triples whose object is present; N_P = |P|.
  GIoU = (1/N_P) sum_P [1 - GIoU(xyxy(pred), xyxy(gt))] (torchvision's generalized_box_iou_loss on
  the normalised boxes); L1 = (1/N_P) sum_P ||pred - gt||_1 over the 4 normalised cxcywh numbers.
- tobj = (1/N_all) sum over every real (clip, frame, phrase) of BCEWithLogits(logit, present).
- Normalisers are sums over the whole batch. Prediction j pairs with phrase j (no matching).
With no present pair the box terms are 0 (still attached to the graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou_loss

IGNORE_INDEX = -100


@dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0
    giou: float = 2.0
    l1: float = 2.0
    tobj: float = 2.0


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


def grove_loss(
    ce: torch.Tensor,
    pred_boxes: torch.Tensor,
    objectness_logits: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_present: torch.Tensor,
    phrase_mask: torch.Tensor,
    weights: LossWeights = LossWeights(),
    use_objectness: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its terms. pred/gt boxes (B,T,P,4), logits / present (B,T,P), phrase_mask (B,P)."""
    valid = phrase_mask[:, None, :].expand_as(gt_present)
    present = gt_present & valid
    giou, l1 = box_losses(pred_boxes, gt_boxes, present)
    tobj = objectness_loss(objectness_logits, present, valid) if use_objectness else objectness_logits.sum() * 0.0
    total = weights.ce * ce + weights.giou * giou + weights.l1 * l1 + weights.tobj * tobj
    return total, {"ce": ce, "giou": giou, "l1": l1, "tobj": tobj}
