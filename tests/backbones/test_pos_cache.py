"""The cached position table of VisionTransformer: same values as the uncached resize, reused
while pos_embed is unchanged, invalidated by in-place updates, never used under autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backbone_fakes import tiny_vision

from ssrseg.backbones.vit import POS_CACHE_SIZE, VisionTransformer


@pytest.fixture()
def vit() -> VisionTransformer:
    torch.manual_seed(3)
    return VisionTransformer(tiny_vision()).eval()  # patch 8, pretrained grid 4 x 4, width 64


def hand_table(vit: VisionTransformer, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """The resize written out independently: bicubic (align_corners=False) or CLIP-ES's
    bilinear + fp16 rounding of the whole table."""
    pos = vit.pos_embed.detach()
    patches = pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    if mode == "bicubic":
        up = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], up[0].permute(1, 2, 0).reshape(grid[0] * grid[1], -1)])
    up = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
    table = torch.cat([pos[:1], up[0].permute(1, 2, 0).reshape(grid[0] * grid[1], -1)])
    return table.half().float()


@pytest.mark.parametrize("mode", ["bicubic", "bilinear_fp16"])
def test_cached_table_equals_the_resize_and_is_reused(vit: VisionTransformer, mode: str) -> None:
    vit.pos_embed_resize = mode
    with torch.no_grad():
        first = vit.position_table((3, 5), torch.float32)
        again = vit.position_table((3, 5), torch.float32)
        other = vit.position_table((5, 3), torch.float32)
    assert again is first  # served from the cache
    assert torch.equal(first, hand_table(vit, (3, 5), mode))
    assert torch.equal(other, hand_table(vit, (5, 3), mode))
    # switching the mode must not serve the other mode's table
    vit.pos_embed_resize = "bicubic" if mode == "bilinear_fp16" else "bilinear_fp16"
    with torch.no_grad():
        switched = vit.position_table((3, 5), torch.float32)
    assert not torch.equal(switched, first)


def test_forward_bit_identical_to_uncached(vit: VisionTransformer) -> None:
    x = torch.rand(2, 3, 24, 40)
    with torch.no_grad():
        out1 = vit.forward_intermediates(x, attn_layers=(0, 1))
        out2 = vit.forward_intermediates(x, attn_layers=(0, 1))  # cache hit
        # the embedding written out with the uncached resize
        tokens = vit.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([vit.cls_token.expand(2, 1, -1), tokens], dim=1)
        ref = vit.ln_pre(tokens + hand_table(vit, (3, 5), "bicubic"))
        emb, _ = vit.embed(x)
    assert torch.equal(emb, ref)
    for a, b in zip(out1.tokens, out2.tokens, strict=True):
        assert torch.equal(a, b)


def test_in_place_update_invalidates(vit: VisionTransformer) -> None:
    with torch.no_grad():
        before = vit.position_table((3, 5), torch.float32).clone()
        vit.pos_embed.mul_(2.0)  # an optimiser / EMA style update: bumps the version counter
        after = vit.position_table((3, 5), torch.float32)
    assert torch.equal(after, hand_table(vit, (3, 5), "bicubic"))
    torch.testing.assert_close(after[1:], 2 * before[1:])
    # load_state_dict copies in place: the new weights are used at once
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    state["pos_embed"] = torch.randn_like(state["pos_embed"])
    vit.load_state_dict(state)
    with torch.no_grad():
        loaded = vit.position_table((3, 5), torch.float32)
    assert torch.equal(loaded, hand_table(vit, (3, 5), "bicubic"))


def test_replaced_parameter_and_dtype(vit: VisionTransformer) -> None:
    with torch.no_grad():
        vit.position_table((3, 5), torch.float32)
    vit.double()  # the parameter gets new storage
    with torch.no_grad():
        table = vit.position_table((3, 5), torch.float64)
    assert table.dtype == torch.float64
    # the resize runs in float32 (interpolate_pos_embed): the hand version on float32 values
    assert torch.equal(table, hand_table(vit.float(), (3, 5), "bicubic").double())
    vit.double()
    with torch.no_grad():
        as_half = vit.position_table((3, 5), torch.float16)
    assert as_half.dtype == torch.float16 and torch.equal(as_half, table.half())


def test_no_cache_when_autograd_needs_pos_embed(vit: VisionTransformer) -> None:
    vit.pos_embed.requires_grad_(True)
    with torch.no_grad():
        cached = vit.position_table((3, 5), torch.float32)
    table = vit.position_table((3, 5), torch.float32)  # grad enabled, parameter trainable
    assert table is not cached and table.requires_grad
    assert torch.equal(table.detach(), cached)
    emb, _ = vit.embed(torch.rand(1, 3, 24, 40))
    emb.sum().backward()
    grad = vit.pos_embed.grad
    assert grad is not None and bool((grad[1:] != 0).any())
    # a frozen parameter under grad mode may use the cache
    vit.pos_embed.requires_grad_(False)
    assert vit.position_table((3, 5), torch.float32) is vit.position_table((3, 5), torch.float32)


def test_inference_mode_tables_stay_in_inference_mode(vit: VisionTransformer) -> None:
    with torch.inference_mode():
        inf = vit.position_table((3, 5), torch.float32)
    assert inf.is_inference()
    normal = vit.position_table((3, 5), torch.float32)
    assert not normal.is_inference() and torch.equal(normal, inf)
    # usable in an autograd graph outside inference mode
    w = torch.ones(1, requires_grad=True)
    (normal * w).sum().backward()


def test_cache_is_bounded(vit: VisionTransformer) -> None:
    with torch.no_grad():
        for h in range(1, POS_CACHE_SIZE + 4):
            vit.position_table((h, 2), torch.float32)
    assert len(vit._pos_cache) == POS_CACHE_SIZE
