"""SegDecoder shapes, which CLIP layers it reads, and where the affinity loss sends gradient."""

from __future__ import annotations

import pytest
import torch

from ssrseg.config import load_config
from ssrseg.model.decoder import SegDecoder, channel_dropout, decoder_layers
from ssrseg.model.losses import affinity_loss, feature_affinity


def _decoder(layers_in: int = 3, classes: int = 5) -> SegDecoder:
    cfg = load_config(None, ["decoder.embed_dim=16", "decoder.num_heads=2"]).decoder
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
