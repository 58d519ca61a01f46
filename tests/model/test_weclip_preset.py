"""configs/weclip.yaml: it loads, its switches are WeCLIP's, and under it the decoder (logits,
train-mode affinity) equals the functional WeCLIP re-implementation, CLIP sees ImageNet-normalised
inputs and the trainer keeps the labels of the crop padding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tests_model_fakes import (  # one_thread: autouse fixture
    FakeLabeler,
    TinySegDataset,
    one_thread,  # noqa: F401
    record_loss_targets,
    tiny_clip,
    tiny_config,
)
from weclip_reference import weclip_decoder

from ssrseg.config import SSRConfig, load_config
from ssrseg.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, normalize
from ssrseg.engine.schedule import lr_factor
from ssrseg.model.decoder import SegDecoder, channel_dropout, decoder_layers
from ssrseg.model.losses import feature_affinity
from ssrseg.model.ssr import SSRModel

PRESET = Path(__file__).parents[2] / "configs" / "weclip.yaml"


@pytest.fixture(scope="module")
def cfg() -> SSRConfig:
    return load_config(PRESET)


def test_preset_switches_are_weclips(cfg: SSRConfig) -> None:
    assert not cfg.cmpa.enabled and not cfg.cam.projected
    assert not cfg.backbone.use_dino and not cfg.affinity.use_dino_attention
    a = cfg.affinity
    assert (a.use_clip_attention, a.clip_layers, a.mask, a.box_threshold) == (True, 8, "box", 0.4)
    assert not a.decoder_affinity
    assert cfg.prompts.template == "a clean origami {}."
    d = cfg.decoder
    assert (d.embed_dim, d.num_layers, d.num_heads, d.dropout, d.use_layers) == (256, 3, 8, 0.1, 11)
    assert (d.ffn_ratio, d.activation, d.affinity_after_dropout) == (4.0, "quick_gelu", True)
    p = cfg.pseudo
    assert (p.background_power, p.ignore_low, p.ignore_high, p.par_downscale) == (
        1.0,
        None,
        None,
        1,
    )
    assert cfg.par.align_corners and cfg.par.enabled and not cfg.par.normalise
    assert (cfg.loss.w_seg, cfg.loss.w_aff, cfg.loss.w_proto, cfg.loss.aff_radius) == (
        1.0,
        0.1,
        0.0,
        8,
    )
    da = cfg.data
    assert (da.clip_normalisation, da.scale_rounding) == ("imagenet", "floor")
    assert (da.crop_size, da.scale_range, da.hflip, da.train_split) == (
        320,
        (0.5, 2.0),
        True,
        "train_aug",
    )
    t = cfg.train
    assert (t.iterations, t.batch_size, t.lr, t.decoder_lr_mult) == (30000, 4, 2e-4, 10.0)
    assert (t.weight_decay, t.warmup_iters, t.warmup_ratio, t.poly_power) == (0.01, 50, 1e-6, 1.0)
    assert not t.warmup_poly and not t.ignore_crop_padding and t.amp == "off"
    factor = lr_factor(49, t.iterations, t.warmup_iters, t.warmup_ratio, t.poly_power)
    assert factor == pytest.approx(0.98000002, rel=1e-9)


def test_preset_decoder_equals_weclip_eval_and_train(cfg: SSRConfig) -> None:
    # full-size decoder of the preset (768-wide CLIP, 11 layers, 21 classes) on a 3 x 4 grid
    torch.manual_seed(0)
    n_in = decoder_layers(cfg.decoder.use_layers, 12)
    dec = SegDecoder(cfg.decoder, in_width=768, num_layers_in=n_in, num_classes=21)
    g = torch.Generator().manual_seed(1)
    tokens = [torch.randn(2, 13, 768, generator=g) for _ in range(n_in)]
    with torch.no_grad():
        logits, fused = dec.eval()(tokens, (3, 4))
        ref_logits, ref_attn = weclip_decoder(dec, tokens, (3, 4))
        torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(feature_affinity(fused), ref_attn, rtol=1e-5, atol=1e-5)
        torch.manual_seed(5)
        logits, dropped = dec.train()(tokens, (3, 4))
    torch.manual_seed(5)  # the decoder's one random draw: its Dropout2d channel mask
    keep = channel_dropout(torch.ones(2, 1, 256), 0.1, training=True)[:, 0] != 0
    assert int(keep.sum()) < keep.numel()
    with torch.no_grad():
        ref_logits, ref_attn = weclip_decoder(dec, tokens, (3, 4), keep.float(), 0.1)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(feature_affinity(dropped), ref_attn, rtol=1e-5, atol=1e-5)


def _tiny(preset: SSRConfig, **over: Any) -> SSRConfig:
    """The preset's switches on a tiny model (tiny_config's sizes)."""
    keep = {
        "data__clip_normalisation": preset.data.clip_normalisation,
        "train__ignore_crop_padding": preset.train.ignore_crop_padding,
        "decoder__activation": preset.decoder.activation,
        "cmpa__enabled": preset.cmpa.enabled,
        "affinity__mask": "none",
    }
    return tiny_config(**{**keep, **over})


def test_clip_sees_imagenet_normalised_inputs(cfg: SSRConfig) -> None:
    clip = tiny_clip()
    model = SSRModel(_tiny(cfg), FakeLabeler(clip, 3), 4).eval()
    visual = model.labeler.clip.visual
    images = torch.rand(2, 3, 32, 32)
    expected = normalize(images, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(visual.normalize(images), expected)
    out = visual.forward_intermediates(expected)
    ref, _ = model.decoder(out.tokens, out.grid)
    torch.testing.assert_close(model.segment(images), ref)
    # data.clip_normalisation=clip puts CLIP's own statistics back
    SSRModel(_tiny(cfg, data__clip_normalisation="clip"), FakeLabeler(clip, 3), 4)
    torch.testing.assert_close(visual.normalize(images), normalize(images, CLIP_MEAN, CLIP_STD))
    with pytest.raises(ValueError, match="normalisation"):
        SSRModel(_tiny(cfg, data__clip_normalisation="laion"), FakeLabeler(clip, 3), 4)


@pytest.mark.parametrize("ignore", [False, True])
def test_crop_padding_labels_kept_like_weclip(cfg: SSRConfig, ignore: bool, tmp_path: Path) -> None:
    from ssrseg.engine.train import Trainer

    # images rescaled to half the crop: 3/4 of every crop is padding
    over = {
        "train__ignore_crop_padding": ignore,
        "data__crop_size": 32,
        "data__num_workers": 0,
        "data__scale_range": "[0.5, 0.5]",
        "train__batch_size": 2,
        "train__iterations": 1,
        "train__val_every": 0,
        "train__ckpt_every": 100,
    }
    tcfg = _tiny(cfg, **over)
    torch.manual_seed(0)
    model = SSRModel(tcfg, FakeLabeler(tiny_clip(), 3), 4)
    seen = record_loss_targets(model)
    Trainer(tcfg, model, TinySegDataset(), tmp_path, progress=False).fit()
    ignored = (seen[0] == 255).float().mean().item()
    assert ignored == (pytest.approx(0.75) if ignore else 0.0)
