"""ViT numerics: half precision close to float32, bicubic position interpolation, grids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backbone_fakes import tiny_vision

from ssrseg.backbones.vit import VisionTransformer, interpolate_pos_embed


@pytest.fixture()
def vit():
    torch.manual_seed(6)
    return VisionTransformer(tiny_vision()).eval()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward_close_to_float32(vit, dtype):
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        ref = vit.forward_intermediates(x, attn_layers=(0, 1))
        half = VisionTransformer(vit.cfg).eval()
        half.load_state_dict(vit.state_dict())
        half.to(dtype)
        out = half.forward_intermediates(x.to(dtype), attn_layers=(0, 1))
        emb = half(x.to(dtype))
    assert out.last.dtype == dtype and emb.dtype == dtype
    assert out.attentions[1].dtype == torch.float32  # attention is always returned in float32
    tol = 0.03 if dtype == torch.float16 else 0.15
    for a, b in zip(out.tokens, ref.tokens, strict=True):
        assert (a.float() - b).abs().max() < tol * b.abs().max()
    for i in (0, 1):
        assert (out.attentions[i] - ref.attentions[i]).abs().max() < tol
        # patch-to-patch rows leave out the CLS column: they sum to at most 1
        assert bool((out.attentions[i].sum(-1) <= 1 + 1e-3).all())


def test_pos_embed_interpolation_non_square_matches_hand_bicubic(vit):
    table = vit.pos_embed.detach()  # (1 + 4*4) x 64, grid 4
    out = interpolate_pos_embed(table, (6, 10), 4)  # a 48 x 80 input with patch 8
    assert out.shape == (1 + 60, 64)
    assert torch.equal(out[0], table[0])  # class position untouched
    grid = table[1:].reshape(4, 4, 64).permute(2, 0, 1)[None]
    by_hand = F.interpolate(grid, size=(6, 10), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[1:], by_hand[0].permute(1, 2, 0).reshape(60, 64))
    # row-major order: the patch at grid row r, column c is token 1 + r * 10 + c
    torch.testing.assert_close(out[1 + 2 * 10 + 7], by_hand[0, :, 2, 7])
    assert interpolate_pos_embed(table, (4, 4), 4) is table


def test_grid_and_size_errors(vit):
    out = vit.forward_intermediates(torch.rand(1, 3, 48, 80))
    assert out.grid == (6, 10) and out.last.shape == (1, 61, 64)
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        vit.forward_intermediates(torch.rand(1, 3, 30, 32))
