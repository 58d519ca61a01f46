"""Tiny backbone shapes shared by the backbone tests (CPU, milliseconds per forward)."""

from __future__ import annotations

from ssrseg.backbones.clip import CLIPConfig, TextConfig
from ssrseg.backbones.vit import ViTConfig, dino_vit_s16_config


def tiny_vision(**kw: object) -> ViTConfig:
    base = dict(image_size=32, patch_size=8, width=64, layers=2, heads=4, output_dim=24)
    base.update(kw)
    return ViTConfig(**base)  # type: ignore[arg-type]


def tiny_clip_config() -> CLIPConfig:
    text = TextConfig(
        vocab_size=100,
        context_length=16,
        width=32,
        layers=2,
        heads=2,
        eot_token_id=99,
        sot_token_id=98,
    )
    return CLIPConfig(vision=tiny_vision(), text=text, embed_dim=24)


def tiny_dino_config() -> ViTConfig:
    d = dino_vit_s16_config()
    return ViTConfig(
        image_size=32,
        patch_size=8,
        width=64,
        layers=2,
        heads=4,
        act=d.act,
        ln_eps=d.ln_eps,
        ln_pre=False,
        patch_bias=True,
        output_dim=None,
        mean=d.mean,
        std=d.std,
    )
