"""GroveProcessor: pixels against transformers' reference processors, the answer format, labels, batches."""

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessor, SamImageProcessor

from grove.model import GroveConfig
from grove.model.processor import (
    IGNORE_INDEX,
    INFERENCE_QUESTION,
    VIDEO_GROUNDING_QUESTIONS,
    AnswerFormatError,
    GroveProcessor,
    clip_pixels,
    denormalize_boxes,
    normalize_boxes,
    parse_answer,
    sam_pixels,
    single_phrase_answer,
    tag_answer,
)
from grove.model.tokenizer import VIDEO_TOKEN_INDEX
from tests.model.conftest import make_clip


def _smooth_frames(seed: int = 0, size: tuple[int, int] = (96, 160)) -> np.ndarray:
    """Frames without pixel-level noise, so different resampling kernels agree closely."""
    rng = np.random.default_rng(seed)
    coarse = torch.tensor(rng.integers(0, 256, (2, 12, 20, 3)), dtype=torch.float32).permute(0, 3, 1, 2)
    fine = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear")
    return fine.permute(0, 2, 3, 1).numpy().astype(np.uint8)


def test_global_pixels_match_clip_image_processor():
    frames = _smooth_frames()
    reference = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    expected = reference(images=list(frames), return_tensors="pt")["pixel_values"]
    ours = clip_pixels(frames, 64)
    assert ours.shape == expected.shape == (2, 3, 64, 64)
    assert (ours - expected).abs().max().item() < 0.05


def test_padded_global_pixels_match_llava_expand2square():
    """aspect="pad": LLaVA-1.5 pads the frame to a square with CLIP's mean colour, then runs CLIP's processor."""
    # 100x160: the content band is rows 12..52 of 64 on both resampling grids
    frames = _smooth_frames(2, (100, 160))
    reference = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    fill = tuple(int(255 * m) for m in reference.image_mean)
    squares = []
    for frame in frames:
        square = np.empty((160, 160, 3), np.uint8)
        square[:] = fill
        square[30:130] = frame
        squares.append(square)
    expected = reference(images=squares, return_tensors="pt")["pixel_values"]
    ours = clip_pixels(frames, 64, aspect="pad")
    assert ours.shape == expected.shape == (2, 3, 64, 64)
    # the content band away from its resampled border, and the padding
    assert (ours[:, :, 14:50] - expected[:, :, 14:50]).abs().max().item() < 0.05
    assert ours[:, :, :12].abs().max().item() == 0.0 and expected[:, :, :11].abs().max().item() < 0.05  # fill rounded to uint8


def test_the_config_picks_the_global_aspect_and_rejects_unknown_ones():
    frames = _smooth_frames(3)
    for aspect in ("crop", "pad"):
        processor = GroveProcessor(GroveConfig.tiny(global_image_aspect=aspect))
        assert torch.equal(processor.pixels(frames)[0], clip_pixels(frames, 64, aspect=aspect))
    with pytest.raises(ValueError, match="global_image_aspect must be one of"):
        GroveConfig.tiny(global_image_aspect="stretch")


def test_grounding_pixels_match_sam_image_processor_resize_longest_side_and_pad():
    frames = _smooth_frames(1)
    reference = SamImageProcessor(size={"longest_edge": 96}, pad_size={"height": 96, "width": 96})
    out = reference(images=list(frames), return_tensors="pt")
    ours = sam_pixels(frames, 96)
    assert ours.shape == out["pixel_values"].shape == (2, 3, 96, 96)
    assert out["reshaped_input_sizes"][0].tolist() == [58, 96]
    assert (ours - out["pixel_values"]).abs().max().item() < 0.05
    assert ours[:, :, 58:].abs().max().item() == 0.0  # zero padding at the bottom


def test_frames_must_be_uint8_thwc():
    with pytest.raises(ValueError, match="uint8"):
        clip_pixels(np.zeros((2, 8, 8, 3), np.float32), 8)


def test_tagged_answer_from_tagged_caption_orders_phrases_by_appearance():
    answer = tag_answer(
        '"A woman is stirring something in a wok."',
        ["a wok", "a woman"],
        "<p>A woman</p> is stirring something in <p>a wok</p>.",
    )
    assert answer.text == "<p> a woman </p> [DET] is stirring something in <p> a wok </p> [DET]."
    assert answer.phrases == ("a woman", "a wok")
    assert answer.order == (1, 0)


