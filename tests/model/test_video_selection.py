"""Object-centric video tokens (video_token_selection="objectness"): geometry, targets, the LLM's mask."""

import numpy as np
import pytest
import torch

from grove.model import GroveConfig, GroveModel
from grove.model.processor import clip_pixels
from grove.model.sequence import expand_video_tokens
from grove.model.video_selection import adaptive_bins, canvas_boxes, token_cells, video_token_targets
from tests.model.conftest import make_clip


@pytest.mark.parametrize("length,bins", [(8, 4), (8, 3), (7, 4), (24, 9), (8, 8)])
def test_adaptive_bins_are_the_cells_adaptive_avg_pool_averages(length, bins):
    pool = torch.nn.AdaptiveAvgPool1d(bins)
    for cell in range(length):
        indicator = torch.zeros(1, 1, length)
        indicator[0, 0, cell] = 1.0
        touched = (pool(indicator)[0, 0] > 0).tolist()
        assert touched == [start <= cell < end for start, end in adaptive_bins(length, bins)]


def _drawn_extent(canvas: torch.Tensor) -> tuple[float, float, float, float]:
    """xyxy fraction of the canvas where the white rectangle landed (any channel well above the rest)."""
    bright = canvas.mean(0) > 1.0
    rows, cols = np.nonzero(bright.numpy())
    size = canvas.shape[-1]
    return cols.min() / size, rows.min() / size, (cols.max() + 1) / size, (rows.max() + 1) / size


@pytest.mark.parametrize("aspect", ["crop", "pad"])
@pytest.mark.parametrize("height,width", [(96, 160), (160, 96)])
def test_canvas_boxes_land_where_clip_pixels_draws_the_box(aspect, height, width):
    frame = np.zeros((1, height, width, 3), np.uint8)
    x1, y1, x2, y2 = int(0.3 * width), int(0.4 * height), int(0.62 * width), int(0.7 * height)
    frame[0, y1:y2, x1:x2] = 255
    canvas = clip_pixels(frame, 64, aspect)[0]
    box = torch.tensor([[[[(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]]]])
    mapped = canvas_boxes(box, torch.tensor([[width, height]]), 64, aspect)[0, 0, 0].tolist()
    assert mapped == pytest.approx(_drawn_extent(canvas), abs=2.5 / 64)  # bicubic resampling blurs ~1-2 px


def test_token_cells_tile_the_image_in_row_major_order():
    cells = token_cells(8, 4, 4)
    assert cells.shape == (16, 4)
    assert cells[0].tolist() == [0.0, 0.0, 0.25, 0.25]
    assert cells[1].tolist() == [0.25, 0.0, 0.5, 0.25]  # next column first
    assert cells[4].tolist() == [0.0, 0.25, 0.25, 0.5]
    assert float(((cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])).sum()) == pytest.approx(1.0)


def _targets(boxes_xyxy, present, phrase_mask=None, pool=(2, 2, 2), frames=4):
    """Targets on a square 64-px frame (no crop, no pad): boxes given as xyxy fractions per (frame, phrase)."""
    xyxy = torch.tensor(boxes_xyxy, dtype=torch.float32)
    cxcywh = torch.cat([(xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]], dim=-1)
    phrases = xyxy.shape[1]
    mask = torch.ones(1, phrases, dtype=torch.bool) if phrase_mask is None else torch.tensor([phrase_mask])
    return video_token_targets(
        cxcywh.expand(frames, -1, -1)[None], torch.tensor(present)[None], mask, torch.tensor([[64, 64]]), pool, 8, 64, "crop"
    )[0]


def test_targets_mark_the_cells_an_object_fills_in_its_frames_only():
    # a box filling the top-left quarter, present on frames 0-1 (temporal bin 0) only
    targets = _targets([[[0.0, 0.0, 0.5, 0.5]]], [[True], [True], [False], [False]])
    assert targets.tolist() == [1, 0, 0, 0, 0, 0, 0, 0]


