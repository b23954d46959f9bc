"""Object-centric video tokens for a randomly initialised captioner (`video_token_selection="objectness"`).

Not in the paper. GROVE feeds all N pooled CLIP tokens to a pre-trained LLM, which already knows how to
find the few tokens that show objects. A randomly initialised tiny LLM does not learn that search at
batch 1 in a few thousand steps: with all 128 tokens its captions stay the language prior (frame-swap
CE gain ~0.01 nats/token), while the same LLM reads the objects at once when the background tokens are
absent (issue 4 notes). So a linear head (heads.ObjectnessHead) scores each projected video token as object / background,
trained with BCE against the ground-truth boxes of the caption's phrases (which every GROVE training
clip has), and the LLM's attention mask hides the tokens it scores as background, in training
and at inference alike, so that the captioner sees the same selection in both.

Token geometry follows `GlobalVideoEncoder`: the CLIP patch grid of the square global image, pooled
by AdaptiveAvgPool3d to (t, h, w); a token's cell is the union of the patches in its bin, and its
frames those of its temporal bin. Boxes are mapped onto the global image as `clip_pixels` maps the
frame ("crop": shortest side to the size, centre crop; "pad": longest side, centred).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grove.model.processor import clip_geometry


def adaptive_bins(length: int, bins: int) -> list[tuple[int, int]]:
    """[start, end) of each AdaptiveAvgPool bin over `length` cells (PyTorch's floor / ceil rule)."""
    return [((i * length) // bins, -((-(i + 1) * length) // bins)) for i in range(bins)]


def canvas_boxes(boxes: torch.Tensor, original_sizes: torch.Tensor, size: int, aspect: str) -> torch.Tensor:
    """Normalised cxcywh boxes of the original frame (B, T, P, 4) -> xyxy as fractions of the square
    global image of `size` pixels. original_sizes (B, 2) = (width, height)."""
    x1y1 = boxes[..., :2] - boxes[..., 2:] / 2
    x2y2 = boxes[..., :2] + boxes[..., 2:] / 2
    scales, offsets = [], []
    for width, height in original_sizes.tolist():
        (new_h, new_w), (top, left) = clip_geometry(height, width, size, aspect)
        scales.append((new_w, new_h))
        offsets.append((left, top))
    scale = torch.tensor(scales, dtype=boxes.dtype, device=boxes.device).view(-1, 1, 1, 2)
    offset = torch.tensor(offsets, dtype=boxes.dtype, device=boxes.device).view(-1, 1, 1, 2)
    corners = torch.cat([x1y1 * scale + offset, x2y2 * scale + offset], dim=-1) / size
    return corners.clamp(0.0, 1.0)


def token_cells(grid: int, pool_h: int, pool_w: int) -> torch.Tensor:
    """xyxy fraction of the global image covered by each pooled token, (pool_h * pool_w, 4), row-major."""
    rows, cols = adaptive_bins(grid, pool_h), adaptive_bins(grid, pool_w)
    return torch.tensor([[c0 / grid, r0 / grid, c1 / grid, r1 / grid] for r0, r1 in rows for c0, c1 in cols])


def video_token_targets(
    gt_boxes: torch.Tensor,
    gt_present: torch.Tensor,
    phrase_mask: torch.Tensor,
    original_sizes: torch.Tensor,
    video_pool: tuple[int, int, int],
    patch_grid: int,
    image_size: int,
    aspect: str,
    min_overlap: float = 0.5,
) -> torch.Tensor:
    """(B, N) 1.0 where a token shows a phrase's object, in the pooled token order (t, h, w).

    A token is an object token when, in some frame of its temporal bin, a present phrase's box covers
    at least `min_overlap` of the smaller of the token's cell and the box: a large object marks every
    cell it fills, a small one the cell(s) holding most of it."""
    boxes = canvas_boxes(gt_boxes, original_sizes, image_size, aspect)  # (B, T, P, 4)
    cells = token_cells(patch_grid, video_pool[1], video_pool[2]).to(boxes)  # (C, 4)
    b = boxes.unsqueeze(-2)  # (B, T, P, 1, 4)
    width = (torch.minimum(b[..., 2], cells[:, 2]) - torch.maximum(b[..., 0], cells[:, 0])).clamp(min=0)
    height = (torch.minimum(b[..., 3], cells[:, 3]) - torch.maximum(b[..., 1], cells[:, 1])).clamp(min=0)
    box_area = ((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])).clamp(min=0)
    cell_area = (cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])
    smaller = torch.minimum(box_area, cell_area)
    covered = (width * height >= min_overlap * smaller) & (smaller > 0)  # (B, T, P, C)
    present = (gt_present & phrase_mask[:, None, :]).unsqueeze(-1)
    per_frame = (covered & present).any(dim=2)  # (B, T, C)
    per_bin = [per_frame[:, start:end].any(dim=1) for start, end in adaptive_bins(per_frame.shape[1], video_pool[0])]
    return torch.stack(per_bin, dim=1).flatten(1).to(gt_boxes.dtype)


def video_selection_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE over all video tokens of the batch."""
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
