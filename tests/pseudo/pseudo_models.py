"""Tiny random-weight CLIP and DINO (patch 8), prompts and a small config for labeller tests."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
from tests_model_fakes import word_clip

from ssrseg.backbones.clip import CLIP
from ssrseg.backbones.tokenizer import WordTokenizer
from ssrseg.backbones.vit import VisionTransformer
from ssrseg.cam.prompts import ClassPrompts
from ssrseg.config import SSRConfig, load_config

WORDS = ("a", "photo", "of", "red", "square", "blue", "disk", "green", "star", "water", "grass")
PROMPTS = ClassPrompts(
    names=("square", "disk", "star"),
    prompts=("red square", "blue disk", "green star"),
    background=("water", "grass"),
    template="a photo of {}",
)


def tiny_models(seed: int = 0) -> tuple[CLIP, WordTokenizer, VisionTransformer]:
    clip, tok, vision = word_clip(WORDS, seed)
    dino_cfg = dataclasses.replace(
        vision, width=24, heads=3, output_dim=None, act="gelu", ln_pre=False, patch_bias=True
    )
    dino = VisionTransformer(dino_cfg)
    return clip, tok, dino


def small_config(*overrides: str) -> SSRConfig:
    base = [
        "par.iterations=3",
        "par.dilations=[1,2]",
        "sgc.n_segments=12",
        "affinity.clip_layers=2",
    ]
    return load_config(None, base + list(overrides))