def test_a_small_object_marks_the_cell_holding_most_of_it():
    # 0.1 x 0.1 box straddling the vertical cell border, 70 % of it in the right-hand cell
    targets = _targets([[[0.47, 0.1, 0.57, 0.2]]], [[True]] * 4)
    assert targets.tolist() == [0, 1, 0, 0] * 2


def test_a_box_barely_touching_a_large_cell_does_not_mark_it():
    targets = _targets([[[0.0, 0.0, 0.55, 0.5]]], [[True]] * 4)  # 0.05 of the 0.5-wide right cell: 10 %
    assert targets.tolist() == [1, 0, 0, 0] * 2


def test_padded_phrases_and_absent_objects_mark_nothing():
    box = [[0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]]
    targets = _targets([box], [[False, True]] * 4, phrase_mask=[True, False])
    assert targets.sum().item() == 0


@pytest.fixture(scope="module")
def selecting_model() -> GroveModel:
    torch.manual_seed(0)
    return GroveModel.from_config(GroveConfig.tiny(video_token_selection="objectness"))


def test_selection_loss_trains_the_selector_and_the_video_path(selecting_model):
    frames, caption, phrases, boxes = make_clip()
    processor = selecting_model.processor
    batch = processor.collate([processor(frames, caption, phrases, boxes=boxes)])
    out = selecting_model(batch)
    assert "vobj" in out.losses and out.losses["vobj"].item() > 0
    selecting_model.zero_grad()
    out.loss.backward()
    assert selecting_model.video_selector.linear.weight.grad.abs().sum() > 0
    assert selecting_model.vl_projector[0].weight.grad.abs().sum() > 0
    assert selecting_model.video_token_targets(batch).sum() > 0  # the clip's boxes mark some tokens


def test_hidden_video_tokens_do_not_reach_the_caption(selecting_model):
    frames, caption, phrases, boxes = make_clip()
    processor = selecting_model.processor
    batch = processor.collate([processor(frames, caption, phrases, boxes=boxes)])
    embed = selecting_model.llm.get_input_embeddings()
    video = selecting_model.encode_video(batch["global_pixels"]).detach()
    keep = torch.zeros(video.shape[:2], dtype=torch.long)
    keep[:, ::3] = 1

    def logits(tokens):
        expanded = expand_video_tokens(batch["input_ids"], tokens, embed, batch["attention_mask"], video_mask=keep)
        with torch.no_grad():
            return selecting_model.llm(inputs_embeds=expanded.inputs_embeds, attention_mask=expanded.attention_mask).logits

    changed = video.clone()
    changed[keep == 0] += 5.0
    reference = logits(video)
    text = slice(video.shape[1] + 40, None)  # positions after the video tokens
    assert torch.allclose(logits(changed)[:, text], reference[:, text], atol=1e-5)
    changed[keep == 1] += 5.0
    assert not torch.allclose(logits(changed)[:, text], reference[:, text], atol=1e-3)


def test_generation_and_grounding_use_the_selection(selecting_model):
    frames, _, _, _ = make_clip()
    sample = selecting_model.processor(frames, "a red circle moves left.", ["a red circle"], boxes=make_clip()[3][:, :1])
    text = selecting_model.generate(sample["global_pixels"], max_new_tokens=4)
    assert isinstance(text, str)
    result = selecting_model.ground(sample["global_pixels"], sample["grounding_pixels"], "<p> a red circle </p> [DET].")
    assert result.boxes.shape == (8, 1, 4)


def test_paper_freezing_trains_the_selector():
    config = GroveConfig.tiny(video_token_selection="objectness", freezing="paper")
    model = GroveModel(config, tokenizer=None)
    assert model.video_selector.linear.weight.requires_grad
    assert not model.llm.model.layers[0].self_attn.q_proj.weight.requires_grad


def test_all_tokens_is_the_paper_default():
    assert GroveConfig.paper().video_token_selection == "all"
    assert GroveModel(GroveConfig.tiny(video_token_selection="all"), tokenizer=None).video_selector is None
    with pytest.raises(ValueError, match="video_token_selection"):
        GroveConfig.tiny(video_token_selection="some")
