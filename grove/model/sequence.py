"""Index arithmetic of the LLM sequence: splicing the video tokens in, finding the [DET] queries.

Every conversation holds exactly one VIDEO_TOKEN_INDEX id; it becomes N video tokens, so each row
grows by the same N - 1 positions and right padding stays aligned. The query of the j-th [DET] is
the last-layer hidden state at the position just BEFORE it (the state whose next-token prediction
is [DET]); this equals GLaMM / GROVE's mask `input_ids[:, 1:] == DET` padded with N - 1 zeros in
front and one at the end, applied to the expanded hidden states (grove_spec 1.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grove.model.tokenizer import VIDEO_TOKEN_INDEX

IGNORE_INDEX = -100


@dataclass
class ExpandedInputs:
    inputs_embeds: torch.Tensor  # (B, L + N - 1, D)
    input_ids: torch.Tensor  # (B, L + N - 1), VIDEO_TOKEN_INDEX at the video positions
    attention_mask: torch.Tensor  # (B, L + N - 1)
    labels: torch.Tensor | None  # (B, L + N - 1), -100 at the video positions


def video_positions(input_ids: torch.Tensor) -> torch.Tensor:
    """Column of the single VIDEO_TOKEN_INDEX of each row; a clear error otherwise."""
    is_video = input_ids == VIDEO_TOKEN_INDEX
    counts = is_video.sum(dim=1)
    if not bool((counts == 1).all()):
        raise ValueError(f"each row of input_ids needs exactly one video placeholder ({VIDEO_TOKEN_INDEX}); got counts {counts.tolist()}")
    return is_video.int().argmax(dim=1)


def expand_positions(input_ids: torch.Tensor, num_video_tokens: int) -> torch.Tensor:
    """(B, L) new column of every original position: those after the placeholder shift by N - 1."""
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)
    after = columns[None, :] > video_positions(input_ids)[:, None]
    return columns[None, :] + after.long() * (num_video_tokens - 1)


def expand_video_tokens(
    input_ids: torch.Tensor,
    video_embeds: torch.Tensor,
    embed_tokens: torch.nn.Module,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    video_mask: torch.Tensor | None = None,
) -> ExpandedInputs:
    """Replace each row's placeholder by its N video embeddings (B, N, D); `video_mask` (B, N), where
    given, is the attention mask of the video tokens (0 hides a token from the LLM)."""
    batch, length = input_ids.shape
    num_video = video_embeds.shape[1]
    new_length = length + num_video - 1
    start = video_positions(input_ids)
    positions = expand_positions(input_ids, num_video)
    is_video = input_ids == VIDEO_TOKEN_INDEX
    # the placeholder's text slot is zeroed (its column is the first video column), so it gets no gradient
    text = embed_tokens(input_ids.clamp(min=0)) * (~is_video).unsqueeze(-1).to(video_embeds.dtype)
    dim = text.shape[-1]
    embeds = text.new_zeros(batch, new_length, dim).scatter(1, positions.unsqueeze(-1).expand(-1, -1, dim), text)
    video_columns = start[:, None] + torch.arange(num_video, device=input_ids.device)[None, :]
    embeds = embeds + text.new_zeros(batch, new_length, dim).scatter(
        1, video_columns.unsqueeze(-1).expand(-1, -1, dim), video_embeds.to(text.dtype)
    )

    def spread(values: torch.Tensor, video_value: int) -> torch.Tensor:
        out = values.new_full((batch, new_length), video_value)
        return out.scatter(1, positions, values).scatter(1, video_columns, video_value)

    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    expanded_mask = spread(mask, 1)
    if video_mask is not None:
        expanded_mask = expanded_mask.scatter(1, video_columns, video_mask.to(expanded_mask.dtype))
    return ExpandedInputs(
        inputs_embeds=embeds,
        input_ids=spread(input_ids, VIDEO_TOKEN_INDEX),
        attention_mask=expanded_mask,
        labels=spread(labels, IGNORE_INDEX) if labels is not None else None,
    )


def det_query_positions(input_ids: torch.Tensor, det_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) positions just before each [DET] (in order) and their validity mask (B, P)."""
    is_det = input_ids[:, 1:] == det_token_id  # column p: the token at p + 1 is [DET]
    counts = is_det.sum(dim=1)
    max_count = int(counts.max()) if counts.numel() else 0
    positions = torch.zeros((input_ids.shape[0], max_count), dtype=torch.long, device=input_ids.device)
    if max_count:
        rank = (is_det.cumsum(dim=1) - 1).clamp(min=0)
        columns = torch.arange(is_det.shape[1], device=input_ids.device).expand_as(is_det)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(is_det)
        positions[rows[is_det], rank[is_det]] = columns[is_det]
    valid = torch.arange(max_count, device=input_ids.device)[None, :] < counts[:, None]
    return positions, valid


def phrase_means(hidden: torch.Tensor, input_ids: torch.Tensor, p_start_id: int, p_end_id: int, count: int) -> torch.Tensor:
    """Mean hidden state of the tokens inside each `<p> ... </p>` span, in order: (B, L, D) -> (B, count, D).

    Span j is the j-th `<p>`; its tokens lie after it and before the next `</p>`. A missing span
    gives zeros. (The j-th [DET] follows the j-th span's `</p>`, so span j pairs with query j.)
    """
    opened = (input_ids == p_start_id).cumsum(dim=1)
    closed = (input_ids == p_end_id).cumsum(dim=1)
    inside = (opened > closed) & (input_ids != p_start_id) & (opened <= count)
    span = (opened - 1).clamp(min=0, max=max(count - 1, 0))
    weights = torch.zeros(input_ids.shape[0], max(count, 1), input_ids.shape[1], dtype=hidden.dtype, device=hidden.device)
    weights.scatter_(1, span[:, None, :], inside[:, None, :].to(hidden.dtype))
    weights = weights[:, :count] / weights[:, :count].sum(dim=-1, keepdim=True).clamp(min=1)
    return weights @ hidden


def gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """hidden (B, L, D), positions (B, P) -> (B, P, D)."""
    return hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
