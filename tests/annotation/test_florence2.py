"""Florence-2 backend with a tiny random-weight model built from configs (no download)."""

from pathlib import Path

import pytest

from annotation.florence2 import clean_caption, grounding_result
from annotation.records import ClipFailure, ClipFrames
from annotation.shards import load_catalog
from annotation.stage1 import Stage1Context, clip_requests, load_captioner


def make_tiny_florence2(path: Path) -> Path:
    import torch
    from transformers import (BartTokenizer, CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor)
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>"])}
    for char in bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
    vocab["<mask>"] = len(vocab)
    tokenizer = BartTokenizer(vocab=vocab, merges=[], extra_special_tokens={"image_token": "<image>"})
    tokenizer.add_tokens([f"<loc_{i}>" for i in range(1000)] + ["<od>", "</od>", "<poly>", "</poly>", "<sep>"])
    image_processor = CLIPImageProcessor(size={"height": 64, "width": 64}, do_center_crop=False,
                                         crop_size={"height": 64, "width": 64})
    image_processor.image_seq_length = 5  # (64 / 32)^2 spatial tokens + 1 temporal token
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer,
                                   post_processor_config={"pure_text": {}, "phrase_grounding": {}})
    config = Florence2Config(
        text_config=dict(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                         decoder_ffn_dim=64, max_position_embeddings=512),
        vision_config=dict(depths=[1, 1, 1, 1], embed_dim=[8, 16, 16, 32], num_heads=[1, 1, 1, 1],
                           num_groups=[1, 1, 1, 1], projection_dim=32, window_size=2),
        image_token_id=tokenizer.image_token_id,
    )
    torch.manual_seed(0)
    Florence2ForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_florence2(tmp_path_factory):
    return make_tiny_florence2(tmp_path_factory.mktemp("florence2"))


def test_tiny_florence2_captions_every_grid_frame_and_rejects_a_corrupt_video(synthetic, tiny_florence2):
    catalog = load_catalog(synthetic.catalog)
    context = Stage1Context(catalog.root, catalog.frame_objects, "pyav")
    captioner = load_captioner("florence2", context, {"model": str(tiny_florence2), "max_new_tokens": 8, "batch_size": 4})
    requests = [r for r in clip_requests(catalog.clips, catalog.video_root, frame_stride=2)
                if r.key in ("vid0000_0", "vid0005_0")]
    results = captioner.caption_clips(requests)
    assert isinstance(results[0], ClipFrames) and [f.frame_id for f in results[0].frames] == [0, 4, 8, 12, 16]
    for frame in results[0].frames:
        assert "<" not in frame.caption and len(frame.phrases) == len(frame.boxes)
        assert all(0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 48 for x1, y1, x2, y2 in frame.boxes)
    assert isinstance(results[1], ClipFailure) and "vid0005.mp4" in results[1].reason
    assert captioner.describe()["backend"] == "florence2"


def test_grounding_answers_are_parsed_rescaled_and_clamped(tiny_florence2):
    from transformers import Florence2Processor

    processor = Florence2Processor.from_pretrained(tiny_florence2)
    text = "<s>A man<loc_100><loc_200><loc_500><loc_999>a red cup<loc_0><loc_0><loc_250><loc_500>a dot<loc_3><loc_3><loc_4><loc_4></s>"
    parsed = processor.post_process_generation(text, task="<CAPTION_TO_PHRASE_GROUNDING>", image_size=(64, 64))
    phrases, boxes = grounding_result(parsed["<CAPTION_TO_PHRASE_GROUNDING>"], scale=(2.0, 0.75), size=(128, 48))
    assert phrases == ["a man", "a red cup"]  # "a dot" dequantises to an empty box: dropped
    assert boxes == [(12.0, 9.0, 64.0, 47.25), (0.0, 0.0, 32.0, 24.0)]
    assert clean_caption("<s>A red <loc_3>cup</s><pad>") == "A red cup"
