"""SegDecoder shapes, which CLIP layers it reads, where the affinity loss sends gradient, and
equality with a functional re-implementation of WeCLIP's decoder (eval and train mode)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from ssrseg.config import load_config
from ssrseg.model.decoder import SegDecoder, channel_dropout, decoder_layers, quick_gelu
from ssrseg.model.losses import affinity_loss, feature_affinity


def _decoder(layers_in: int = 3, classes: int = 5, *over: str) -> SegDecoder:
    cfg = load_config(None, ["decoder.embed_dim=16", "decoder.num_heads=2", *over]).decoder
    torch.manual_seed(0)
    return SegDecoder(cfg, in_width=12, num_layers_in=layers_in, num_classes=classes).eval()


def test_decoder_layers_rule() -> None:
    assert decoder_layers(11, 12) == 11
    assert decoder_layers(11, 4) == 3
    assert decoder_layers(2, 12) == 2
    with pytest.raises(ValueError, match="CLIP has 1 layers"):
        decoder_layers(11, 1)


def test_output_shapes_at_patch_resolution() -> None:
    dec = _decoder()
    tokens = [torch.randn(2, 1 + 3 * 4, 12) for _ in range(4)]
    logits, fused = dec(tokens, (3, 4))
    assert logits.shape == (2, 5, 3, 4) and fused.shape == (2, 16, 3, 4)


def test_reads_only_its_layers_and_ignores_cls() -> None:
    dec = _decoder(layers_in=2)
    tokens = [torch.randn(1, 1 + 4, 12) for _ in range(3)]
    ref, _ = dec(tokens, (2, 2))
    changed = [t.clone() for t in tokens]
    changed[2] += 5.0  # layer 3 is not read
    changed[0][:, 0] += 5.0  # CLS tokens are not read
    out, _ = dec(changed, (2, 2))
    assert torch.allclose(ref, out)
    changed[1][:, 1:] += 1.0
    assert not torch.allclose(ref, dec(changed, (2, 2))[0])
    with pytest.raises(ValueError, match="needs 2 layers"):
        dec(tokens[:1], (2, 2))


def test_affinity_loss_trains_only_the_fusion_head() -> None:
    dec = _decoder().train()
    tokens = [torch.randn(1, 1 + 4, 12) for _ in range(3)]
    _, fused = dec(tokens, (2, 2))
    targets = torch.tensor([[[1, 0, 1, 0]] * 4])
    affinity_loss(feature_affinity(fused), targets).backward()
    assert dec.fuse.weight.grad is not None and dec.fuse.weight.grad.abs().sum() > 0
    assert dec.mlps[0][0].weight.grad is not None
    assert all(p.grad is None for p in dec.transformer.parameters())
    assert dec.classifier.weight.grad is None


def test_channel_dropout_drops_whole_channels_per_sample() -> None:
    torch.manual_seed(0)
    x = torch.ones(3, 10, 64)
    y = channel_dropout(x, 0.5, training=True)
    # every channel of a sample is either dropped at all positions or scaled by 1 / (1 - p)
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(y.amin(dim=1), y.amax(dim=1))
    assert 0 < int((y[:, 0] == 0).sum()) < 3 * 64
    assert channel_dropout(x, 0.5, training=False) is x


# ----------------------------------------------------------------------------------------------
# WeCLIP's decoder written out as its code is structured (our own code): per-layer MLPs on
# N x C x h x w maps, concatenation, 1x1 conv fusion, Dropout2d, a sequence-first (L x N x D)
# pre-norm transformer whose attention scales q by 1 / sqrt(head_dim) before q k^T and whose MLP
# uses QuickGELU, then a 1x1 conv classifier. The affinity reads the fused map after Dropout2d.


def _ln(x: Tensor, norm: torch.nn.LayerNorm) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, eps=1e-5)


def _weclip_block(
    x: Tensor, layer: torch.nn.TransformerEncoderLayer, heads: int, act: str
) -> Tensor:
    """One residual attention block on L x N x D tokens, parameters read from ``layer``."""
    length, n, d = x.shape
    hd = d // heads
    attn = layer.self_attn
    q, k, v = F.linear(_ln(x, layer.norm1), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)

    def heads_first(t: Tensor) -> Tensor:  # L x N x D -> (N * heads) x L x hd
        return t.contiguous().view(length, n * heads, hd).transpose(0, 1)

    q, k, v = heads_first(q) / math.sqrt(hd), heads_first(k), heads_first(v)
    weights = torch.softmax(torch.bmm(q, k.transpose(-2, -1)), dim=-1)
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(length, n, d)
    x = x + F.linear(out, attn.out_proj.weight, attn.out_proj.bias)
    hidden = F.linear(_ln(x, layer.norm2), layer.linear1.weight, layer.linear1.bias)
    if act == "quick_gelu":
        hidden = hidden * torch.sigmoid(1.702 * hidden)
    else:
        hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    return x + F.linear(hidden, layer.linear2.weight, layer.linear2.bias)


def _weclip_decoder(
    dec: SegDecoder,
    tokens: list[Tensor],
    grid: tuple[int, int],
    keep: Tensor | None = None,
    p: float = 0.1,
    act: str = "quick_gelu",
) -> tuple[Tensor, Tensor]:
    """(logits N x K x h x w, attn_pred N x hw x hw); ``keep`` N x E channel mask or None."""
    h, w = grid
    maps = []
    for mlp, t in zip(dec.mlps, tokens, strict=False):
        x = t[:, 1:].transpose(1, 2).reshape(t.shape[0], -1, h, w)  # N x C x h x w
        x = x.flatten(2).transpose(1, 2)
        x = F.linear(F.relu(F.linear(x, mlp[0].weight, mlp[0].bias)), mlp[2].weight, mlp[2].bias)
        maps.append(x.permute(0, 2, 1).reshape(x.shape[0], -1, h, w))
    cat = torch.cat(maps, dim=1)
    fts = F.conv2d(cat, dec.fuse.weight[:, :, None, None], dec.fuse.bias)
    if keep is not None:
        fts = fts * keep[:, :, None, None] / (1 - p)
    b, c = fts.shape[:2]
    x = fts.reshape(b, c, h * w).permute(2, 0, 1)
    for layer in dec.transformer.layers:
        x = _weclip_block(x, layer, layer.self_attn.num_heads, act)
    x = x.permute(1, 2, 0).reshape(b, c, h, w)
    logits = F.conv2d(x, dec.classifier.weight[:, :, None, None], dec.classifier.bias)
    flat = fts.reshape(b, c, h * w)
    return logits, torch.sigmoid(flat.transpose(2, 1).bmm(flat))


def _tokens(seed: int, b: int = 2, grid: tuple[int, int] = (3, 4), n: int = 3) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 1 + grid[0] * grid[1], 12, generator=g) for _ in range(n)]


def test_quick_gelu_hand_values() -> None:
    # x * sigmoid(1.702 x): sigmoid(1.702) = 1 / (1 + e^-1.702) = 0.8457957
    x = torch.tensor([0.0, 1.0, -1.0, 2.0], dtype=torch.float64)
    expected = torch.tensor([0.0, 0.84579577, -0.15420423, 1.93565862], dtype=torch.float64)
    torch.testing.assert_close(quick_gelu(x), expected, atol=1e-7, rtol=0)


def test_default_decoder_equals_weclip_quick_gelu() -> None:
    dec = _decoder(3, 5, "decoder.num_layers=3")
    assert load_config(None).decoder.activation == "quick_gelu"
    tokens = _tokens(1)
    with torch.no_grad():
        logits, fused = dec(tokens, (3, 4))
        ref_logits, ref_attn = _weclip_decoder(dec, tokens, (3, 4))
        torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(feature_affinity(fused), ref_attn, rtol=1e-5, atol=1e-6)
        # the same weights with exact GELU give other logits: the switch matters
        gelu_ref, _ = _weclip_decoder(dec, tokens, (3, 4), act="gelu")
        assert (gelu_ref - ref_logits).abs().max() > 1e-3


def test_gelu_switch_equals_exact_gelu() -> None:
    dec = _decoder(3, 5, "decoder.num_layers=2", "decoder.activation=gelu")
    tokens = _tokens(2)
    with torch.no_grad():
        logits, _ = dec(tokens, (3, 4))
        ref, _ = _weclip_decoder(dec, tokens, (3, 4), act="gelu")
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"decoder\.activation"):
        _decoder(3, 5, "decoder.activation=relu6")


@pytest.mark.parametrize("after", [True, False])
def test_train_mode_affinity_and_logits_equal_weclip(after: bool) -> None:
    p = 0.5
    dec = _decoder(
        3,
        5,
        "decoder.num_layers=2",
        f"decoder.dropout={p}",
        f"decoder.affinity_after_dropout={str(after).lower()}",
    )
    tokens = _tokens(3)
    with torch.no_grad():
        _, clean = dec(tokens, (3, 4))  # eval mode: no dropout
        dec.train()
        torch.manual_seed(7)
        logits, aff_feats = dec(tokens, (3, 4))
        torch.manual_seed(7)
        again, _ = dec(tokens, (3, 4))
    assert torch.equal(logits, again)
    # the channel mask the decoder drew: replay its one random draw with the same seed
    torch.manual_seed(7)
    b, e = clean.shape[:2]
    keep = channel_dropout(torch.ones(b, 1, e), p, training=True)[:, 0] != 0  # B x E
    assert 0 < int(keep.sum()) < keep.numel()  # some channels dropped, some kept
    ref_logits, ref_attn = _weclip_decoder(dec, tokens, (3, 4), keep.float(), p)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    if after:
        # WeCLIP: the affinity reflects the dropped channels (zero) and the 1 / (1 - p) scale
        torch.testing.assert_close(aff_feats, clean / (1 - p) * keep[:, :, None, None])
        torch.testing.assert_close(feature_affinity(aff_feats), ref_attn, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(aff_feats, clean)  # before Dropout2d: no dropout noise
        assert (feature_affinity(aff_feats) - ref_attn).abs().max() > 1e-3
