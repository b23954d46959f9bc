"""GLaMM's grounded conversation generation (grove/model/glamm.py) on a tiny GLaMM-layout checkpoint.

The checkpoint is scripts/make_standin_glamm.py's: GLaMM's released layout (`pytorch_model.bin`, config.json,
GLaMM's tokenizer files) from the official module fixtures (tests/fixtures/official: real official key names and
weights, GROVE's adapters and heads left out, as GLaMM has none) and imported with
`grove weights import --from glamm --grounding-size 64` (the tiny SAM's own size, as 1024 is GLaMM's).
The helpers here also serve tests/annotation/test_glamm.py: `train_gcg` teaches such a model to write GCG
answers (teacher-forced cross-entropy on answer tokens; a randomly initialised LLM never writes
`<p> ... </p> [SEG]` by itself), `export_glamm_layout` writes a fine-tuned model back in GLaMM's layout
through the import report.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from grove.model.sequence import det_query_positions, gather_positions
from grove.model.glamm import (GCG_INSTRUCTION, GlammGcg, GlammPreprocessor, _SpecialIds, gcg_caption, gcg_prompt, mask_box,
                               parse_segments)
from grove.weights.importer import WeightsImportError, import_checkpoint, native_grounding_size

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STANDIN_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_standin_glamm.py"
SAM_SIZE = 64  # the sam_encoder fixture: 32 x 32 patches of 2 px
Box = tuple[float, float, float, float]


def _standin_script():
    spec = importlib.util.spec_from_file_location("make_standin_glamm", STANDIN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- a tiny GLaMM checkpoint
def write_tiny_glamm(folder: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """A GLaMM checkpoint in its released layout (scripts/make_standin_glamm.py): the official fixtures'
    tensors, or `state`."""
    return _standin_script().write_glamm_layout(folder, state)


def import_tiny_glamm(raw: Path, out: Path) -> Path:
    import_checkpoint("glamm", raw, out, decoder_heads=2, grounding_size=native_grounding_size(raw), hash_sources=False)
    return out


def load_gcg(folder: Path) -> GlammGcg:
    return GlammGcg.from_checkpoint(folder, device="cpu", dtype="float32")


# ---------------------------------------------------------------------------- fine-tuning and export
def box_targets(boxes: Sequence[Box], resized: tuple[int, int], original: tuple[int, int], canvas: int, side: int) -> torch.Tensor:
    """Filled boxes (frame pixels) on the low-resolution mask grid (side x side cells over the SAM canvas)."""
    scale_y, scale_x = resized[0] / original[0], resized[1] / original[1]
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) * canvas / side
    out = torch.zeros(len(boxes), side, side)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        inside_x = (centres >= x1 * scale_x) & (centres < x2 * scale_x)
        inside_y = (centres >= y1 * scale_y) & (centres < y2 * scale_y)
        out[i] = (inside_y[:, None] & inside_x[None, :]).float()
    return out


def train_gcg(gcg: GlammGcg, frames: Sequence[np.ndarray], answers: Sequence[str], boxes: Sequence[Sequence[Box]],
              steps: int = 60, mask_steps: int = 150, batch: int = 4, lr: float = 5e-3, mask_lr: float = 1e-2,
              seed: int = 0) -> tuple[list[float], list[float]]:
    """Fine-tune on GCG answers in two phases; returns both loss curves.

    1. The LLM and the VL projector learn to write the answers: teacher-forced cross-entropy on the answer
       tokens and `</s>` (`steps` steps of `batch` frames).
    2. text_hidden_fcs and SAM's mask decoder learn the masks (`mask_steps` steps of `batch` frames): dice
       (weight 2) and BCE (0.5) of each [SEG]'s low-resolution mask against its object's filled box (the j-th
       [SEG] of an answer grounds boxes[j]), on the [SEG] states of the teacher-forced answers and the frames'
       SAM embeddings, both computed once (SAM's image encoder and the LLM stay as they are). GLaMM weighs
       BCE 2, dice 0.5; dice first keeps small objects from collapsing into empty masks in so few steps."""
    model = gcg.model
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    inputs = gcg.preprocessor(list(frames))
    sequences = [gcg.prompt_ids + gcg.answer_ids(a) + [gcg.special.eos] for a in answers]
    image_tokens = model.global_encoder.grid ** 2  # `<image>` (one id) becomes this many positions
    start = len(gcg.prompt_ids) - 1 + image_tokens  # the first answer token's position

    def draw() -> list[int]:
        return rng.choice(len(frames), size=min(batch, len(frames)), replace=False).tolist()

    language = [p for module in (model.llm, model.vl_projector) for p in module.parameters()]
    for p in language:
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(language, lr=lr, foreach=True)
    text_losses = []
    for _ in range(steps):
        rows = draw()
        hidden, expanded = gcg.llm_hidden(inputs.clip_pixels[rows], [sequences[r] for r in rows])
        lengths = torch.tensor([len(sequences[r]) - 1 + image_tokens for r in rows])
        positions = torch.arange(expanded.shape[1] - 1)
        supervised = (positions[None, :] >= start - 1) & (positions[None, :] < lengths[:, None] - 1)
        loss = torch.nn.functional.cross_entropy(model.llm.lm_head(hidden[:, :-1][supervised]), expanded[:, 1:][supervised])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        text_losses.append(float(loss.detach()))
    model.requires_grad_(False)

    with torch.no_grad():
        features = gcg.encode_grounding(inputs.sam_pixels)
        hidden, expanded = gcg.llm_hidden(inputs.clip_pixels, sequences)
        positions, valid = det_query_positions(expanded, gcg.special.seg)
        states = gather_positions(hidden, positions)  # (frames, Q, D); valid (frames, Q)
    side = 4 * features.shape[-1]
    targets = [box_targets(b, inputs.resized_sizes[i], inputs.original_sizes[i], gcg.image_size, side)[: int(valid[i].sum())]
               for i, b in enumerate(boxes)]
    grounding = [p for module in (model.lq_projector, model.box_decoder.mask_decoder) for p in module.parameters()]
    for p in grounding:
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(grounding, lr=mask_lr, foreach=True)
    mask_losses = []
    for _ in range(mask_steps):
        rows = draw()
        owner = torch.arange(len(rows))[:, None].expand(-1, valid.shape[1])[valid[rows]]
        masks = gcg.decode_masks(features[rows], model.lq_projector(states[rows][valid[rows]]), owner)
        target = torch.cat([targets[r] for r in rows])
        bce = torch.nn.functional.binary_cross_entropy_with_logits(masks, target)
        probabilities, flat = masks.sigmoid().flatten(1), target.flatten(1)
        dice = 1 - (2 * (probabilities * flat).sum(-1) + 1) / (probabilities.sum(-1) + flat.sum(-1) + 1)
        loss = 2.0 * dice.mean() + 0.5 * bce
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        mask_losses.append(float(loss.detach()))
    model.requires_grad_(False)
    model.eval()
    return text_losses, mask_losses


def export_glamm_layout(gcg: GlammGcg, imported: Path, raw: Path, out: Path) -> Path:
    """Write the model's weights back in GLaMM's layout: every official tensor the import mapped comes from
    its project tensor (vocabulary rows cut back to GLaMM's), the dropped ones stay as they were."""
    report = json.loads((imported / "import_report.json").read_text())
    source = torch.load(raw / "pytorch_model.bin", weights_only=True)
    ours = gcg.model.state_dict()
    for item in report["mapped"]:
        tensor = ours[item["target"]].detach().clone()
        if item["transform"] == "extend_vocab":
            tensor = tensor[: source[item["source"]].shape[0]]
        source[item["source"]] = tensor.to(source[item["source"]].dtype)
    write_tiny_glamm(out, source)
    return out


def shapes_image(height: int, width: int, boxes: Sequence[Box], seed: int) -> np.ndarray:
    """A grey noisy frame with filled coloured rectangles."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(100, 140, (height, width, 3), dtype=np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        frame[int(y1):int(y2), int(x1):int(x2)] = ((230, 40, 40), (40, 40, 230), (40, 200, 40))[k % 3]
    return frame


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def raw_glamm(tmp_path_factory) -> Path:
    return write_tiny_glamm(tmp_path_factory.mktemp("glamm") / "GLaMM-tiny")


@pytest.fixture(scope="module")
def imported_glamm(raw_glamm, tmp_path_factory) -> Path:
    return import_tiny_glamm(raw_glamm, tmp_path_factory.mktemp("imported") / "glamm")


@pytest.fixture(scope="module")
def gcg(imported_glamm) -> GlammGcg:
    return load_gcg(imported_glamm)


# ---------------------------------------------------------------------------- import at SAM's own size
def test_the_import_keeps_sam_at_its_own_resolution_on_request(raw_glamm, imported_glamm, tmp_path):
    assert native_grounding_size(raw_glamm) == SAM_SIZE
    report = json.loads((imported_glamm / "import_report.json").read_text())
    transforms = {m["target"]: m["transform"] for m in report["mapped"]}
    assert transforms["grounding_encoder.vision.pos_embed"] == "copy"
    assert transforms["grounding_encoder.vision.layers.1.attn.rel_pos_h"] == "copy"
    assert json.loads((imported_glamm / "config.json").read_text())["grounding_image_size"] == SAM_SIZE
    from orchestration.cli import app

    # the CLI flag, and the default (GROVE's 512 px, interpolated as the official train.py does)
    result = CliRunner().invoke(app, ["weights", "import", str(raw_glamm), "--from", "glamm", "--out", str(tmp_path / "a"),
                                      "--decoder-heads", "2", "--grounding-size", "128", "--no-hash"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "config.json").read_text())["grounding_image_size"] == 128
    default = import_checkpoint("glamm", raw_glamm, tmp_path / "b", decoder_heads=2, hash_sources=False)
    assert {m["transform"] for m in default.mapped if m["target"] == "grounding_encoder.vision.pos_embed"} == {"resize_abs_pos"}
    assert json.loads((tmp_path / "b" / "config.json").read_text())["grounding_image_size"] == 512
    with pytest.raises(WeightsImportError, match="not a multiple"):
        import_checkpoint("glamm", raw_glamm, tmp_path / "c", decoder_heads=2, grounding_size=65, hash_sources=False)


# ---------------------------------------------------------------------------- pieces
def test_preprocessing_is_glamms_clip_processor_and_resize_longest_side():
    from PIL import Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    frame = np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    inputs = GlammPreprocessor(336, 1024)([frame])
    assert inputs.clip_pixels.shape == (1, 3, 336, 336) and inputs.sam_pixels.shape == (1, 3, 1024, 1024)
    assert inputs.resized_sizes == [(576, 1024)] and inputs.original_sizes == [(360, 640)]
    reference = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    torch.testing.assert_close(inputs.clip_pixels[0], reference(images=frame, return_tensors="pt")["pixel_values"][0].float())
    resized = np.asarray(Image.fromarray(frame).resize((1024, 576), Image.BILINEAR)).astype(np.float32)
    expected = (resized - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    torch.testing.assert_close(inputs.sam_pixels[0, :, :576].permute(1, 2, 0), torch.from_numpy(expected).float())
    assert float(inputs.sam_pixels[0, :, 576:].abs().max()) == 0.0  # zero padding below the frame


# tokenizer_image_token's ids of the GCG prompt with the fixture tokenizer (glamm_oldformat) on transformers
# 4.28.0 (GLaMM's pin), slow LlamaTokenizer: recorded once in a throwaway environment
GLAMM_PROMPT_IDS_TRANSFORMERS_4_28 = [
    1, 415, 760, 845, 265, 846, 586, 457, 307, 858, 861, 588, 31932, 577, 588, 838, 847, 31934, 853, 31934, 457, 842,
    844, 400, 382, 586, 31979, 31916, 857, 31932, 827, 31955, 577, 32000, -200, 32001, 855, 307, 854, 423, 382, 3531,
    24162, 31932, 13, 31950, 675, 31922, 823, 841, 765, 419, 265, 853, 859, 423, 382, 31908, 342, 951, 31935, 840, 849,
    648, 860, 1595, 1595, 2097, 31926, 1786, 1065, 269, 2032, 31928, 31916, 640, 382, 862, 839, 423, 382, 587, 31932,
    856, 31955,
]


def test_the_prompt_and_answers_tokenise_as_glamms_transformers_does(gcg):
    """Whitespace around GLaMM's added tokens is dropped (transformers 4.28), not kept as "▁" (4.3x+)."""
    assert gcg.prompt_ids == GLAMM_PROMPT_IDS_TRANSFORMERS_4_28
    assert gcg.answer_ids(" <p> a man </p> [SEG]") == [32005, 265, 1165, 32006, 32004]  # 4.28's ids as well


def test_the_prompt_is_glamms_gcg_conversation(gcg):
    assert "interleaved     segmentation" in GCG_INSTRUCTION  # eval/gcg/infer.py's line continuation: 5 spaces
    prompt = gcg_prompt()
    assert prompt.startswith("A chat between a curious human") and prompt.endswith("of the answer. ASSISTANT:")
    assert " USER: The <im_start><image><im_end> provides an overview of the picture.\nCould you" in prompt
    ids = gcg.prompt_ids
    image = ids.index(-200)
    assert ids[0] == 1 and ids.count(-200) == 1 and ids[image - 1] == 32000 and ids[image + 1] == 32001
    assert gcg.special.seg == 32004 and (gcg.special.p_start, gcg.special.p_end) == (32005, 32006)
    decoded = gcg.model.processor.tokenizer.decode(ids[1:image] + ids[image + 1:])
    assert " ".join(decoded.split()) == " ".join(prompt.replace(" <im_start><image>", "<im_start>").split())


def test_mask_boxes_are_tight_pixel_edge_bounds_and_empty_masks_have_none():
    mask = torch.zeros(6, 8, dtype=torch.bool)
    assert mask_box(mask) is None
    mask[2, 3] = True
    assert mask_box(mask) == (3.0, 2.0, 4.0, 3.0)  # one pixel: a 1 x 1 box
    mask[4, 6] = True
    assert mask_box(mask) == (3.0, 2.0, 7.0, 5.0)


def test_each_seg_grounds_the_latest_free_phrase_before_it():
    special = _SpecialIds(seg=9, p_start=7, p_end=8, im_start=5, im_end=6, bos=1, eos=2, pad=0)
    words = {10: "a", 11: "man", 12: "knife", 13: "board", 14: "cuts"}
    decode = lambda ids: " ".join(words[i] for i in ids)  # noqa: E731
    # <p> a man </p> [SEG] cuts <p> knife </p> <p> board </p> [SEG] [SEG] <p> a
    ids = [7, 10, 11, 8, 9, 14, 7, 12, 8, 7, 13, 8, 9, 9, 7, 10]
    phrases, segs = parse_segments(ids, special, decode)
    assert phrases == ["a man", "knife", "board"]
    assert segs == ["a man", "board", None]  # "knife" has no [SEG]; the last [SEG] finds no free phrase


def test_the_caption_is_cleaned_as_glamms_infer_py():
    text = "<p> A man </p> [SEG] is  cutting <p> a tomato </p> [SEG].\n</s>"
    assert gcg_caption(text) == "A man is cutting a tomato ."


# ---------------------------------------------------------------------------- inference
def test_cached_batched_generation_equals_teacher_forcing(gcg):
    """The [SEG] queries read during cached, batched generation are the teacher-forced states of the whole
    sequence (what GLaMM reads from its uncached last step), and a frame's answer does not depend on its batch."""
    frames = [shapes_image(48, 64, [(8, 8, 30, 30)], 0), shapes_image(40, 72, [(30, 5, 60, 35)], 1)]
    prefix = gcg.answer_ids("<p> a red box </p> [SEG] is next to <p> a blue box </p> [SEG] and")
    inputs = gcg.preprocessor(frames)
    generated, states = gcg.generate(inputs.clip_pixels, max_new_tokens=6, answer_prefix=prefix)
    alone, alone_states = gcg.generate(inputs.clip_pixels[1:], max_new_tokens=6, answer_prefix=prefix)
    assert generated[1] == alone[0]
    torch.testing.assert_close(states[1], alone_states[0], rtol=0, atol=1e-5)
    for b in range(2):
        with torch.no_grad():
            hidden, expanded = gcg.llm_hidden(inputs.clip_pixels[b : b + 1], [gcg.prompt_ids + prefix + generated[b]])
            queries, valid = gcg.seg_queries(hidden, expanded)
        assert int(valid.sum()) == states[b].shape[0] >= 2
        torch.testing.assert_close(gcg.model.lq_projector(states[b]), queries[0], rtol=0, atol=1e-5)


def test_gcg_answers_have_masks_at_the_frame_size_and_their_boxes(gcg):
    frames = [shapes_image(48, 64, [(8, 8, 30, 30)], 0), shapes_image(30, 50, [], 1)]
    prefix = gcg.answer_ids("<p> a red box </p> [SEG] on <p> a table </p> [SEG]")
    answers = gcg(frames, max_new_tokens=3, answer_prefix=prefix, keep_masks=True)
    for frame, answer in zip(frames, answers):
        assert answer.phrases[:2] == ["a red box", "a table"] and len(answer.segments) >= 2
        assert answer.mask_logits.shape[1:] == frame.shape[:2] and answer.mask_logits.shape[0] == len(answer.segments)
        for segment, logits in zip(answer.segments, answer.mask_logits):
            assert torch.equal(segment.mask, logits > 0) and segment.box == mask_box(logits > 0)
        phrases, boxes = answer.grounded()
        assert len(phrases) == len(boxes) and all(0 <= x1 < x2 <= frame.shape[1] and 0 <= y1 < y2 <= frame.shape[0]
                                                  for x1, y1, x2, y2 in boxes)
        assert answer.caption.startswith("a red box on a table")


def test_fine_tuned_on_gcg_answers_the_model_answers_with_grounded_phrases(imported_glamm):
    """A few dozen steps of GCG fine-tuning (train_gcg) make greedy answers GCG answers: phrases, [SEG]s,
    masks, boxes. This is the stand-in the stage-1 tests use (a random LLM never writes `<p> ... </p> [SEG]`)."""
    gcg = load_gcg(imported_glamm)
    boxes = [[(4, 6, 26, 30), (36, 10, 60, 40)], [(30, 4, 58, 26)]]
    frames = [shapes_image(48, 64, b, i) for i, b in enumerate(boxes)]
    answers = ["<p> a red square </p> [SEG] is next to <p> a blue square </p> [SEG].", "<p> a red square </p> [SEG] is alone."]
    text_losses, mask_losses = train_gcg(gcg, frames, answers, boxes, batch=2)
    assert text_losses[-1] < 0.05 * text_losses[0] and mask_losses[-1] < 0.6 * mask_losses[0]
    results = gcg(frames, max_new_tokens=32)
    assert [r.answer_ids for r in results] == [gcg.answer_ids(a) + [gcg.special.eos] for a in answers]
    # GLaMM's tokenisation: after "[SEG]" a "." starts a new SentencePiece piece, "▁.", decoded " ."
    assert [r.caption for r in results] == ["a red square is next to a blue square .", "a red square is alone."]
    assert [r.grounded()[0] for r in results] == [["a red square", "a blue square"], ["a red square"]]
    for result, frame_boxes in zip(results, boxes):  # each mask covers objects (a stand-in: not told apart)
        for bx1, by1, bx2, by2 in result.grounded()[1]:
            assert any(bx1 <= (x1 + x2) / 2 <= bx2 and by1 <= (y1 + y2) / 2 <= by2 for x1, y1, x2, y2 in frame_boxes)


def test_the_paper_shapes_on_the_meta_device():
    """GLaMM's real sizes (Vicuna-7B, CLIP ViT-L/14-336, SAM ViT-H at 1024 px): shapes only."""
    from grove.model import GroveConfig, GroveModel
    from grove.model.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(1024)
    tokenizer.add_tokens(["<im_start>", "<im_end>", "[SEG]"], special_tokens=True)
    config = GroveConfig.paper(grounding_image_size=1024, llm_source=None, clip_source=None, sam_source=None,
                               tokenizer_source="tiny-wordpiece", dtype="float32")
    with torch.device("meta"):
        gcg = GlammGcg(GroveModel(config, tokenizer))
        image_tokens = gcg.encode_images(torch.empty(2, 3, 336, 336))
        features = gcg.encode_grounding(torch.empty(2, 3, 1024, 1024))
        queries = gcg.model.lq_projector(torch.empty(3, 4096))
        masks = gcg.decode_masks(features, queries, torch.tensor([0, 0, 1]))
    assert gcg.image_size == 1024 and gcg.preprocessor.clip_size == 336
    assert image_tokens.shape == (2, 576, 4096) and features.shape == (2, 256, 64, 64)
    assert queries.shape == (3, 256) and masks.shape == (3, 256, 256)
