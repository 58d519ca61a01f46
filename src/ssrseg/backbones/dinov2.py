"""DINOv2 ViT-S/14, ViT-B/14 and ViT-L/14, each with or without 4 register tokens.

DINOv2 is the shared :class:`~ssrseg.backbones.vit.VisionTransformer` with what DINOv2 adds to
DINO v1: LayerScale on both residual branches (``ls1.gamma``, ``ls2.gamma``), optional register
tokens between CLS and the patches, patch 14 and a 37 x 37 pretrained position grid (518 px).

Position embeddings are resized as transformers' ``Dinov2Model`` /
``Dinov2WithRegistersModel`` do (the test reference): bicubic to the explicit grid size, in
float32, antialiased for the register models only. The official repository
(facebookresearch/dinov2, ``DinoVisionTransformer.interpolate_pos_encoding``) does the same for
the register models (``interpolate_offset=0``, ``interpolate_antialias=True``); for the models
without registers it passes a scale factor ``(grid + 0.1) / 37`` instead of a size, which
samples the source at slightly different points (see ``docs/dinov2.md``).

Weights: ``ssrseg.backbones.weights`` (registry names ``dinov2_vits14`` ... ``dinov2_vitl14_reg``,
official ``.pth``, transformers and timm layouts).
"""

from __future__ import annotations

import torch

from ssrseg.backbones.vit import VisionTransformer, ViTConfig, dino_vit_s16_config

__all__ = ["DINOV2_SIZES", "build_dinov2", "dinov2_config"]

# size letter -> (width, layers, heads); the official vit_small / vit_base / vit_large
DINOV2_SIZES: dict[str, tuple[int, int, int]] = {
    "s": (384, 12, 6),
    "b": (768, 12, 12),
    "l": (1024, 24, 16),
}
DINOV2_REGISTERS = 4  # the published "_reg" models carry 4 registers
DINOV2_IMAGE_SIZE = 518  # pretrained resolution: 37 x 37 patches of 14 px


def dinov2_config(size: str = "s", registers: bool = False) -> ViTConfig:
    """Shape of a DINOv2 backbone: ``size`` one of ``s``, ``b``, ``l``; ``registers`` adds 4.

    GELU MLP (ratio 4), LayerNorm eps 1e-6, patch convolution with bias, no ``ln_pre``, no
    projection, ImageNet mean/std (the same as DINO v1), LayerScale.
    """
    if size not in DINOV2_SIZES:
        raise ValueError(f"DINOv2 size must be one of {sorted(DINOV2_SIZES)}, got {size!r}")
    width, layers, heads = DINOV2_SIZES[size]
    v1 = dino_vit_s16_config()
    return ViTConfig(
        image_size=DINOV2_IMAGE_SIZE,
        patch_size=14,
        width=width,
        layers=layers,
        heads=heads,
        mlp_ratio=4.0,
        act="gelu",
        ln_eps=1e-6,
        ln_pre=False,
        patch_bias=True,
        output_dim=None,
        mean=v1.mean,
        std=v1.std,
        layer_scale=True,
        num_registers=DINOV2_REGISTERS if registers else 0,
        pos_antialias=registers,
    )


def build_dinov2(
    size: str = "s", registers: bool = False, device: str | torch.device = "cpu"
) -> VisionTransformer:
    """A randomly initialised DINOv2 (load weights with
    :func:`ssrseg.backbones.weights.load_dino`)."""
    return VisionTransformer(dinov2_config(size, registers)).to(device)
