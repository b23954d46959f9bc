"""The mask box readout (config.box_readout="mask"): SAM's single-mask path, mask -> box, the mask loss."""

import numpy as np
import pytest
import torch

from grove.model import GroveConfig, GroveModel
from grove.model.box_decoder import BoxDecoder, PixelFeatures, content_extent, mask_to_box
from grove.model.losses import box_mask_targets, mask_loss
from grove.model.processor import sam_pixels

from .conftest import make_clip, tiny_sam


def test_mask_path_equals_sam_single_mask_output_for_the_same_mask_token():
    """Upscaling and hypernetwork 0 are SamMaskDecoder's; ours adds the query to the mask token (a residual)."""
    sam = tiny_sam()
    decoder = BoxDecoder(sam.mask_decoder, sam.prompt_encoder.no_mask_embed, sam.shared_image_embedding,
                         feature_size=8, readout="mask")
    features, queries = torch.randn(3, 16, 8, 8), torch.randn(3, 2, 16)
    captured = {}
    hook = sam.mask_decoder.transformer.register_forward_hook(lambda module, args, out: captured.update(out=out))
    with torch.no_grad():
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(3, -1, 8, 8)
        sam_masks = sam.mask_decoder(
            image_embeddings=features,
            image_positional_embeddings=sam.get_image_wide_positional_embeddings().repeat(3, 1, 1, 1),
            sparse_prompt_embeddings=queries[:, :, None, :],
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )[0]
        tokens, image_out = captured["out"][:2]
        ours = decoder._masks(image_out, tokens[:, :, decoder.mask_token_index, :], None)
        output = decoder(features, queries)
    hook.remove()
    assert sam_masks.shape == (3, 2, 1, 32, 32)
    torch.testing.assert_close(ours, sam_masks[:, :, 0])
    assert output.masks.shape == (3, 2, 32, 32)
    assert not torch.allclose(output.masks, ours)  # the query residual reaches the mask
    assert "mask_decoder.upscale_conv1." not in decoder.unused_parameter_prefixes()


def test_content_extent_finds_the_unpadded_part_of_the_sam_canvas():
    frames = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    torch.testing.assert_close(content_extent(sam_pixels(frames, 64)), torch.tensor([[1.0, 0.75]] * 2))
    tall = np.full((1, 64, 16, 3), 255, np.uint8)
    torch.testing.assert_close(content_extent(sam_pixels(tall, 64)), torch.tensor([[0.25, 1.0]]))
    torch.testing.assert_close(content_extent(torch.zeros(1, 3, 8, 8)), torch.ones(1, 2))


@pytest.mark.parametrize("extent", [(1.0, 1.0), (1.0, 0.75), (0.5, 1.0)])
def test_a_mask_filling_a_box_reads_back_as_that_box(extent):
    side = 32
    extent_t = torch.tensor([extent])
    box = torch.tensor([[0.25, 0.5, 0.375, 0.25]])  # cxcywh on cell boundaries of the frame
    cover, inside = box_mask_targets(box, extent_t, side)
    logits = torch.where(cover > 0.5, 20.0, -20.0)[:, None]  # (1, 1, side, side)
    read = mask_to_box(logits, extent_t)[0, 0]
    torch.testing.assert_close(read, box[0], atol=2e-3, rtol=0)
    # the rasterised box covers its area in cells of the frame
    cells = side * side * extent[0] * extent[1]
    assert cover.sum().item() == pytest.approx(0.375 * 0.25 * cells, rel=1e-5)
    assert inside.sum().item() == pytest.approx(cells)


def test_one_hot_mask_is_one_cell_wide_and_padding_is_ignored():
    logits = torch.full((1, 1, 8, 8), -50.0)
    logits[0, 0, 2, 3] = 50.0
    logits[0, 0, 7, 7] = 80.0  # padding when the frame fills half the canvas: never read
    cx, cy, w, h = mask_to_box(logits, torch.tensor([[0.5, 0.5]]))[0, 0].tolist()
    assert (cx, cy) == pytest.approx((3.5 / 4, 2.5 / 4)) and (w, h) == pytest.approx((0.25, 0.25))


def test_mask_loss_prefers_the_gt_box_and_ignores_absent_pairs():
    extent = torch.ones(1, 2, 2)
    gt = torch.tensor([[[[0.5, 0.5, 0.5, 0.5]], [[0.2, 0.2, 0.1, 0.1]]]])  # (B=1, T=2, P=1, 4)
    present = torch.tensor([[[True], [False]]])
    cover, _ = box_mask_targets(gt[0, 0], extent[0, :1], 16)
    right = (cover * 40 - 20)[None, None].expand(1, 2, 1, 16, 16).clone()
    wrong = -right
    assert mask_loss(right, gt, present, extent) < 0.01 < mask_loss(wrong, gt, present, extent)
    right[0, 1] = 5.0  # the absent frame's mask does not count
    assert mask_loss(right, gt, present, extent) < 0.01
    none = mask_loss(wrong.requires_grad_(), gt, torch.zeros_like(present), extent)
    assert none.item() == 0 and none.requires_grad


def test_tiny_default_reads_boxes_from_masks_and_trains_every_mask_parameter():
    config = GroveConfig.tiny()
    assert (config.box_readout, config.mask_pixel_features, config.mask_loss_weight, config.mask_dice_weight) == ("mask", True, 2.0, 2.0)
    assert GroveConfig.paper().box_readout == "query_mlp" and GroveConfig.paper().mask_loss_weight == 0
    plain = GroveConfig.tiny(box_readout="query_mlp")
    assert not plain.mask_pixel_features and plain.mask_loss_weight == 0
    with pytest.raises(ValueError, match="need box_readout='mask'"):
        GroveConfig.tiny(box_readout="query_mlp", mask_loss_weight=1.0)

    torch.manual_seed(0)
    model = GroveModel.from_config(config)
    assert isinstance(model.box_decoder.pixel_features, PixelFeatures)
    pixels, caption, phrases, boxes = make_clip()
    batch = model.processor.collate([model.processor(pixels, caption, phrases, boxes=boxes)])
    out = model(batch)
    assert set(out.losses) == {"ce", "giou", "l1", "tobj", "mask", "dice", "vobj"}
    assert out.mask_logits.shape[-2:] == (config.mask_size, config.mask_size)
    out.loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    without_grad = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert without_grad == []  # DDP needs every trainable parameter used
    assert not any(n.startswith("box_head.") for n in trainable)
    assert any(n.startswith("box_decoder.pixel_features.") for n in trainable)
    assert any(n.startswith("box_decoder.mask_decoder.output_hypernetworks_mlps.0.") for n in trainable)


def test_dice_loss_is_near_zero_for_the_box_and_near_one_for_background():
    from grove.model.losses import mask_dice_loss

    extent = torch.ones(1, 1, 2)
    gt = torch.tensor([[[[0.5, 0.5, 0.25, 0.25]]]])
    present = torch.tensor([[[True]]])
    cover, _ = box_mask_targets(gt[0, 0], extent[0], 16)
    right = (cover * 40 - 20)[None, None]
    assert mask_dice_loss(right, gt, present, extent) < 0.02
    # all background: 1 - smooth / (|target| + smooth), the box covering 4 x 4 cells
    assert mask_dice_loss(torch.full_like(right, -20.0), gt, present, extent).item() == pytest.approx(1 - 1 / 17, abs=1e-4)
