import torch

from tests.model.conftest import make_clip


def test_tiny_forward_backward_gives_all_loss_terms(tiny_model):
    frames, caption, phrases, boxes = make_clip()
    processor = tiny_model.processor
    batch = processor.collate([processor(frames, caption, phrases, boxes=boxes)])
    out = tiny_model(batch)
    # mask, dice: the tiny readout (test_mask_readout.py); vobj: its video-token selection (test_video_selection.py)
    assert set(out.losses) == {"ce", "giou", "l1", "tobj", "mask", "dice", "vobj"}
    assert torch.isfinite(out.loss)
    assert out.pred_boxes.shape == (1, 8, 2, 4) and out.objectness_logits.shape == (1, 8, 2)
    out.loss.backward()
    grads = [p.grad for p in tiny_model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    tiny_model.zero_grad(set_to_none=True)
