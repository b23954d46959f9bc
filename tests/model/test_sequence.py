"""Video-token splicing and the [DET] query index arithmetic (grove_spec 1.3, 1.4)."""

import pytest
import torch

from grove.model.sequence import IGNORE_INDEX, det_query_positions, expand_video_tokens, gather_positions
from grove.model.tokenizer import VIDEO_TOKEN_INDEX

DET, P_END, PAD = 7, 6, 0
V = VIDEO_TOKEN_INDEX


def _glamm_det_mask(input_ids: torch.Tensor, num_video_tokens: int) -> torch.Tensor:
    """GLaMM / GROVE's `_create_det_token_mask`: input_ids[:, 1:] == DET, N-1 zeros in front, one at the end."""
    mask = input_ids[:, 1:] == DET
    front = torch.zeros(mask.shape[0], num_video_tokens - 1, dtype=torch.bool)
    back = torch.zeros(mask.shape[0], 1, dtype=torch.bool)
    return torch.cat([front, mask, back], dim=1)


def test_query_positions_are_the_states_before_each_det_after_expansion():
    # row 0: <s> a V b c </p> [DET] d </p> [DET] </s>; row 1: one phrase, right-padded
    ids = torch.tensor([[1, 2, V, 3, 4, P_END, DET, 5, P_END, DET, 9], [1, 2, V, 3, P_END, DET, 9, PAD, PAD, PAD, PAD]])
    num_video = 5
    embed = torch.nn.Embedding(10, 4)
    video = torch.randn(2, num_video, 4)
    expanded = expand_video_tokens(ids, video, embed, torch.tensor([[1] * 11, [1] * 7 + [0] * 4]))
    positions, valid = det_query_positions(expanded.input_ids, DET)
    assert valid.tolist() == [[True, True], [True, False]]
    # original [DET] at columns 6 and 9 of row 0 -> expanded 6 + N - 1 = 10 and 13; the query sits one before
    assert positions[0].tolist() == [9, 12]
    assert positions[1, 0].item() == 5 + num_video - 2
    # the query token is the one whose next token is [DET] (here `</p>`) ...
    assert expanded.input_ids[0, positions[0]].tolist() == [P_END, P_END]
    # ... and GLaMM's mask over the L - 1 + N hidden states marks exactly these positions
    glamm = _glamm_det_mask(ids, num_video)
    assert glamm.shape[1] == expanded.input_ids.shape[1]
    assert glamm[0].nonzero().flatten().tolist() == positions[0].tolist()
    assert glamm[1].nonzero().flatten().tolist() == positions[1, :1].tolist()


def test_video_embeddings_replace_the_placeholder_and_text_keeps_its_order():
    ids = torch.tensor([[1, 2, V, 3, 4], [1, V, 3, 4, PAD]])
    labels = torch.tensor([[-100, -100, -100, 3, 4], [-100, -100, 3, 4, -100]])
    embed = torch.nn.Embedding(10, 3)
    video = torch.randn(2, 4, 3)
    out = expand_video_tokens(ids, video, embed, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]), labels)
    assert out.inputs_embeds.shape == (2, 8, 3)
    torch.testing.assert_close(out.inputs_embeds[0, 2:6], video[0])
    torch.testing.assert_close(out.inputs_embeds[1, 1:5], video[1])
    torch.testing.assert_close(out.inputs_embeds[0, 6:], embed(torch.tensor([3, 4])))
    torch.testing.assert_close(out.inputs_embeds[1, :1], embed(torch.tensor([1])))
    assert out.input_ids[0].tolist() == [1, 2, V, V, V, V, 3, 4]
    assert out.attention_mask[1].tolist() == [1, 1, 1, 1, 1, 1, 1, 0]
    assert out.labels[0].tolist() == [IGNORE_INDEX] * 6 + [3, 4]


def test_placeholder_slot_takes_no_gradient_into_the_embedding_table():
    ids = torch.tensor([[1, V, 3]])
    embed = torch.nn.Embedding(10, 3)
    out = expand_video_tokens(ids, torch.randn(1, 2, 3, requires_grad=True), embed)
    out.inputs_embeds.sum().backward()
    # the placeholder is looked up as id 0 (clamped); that row must stay untouched
    assert embed.weight.grad[0].abs().sum().item() == 0.0
    assert embed.weight.grad[1].abs().sum().item() > 0.0


def test_rows_need_exactly_one_placeholder():
    embed = torch.nn.Embedding(10, 3)
    with pytest.raises(ValueError, match="exactly one video placeholder"):
        expand_video_tokens(torch.tensor([[1, 2, 3]]), torch.randn(1, 2, 3), embed)
    with pytest.raises(ValueError, match="exactly one video placeholder"):
        expand_video_tokens(torch.tensor([[V, 2, V]]), torch.randn(1, 2, 3), embed)


def test_gather_positions():
    hidden = torch.arange(24.0).reshape(2, 4, 3)
    out = gather_positions(hidden, torch.tensor([[3, 0], [1, 1]]))
    assert out[0, 0].tolist() == hidden[0, 3].tolist() and out[1, 1].tolist() == hidden[1, 1].tolist()


def test_phrase_means_average_each_spans_tokens_in_order():
    from grove.model.sequence import phrase_means

    P_START = 5
    # "x <p> a b </p> [DET] y <p> c </p> [DET] pad" ; a third, unclosed <p> beyond the query count is ignored
    ids = torch.tensor([[9, P_START, 11, 12, P_END, DET, 9, P_START, 13, P_END, DET, P_START, 14, PAD]])
    hidden = torch.arange(ids.shape[1], dtype=torch.float32)[None, :, None].repeat(1, 1, 2)
    means = phrase_means(hidden, ids, P_START, P_END, count=2)
    assert means.shape == (1, 2, 2)
    assert means[0, :, 0].tolist() == [2.5, 8.0]  # tokens 2-3, then token 8
    missing = phrase_means(hidden, torch.tensor([[9, 9, DET] + [PAD] * 11]), P_START, P_END, count=1)
    assert missing.abs().sum() == 0


def test_phrase_pooling_gives_each_phrase_its_own_query(tiny_model):
    from tests.model.conftest import make_clip

    assert tiny_model.config.query_phrase_pooling
    frames, caption, phrases, boxes = make_clip()
    batch = tiny_model.processor.collate([tiny_model.processor(frames, caption, phrases, boxes=boxes)])
    with torch.no_grad():
        hidden, expanded, _ = tiny_model._llm_hidden(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["global_pixels"])
        pooled, _ = tiny_model._queries(hidden, expanded)
        ids = tiny_model.processor.ids
        positions, _ = det_query_positions(expanded.input_ids, ids.det)
        plain = tiny_model.lq_projector(gather_positions(hidden, positions))
    assert not torch.allclose(pooled, plain)
