"""SegDecoder contracts that test_decoder.py leaves open (issue 26, mutation triage).

The layer rule at its lower edge, the activation error message, a warning-free build, tokens of
another dtype (a half-precision CLIP), and Dropout2d's mask: one per sample, in the input's
dtype and on its device, and no random draw when it is off (docs/mutation/model.decoder.md).
"""

from __future__ import annotations

import dataclasses
import re
import warnings

import pytest
import torch

from ssrseg.config import DecoderConfig, load_config
from ssrseg.model.decoder import SegDecoder, channel_dropout, decoder_layers


def _cfg() -> DecoderConfig:
    return load_config(None, ["decoder.embed_dim=16", "decoder.num_heads=2"]).decoder


def test_decoder_layers_one_layer_is_enough() -> None:
    """A 2-block CLIP leaves one layer for the decoder (the last is left out)."""
    assert decoder_layers(11, 2) == 1
    assert decoder_layers(1, 12) == 1


def test_unknown_activation_message() -> None:
    cfg = dataclasses.replace(_cfg(), activation="relu")
    msg = "decoder.activation must be one of ['gelu', 'quick_gelu'], got 'relu'"
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        SegDecoder(cfg, in_width=12, num_layers_in=1, num_classes=3)


def test_build_is_warning_free() -> None:
    """Pre-norm layers cannot use torch's nested-tensor fast path; asking for it (torch's
    default) makes torch warn at every build, so the decoder turns it off."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SegDecoder(_cfg(), in_width=12, num_layers_in=2, num_classes=3)
    assert [str(w.message) for w in caught] == []


def test_tokens_are_cast_to_the_decoder_dtype() -> None:
    """float64 tokens into a float32 decoder give the decoder on the float32 tokens."""
    torch.manual_seed(0)
    dec = SegDecoder(_cfg(), in_width=12, num_layers_in=2, num_classes=3).eval()
    tokens = [torch.randn(1, 1 + 4, 12, dtype=torch.float64) for _ in range(2)]
    with torch.no_grad():
        logits, fused = dec(tokens, (2, 2))
        ref_logits, ref_fused = dec([t.float() for t in tokens], (2, 2))
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(fused, ref_fused)


def test_channel_dropout_masks_differ_between_samples() -> None:
    """Dropout2d draws one mask per sample: with 64 channels at p = 0.5, two samples sharing
    a mask has probability 2 ** -64."""
    torch.manual_seed(0)
    y = channel_dropout(torch.ones(2, 3, 64), 0.5, training=True)
    assert not torch.equal(y[0], y[1])


def test_channel_dropout_keeps_dtype_and_device() -> None:
    x = torch.ones(2, 3, 8, dtype=torch.bfloat16)
    assert channel_dropout(x, 0.5, training=True).dtype == torch.bfloat16
    # the meta device checks placement without data: a mask made elsewhere could not mix
    meta = torch.empty(2, 3, 8, device="meta")
    assert channel_dropout(meta, 0.5, training=True).device.type == "meta"


def test_channel_dropout_off_draws_nothing() -> None:
    """p = 0 in train mode returns the input as is and leaves the random stream alone, so a
    run with dropout off is not shifted by it."""
    x = torch.randn(2, 3, 8)
    torch.manual_seed(5)
    assert channel_dropout(x, 0.0, training=True) is x
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(1))
