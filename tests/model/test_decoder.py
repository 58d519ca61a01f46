"""SegDecoder shapes, which CLIP layers it reads, where the affinity loss sends gradient, and
equality with a functional re-implementation of WeCLIP's decoder (eval and train mode)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from weclip_reference import weclip_decoder

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
        ref_logits, ref_attn = weclip_decoder(dec, tokens, (3, 4))
        torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(feature_affinity(fused), ref_attn, rtol=1e-5, atol=1e-6)
        # the same weights with exact GELU give other logits: the switch matters
        gelu_ref, _ = weclip_decoder(dec, tokens, (3, 4), act="gelu")
        assert (gelu_ref - ref_logits).abs().max() > 1e-3


def test_gelu_switch_equals_exact_gelu() -> None:
    dec = _decoder(3, 5, "decoder.num_layers=2", "decoder.activation=gelu")
    tokens = _tokens(2)
    with torch.no_grad():
        logits, _ = dec(tokens, (3, 4))
        ref, _ = weclip_decoder(dec, tokens, (3, 4), act="gelu")
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
    ref_logits, ref_attn = weclip_decoder(dec, tokens, (3, 4), keep.float(), p)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    if after:
        # WeCLIP: the affinity reflects the dropped channels (zero) and the 1 / (1 - p) scale
        torch.testing.assert_close(aff_feats, clean / (1 - p) * keep[:, :, None, None])
        torch.testing.assert_close(feature_affinity(aff_feats), ref_attn, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(aff_feats, clean)  # before Dropout2d: no dropout noise
        assert (feature_affinity(aff_feats) - ref_attn).abs().max() > 1e-3
