"""configs/voc_dinov2.yaml, configs/weclip_plus.yaml, configs/ssr_plus.yaml: they load, hold the
switches they document, and each runs a labeller call, the losses (with a backward) and
``segment`` on random tiny backbones (CLIP patch 8, DINOv2 patch 7 with registers)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from tests_model_fakes import (
    one_thread,  # noqa: F401 (autouse fixture)
    word_clip,
)

from ssrseg.backbones.dinov2 import dinov2_config
from ssrseg.backbones.vit import VisionTransformer
from ssrseg.cam.prompts import ClassPrompts
from ssrseg.config import SSRConfig, load_config
from ssrseg.model.ssr import SSRModel
from ssrseg.pseudo.labeler import PseudoLabeler

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = [
    "cmpa.in_dim=16", "cmpa.hidden_dim=16", "cmpa.out_dim=8", "decoder.embed_dim=16",
    "decoder.num_heads=2", "decoder.num_layers=1", "loss.aff_radius=2", "par.iterations=2",
    "par.dilations=[1,2]", "sgc.n_segments=12", "affinity.clip_layers=2",
]  # fmt: skip


def _preset(name: str, *over: str) -> SSRConfig:
    return load_config(CONFIGS / f"{name}.yaml", list(over))


def test_presets_hold_their_switches() -> None:
    v2 = _preset("voc_dinov2")
    assert v2.backbone.dino == "dinov2_vits14" and v2.backbone.use_dino
    assert v2.affinity.use_dino_attention and v2.affinity.mask == "sgc" and v2.cmpa.enabled
    assert not v2.decoder.dino_branch
    plus = _preset("ssr_plus")
    assert plus.backbone.dino == "dinov2_vits14" and plus.affinity.mask == "sgc"
    assert plus.cmpa.enabled and plus.affinity.use_dino_attention
    assert plus.decoder.dino_branch and plus.decoder.dino_feedback
    assert plus.decoder.dino_weight == 0.5
    wp = _preset("weclip_plus")
    assert wp.backbone.dino == "dinov2_vits14" and wp.backbone.use_dino
    assert not wp.affinity.use_dino_attention and not wp.cmpa.enabled
    assert (wp.affinity.clip_layers, wp.affinity.mask) == (6, "none")
    assert wp.decoder.dino_branch and wp.decoder.dino_feedback and wp.decoder.dino_layer_select
    assert (wp.loss.w_seg, wp.loss.w_aff, wp.train.lr, wp.train.weight_decay) == (
        1.0,
        0.1,
        2e-5,
        0.01,
    )


def _tiny_model(cfg: SSRConfig) -> SSRModel:
    clip, tok, _ = word_clip(("a", "photo", "of", "c0", "c1", "c2", "grass"), seed=0)
    dcfg = dataclasses.replace(
        dinov2_config("s", registers=True), image_size=28, patch_size=7, width=24, layers=2,
        heads=3,
    )  # fmt: skip
    prompts = ClassPrompts(("c0", "c1", "c2"), ("c0", "c1", "c2"), ("grass",), "a photo of {}")
    labeler = PseudoLabeler(clip, tok, VisionTransformer(dcfg), prompts, cfg)
    return SSRModel(cfg, labeler, num_classes=4)


@pytest.mark.parametrize("name", ["voc_dinov2", "weclip_plus", "ssr_plus"])
def test_presets_run_on_tiny_backbones(name: str) -> None:
    cfg = _preset(name, *TINY)
    model = _tiny_model(cfg)
    images = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    labels = [(0, 2), (1,)]
    out = model.labeler(images, labels)
    assert out.grid == (4, 5) and out.labels.shape == (2, 32, 40)
    res = model.losses([t.detach() for t in out.clip_out.tokens], out.grid, out.labels)
    res["loss"].backward()
    assert torch.isfinite(res["loss"])
    assert model.eval().segment(images).shape == (2, 4, 4, 5)
    assert (model.dino_hook is not None) == cfg.decoder.dino_branch
