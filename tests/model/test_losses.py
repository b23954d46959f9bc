"""The GROVE loss against values worked out by hand (grove_spec 2.1)."""

import math

import pytest
import torch

from grove.model.losses import LossWeights, box_losses, grove_loss


def _batch():
    # clip 0: two phrases on two frames; clip 1: one phrase (its second slot is padding)
    pred = torch.zeros(2, 2, 2, 4)
    gt = torch.zeros(2, 2, 2, 4)
    present = torch.zeros(2, 2, 2, dtype=torch.bool)
    pred[0, 0, 0] = gt[0, 0, 0] = torch.tensor([0.5, 0.5, 0.2, 0.2])  # exact: GIoU loss 0, L1 0
    present[0, 0, 0] = True
    pred[0, 0, 1] = torch.tensor([0.9, 0.9, 0.9, 0.9])  # absent: ignored by the box terms
    pred[0, 1, 0], gt[0, 1, 0] = torch.tensor([0.5, 0.5, 0.2, 0.2]), torch.tensor([0.6, 0.5, 0.2, 0.2])
    pred[0, 1, 1], gt[0, 1, 1] = torch.tensor([0.25, 0.25, 0.1, 0.1]), torch.tensor([0.75, 0.75, 0.1, 0.1])
    present[0, 1] = True
    pred[1, 0, 0] = gt[1, 0, 0] = torch.tensor([0.3, 0.3, 0.2, 0.4])
    present[1, 0, 0] = True
    pred[1, :, 1] = torch.tensor([0.1, 0.1, 0.1, 0.1])  # padding slot
    logits = torch.tensor([[[2.0, -1.0], [0.0, 3.0]], [[1.0, 100.0], [-2.0, -100.0]]])
    phrase_mask = torch.tensor([[True, True], [True, False]])
    return pred, gt, present, logits, phrase_mask


def test_box_and_objectness_terms_match_hand_computation():
    pred, gt, present, logits, phrase_mask = _batch()
    ce = torch.tensor(1.5)
    total, terms = grove_loss(ce, pred, logits, gt, present, phrase_mask)
    # GIoU losses: 0; 1 - 1/3 (overlap 0.02 of union 0.06, hull = union); 1 + 0.34/0.36 (disjoint); 0
    giou = (0 + 2 / 3 + (1 + 0.34 / 0.36) + 0) / 4  # N_P = 4 present pairs in the batch
    l1 = (0 + 0.1 + 1.0 + 0) / 4
    softplus = lambda x: math.log1p(math.exp(x))
    # BCE over the 6 real (frame, phrase) pairs; the two padding slots (logits +-100) do not count
    bce = [softplus(-2.0), softplus(-1.0), softplus(-0.0), softplus(-3.0), softplus(-1.0), softplus(-2.0)]
    tobj = sum(bce) / 6
    assert terms["giou"].item() == pytest.approx(giou, rel=1e-5)
    assert terms["l1"].item() == pytest.approx(l1, rel=1e-5)
    assert terms["tobj"].item() == pytest.approx(tobj, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(1.5)
    assert total.item() == pytest.approx(1.5 + 2 * giou + 2 * l1 + 2 * tobj, rel=1e-5)


def test_weights_and_objectness_switch():
    pred, gt, present, logits, phrase_mask = _batch()
    weights = LossWeights(ce=0.5, giou=1.0, l1=3.0, tobj=4.0)
    total, terms = grove_loss(torch.tensor(2.0), pred, logits, gt, present, phrase_mask, weights, use_objectness=False)
    assert terms["tobj"].item() == 0.0
    assert total.item() == pytest.approx(1.0 + terms["giou"].item() + 3 * terms["l1"].item(), rel=1e-6)


def test_no_present_pair_gives_zero_box_terms_that_still_backpropagate():
    pred = torch.rand(1, 3, 2, 4, requires_grad=True)
    giou, l1 = box_losses(pred, torch.rand(1, 3, 2, 4), torch.zeros(1, 3, 2, dtype=torch.bool))
    assert giou.item() == 0.0 and l1.item() == 0.0
    (giou + l1).backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) == 0.0


def test_box_gradient_only_reaches_present_pairs():
    pred, gt, present, logits, phrase_mask = _batch()
    pred.requires_grad_(True)
    _, terms = grove_loss(torch.tensor(0.0), pred, logits, gt, present, phrase_mask)
    (terms["giou"] + terms["l1"]).backward()
    touched = pred.grad.abs().sum(-1) > 0
    assert not bool((touched & ~present).any())