def test_tagged_answer_without_tags_uses_whole_word_matches_and_skips_taken_spans():
    answer = tag_answer("a red ball hits a red ball stand", ["a red ball", "a red ball stand"])
    assert answer.text == "<p> a red ball </p> [DET] hits <p> a red ball stand </p> [DET]"
    only_tagged = tag_answer("", ["the cup"], "<p>The cup</p> falls.")
    assert only_tagged.text == "<p> the cup </p> [DET] falls."


def test_tagged_answer_errors_name_the_phrase():
    with pytest.raises(AnswerFormatError, match="a fork"):
        tag_answer("a knife cuts bread", ["a fork"])
    assert single_phrase_answer(" A man runs.\n").text == "<p> A man runs. </p> [DET]"  # infer_vidstg.py: strip() only


def test_parse_answer_follows_the_official_cleaning():
    parsed = parse_answer("<p> a red circle </p> [DET] moves left of <p> a cup </p> [DET].")
    assert parsed.phrases == ("a red circle", "a cup")
    assert parsed.caption == "a red circle moves left of a cup ."


def test_boxes_normalise_by_the_original_frame_size_and_back():
    boxes = np.array([[10.0, 20.0, 50.0, 60.0]])
    norm = normalize_boxes(boxes, 160, 96)
    np.testing.assert_allclose(norm, [[30 / 160, 40 / 96, 40 / 160, 40 / 96]], rtol=1e-6)
    np.testing.assert_allclose(denormalize_boxes(torch.tensor(norm), 160, 96).numpy(), boxes, rtol=1e-5)


def test_sample_labels_supervise_only_the_answer(tiny_model):
    processor = tiny_model.processor
    frames, caption, phrases, boxes = make_clip()
    sample = processor(frames, caption, phrases, boxes=boxes)
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    assert ids.count(VIDEO_TOKEN_INDEX) == 1
    prompt = processor.prompt_ids(INFERENCE_QUESTION)
    assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    answer = ids[len(prompt) :]
    assert labels[len(prompt) :] == answer and answer[-1] == processor.ids.eos
    assert answer.count(processor.ids.det) == 2
    assert processor.decode_answer(answer) == sample["answer"]
    # the answer lists "a red circle" first: its boxes (phrase index 1 in the input) come first
    assert sample["phrases"] == ["a red circle", "a blue square"]
    assert sample["gt_present"][:, 0].tolist() == [False, False, True, True, True, False, False, False]
    assert sample["gt_present"][:, 1].all()
    torch.testing.assert_close(sample["gt_boxes"][3, 0], torch.tensor([70 / 160, 40 / 96, 40 / 160, 40 / 96]))
    assert sample["gt_boxes"][0, 0].abs().sum() == 0


def test_training_questions_are_drawn_from_the_templates(tiny_model):
    processor = tiny_model.processor
    rng = np.random.default_rng(0)
    seen = {processor.question(rng=rng) for _ in range(40)}
    assert seen == set(VIDEO_GROUNDING_QUESTIONS)
    assert processor.question() == INFERENCE_QUESTION


def test_collate_pads_text_and_phrases(tiny_model):
    processor = tiny_model.processor
    frames, caption, phrases, boxes = make_clip()
    long = processor(frames, caption, phrases, boxes=boxes)
    short = processor(frames, "a blue square waits.", ["a blue square"], boxes=boxes[:, :1])
    batch = processor.collate([long, short])
    length = len(long["input_ids"])
    assert batch["input_ids"].shape == (2, length) and batch["global_pixels"].shape[:2] == (2, 8)
    assert batch["attention_mask"][1].sum().item() == len(short["input_ids"])
    assert (batch["input_ids"][1, len(short["input_ids"]) :] == processor.ids.pad).all()
    assert (batch["labels"][1, len(short["input_ids"]) :] == IGNORE_INDEX).all()
    assert batch["phrase_mask"].tolist() == [[True, True], [True, False]]
    assert batch["gt_boxes"].shape == (2, 8, 2, 4) and not batch["gt_present"][1, :, 1].any()
    assert batch["original_sizes"].tolist() == [[160, 96], [160, 96]]


def test_box_shape_errors_are_clear(tiny_model):
    frames, caption, phrases, boxes = make_clip()
    with pytest.raises(ValueError, match=r"boxes must be \(8, 2, 4\)"):
        tiny_model.processor(frames, caption, phrases, boxes=boxes[:4])
    with pytest.raises(AnswerFormatError, match="exceeds max_length"):
        tiny_model.processor(frames, caption * 60, phrases, boxes=boxes)
