"""The query-mode box decoder against transformers' SamMaskDecoder, and (frame, phrase) independence."""

import torch
from transformers import SamModel

from grove.model.box_decoder import BoxDecoder

from .conftest import tiny_sam


def _decoder(sam: SamModel) -> BoxDecoder:
    return BoxDecoder(sam.mask_decoder, sam.prompt_encoder.no_mask_embed, sam.shared_image_embedding, feature_size=8)


def test_query_output_equals_sam_mask_decoder_with_the_query_as_sparse_prompt():
    sam = tiny_sam()
    decoder = _decoder(sam)
    features = torch.randn(3, 16, 8, 8)  # 3 frames
    queries = torch.randn(3, 2, 16)  # 2 phrases, one query token each
    torch.testing.assert_close(decoder.image_positional_embeddings(), sam.get_image_wide_positional_embeddings())
    captured = {}
    hook = sam.mask_decoder.transformer.register_forward_hook(lambda module, args, out: captured.update(tokens=out[0]))
    with torch.no_grad():
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(3, -1, 8, 8)
        sam.mask_decoder(
            image_embeddings=features,
            image_positional_embeddings=sam.get_image_wide_positional_embeddings().repeat(3, 1, 1, 1),
            sparse_prompt_embeddings=queries[:, :, None, :],
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        ours = decoder(features, queries).query
    hook.remove()
    # tokens are [iou, 4 masks, query]: the query token's output is the last one
    torch.testing.assert_close(ours, captured["tokens"][:, :, 5, :])


def test_each_frame_and_phrase_is_decoded_independently():
    decoder = _decoder(tiny_sam())
    features = torch.randn(2, 16, 8, 8)
    queries = torch.randn(2, 3, 16)
    with torch.no_grad():
        base = decoder(features, queries).query
        other_phrase = queries.clone()
        other_phrase[:, 2] = torch.randn(2, 16)
        changed_query = decoder(features, other_phrase).query
        other_frame = features.clone()
        other_frame[1] = torch.randn(16, 8, 8)
        changed_frame = decoder(other_frame, queries).query
    torch.testing.assert_close(changed_query[:, :2], base[:, :2])
    assert not torch.allclose(changed_query[:, 2], base[:, 2])
    torch.testing.assert_close(changed_frame[0], base[0])
    assert not torch.allclose(changed_frame[1], base[1])
    assert decoder.unused_parameter_prefixes()[0] == "mask_decoder.upscale_conv1."
