"""Tiny random-weight CLIP and DINO (patch 8), prompts and a small config for labeller tests."""

from __future__ import annotations

import dataclasses

import torch

from ssrseg.backbones.clip import CLIP, CLIPConfig, TextConfig
from ssrseg.backbones.tokenizer import WordTokenizer
from ssrseg.backbones.vit import VisionTransformer, ViTConfig
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
    torch.manual_seed(seed)
    tok = WordTokenizer(WORDS, context_length=8)
    vision = ViTConfig(image_size=32, patch_size=8, width=32, layers=3, heads=4, output_dim=16)
    text = TextConfig(
        vocab_size=tok.vocab_size, context_length=8, width=32, layers=1, heads=4,
        eot_token_id=tok.eot_token_id, sot_token_id=tok.sot_token_id,
    )  # fmt: skip
    clip = CLIP(CLIPConfig(vision=vision, text=text, embed_dim=16))
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
