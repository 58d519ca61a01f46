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

import dataclasses
import os
from pathlib import Path

import torch
from torch import Tensor

from ssrseg.atomic import atomic_path
from ssrseg.backbones.vit import VisionTransformer, ViTConfig, dino_vit_s16_config

__all__ = [
    "DINOV2_NAMES",
    "DINOV2_SIZES",
    "build_dinov2",
    "dinov2_config",
    "dinov2_official_state",
    "write_random_dinov2",
]

# size letter -> (width, layers, heads); the official vit_small / vit_base / vit_large
DINOV2_SIZES: dict[str, tuple[int, int, int]] = {
    "s": (384, 12, 6),
    "b": (768, 12, 12),
    "l": (1024, 24, 16),
}
DINOV2_REGISTERS = 4  # the published "_reg" models carry 4 registers
DINOV2_IMAGE_SIZE = 518  # pretrained resolution: 37 x 37 patches of 14 px
# registry names (ssrseg.backbones.weights) -> (size letter, registers)
DINOV2_NAMES: dict[str, tuple[str, bool]] = {
    f"dinov2_vit{size}14{'_reg' if reg else ''}": (size, reg)
    for size in DINOV2_SIZES
    for reg in (False, True)
}
TINY_WIDTH = 64  # random "tiny" files: real layout and depth, this width (heads = width // 64)


def dinov2_config(size: str = "s", registers: bool = False) -> ViTConfig:
    """Shape of a DINOv2 backbone: ``size`` one of ``s``, ``b``, ``l``; ``registers`` adds 4.

    GELU MLP (ratio 4), LayerNorm eps 1e-6, patch convolution with bias, no ``ln_pre``, no
    projection, ImageNet mean/std (the same as DINO v1), LayerScale.
    """
    if size not in DINOV2_SIZES:
        raise ValueError(f"DINOv2 size must be one of {sorted(DINOV2_SIZES)}, got {size!r}")
    width, layers, heads = DINOV2_SIZES[size]
    return dataclasses.replace(
        dino_vit_s16_config(),  # DINO v1's code path and statistics, at DINOv2's shape
        image_size=DINOV2_IMAGE_SIZE,
        patch_size=14,
        width=width,
        layers=layers,
        heads=heads,
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


def dinov2_official_state(
    size: str = "s", registers: bool = False, seed: int = 0, width: int | None = None
) -> dict[str, Tensor]:
    """Random weights with the key names, shapes and dtype (float32) of the official
    ``dinov2_vit*14[_reg4]_pretrain.pth`` files: ``cls_token`` ``1 x 1 x D``, ``pos_embed``
    ``1 x (1 + 37*37) x D``, ``mask_token`` ``1 x D``, ``register_tokens`` ``1 x 4 x D`` (with
    registers), ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2,
    mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm``. ``width`` overrides D (tiny test files)."""
    cfg = dinov2_config(size, registers)
    d = width or cfg.width
    hidden, p, grid = int(d * cfg.mlp_ratio), cfg.patch_size, cfg.pretrained_grid
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float = 0.02) -> Tensor:
        return torch.randn(*shape, generator=gen) * std

    sd: dict[str, Tensor] = {
        "cls_token": normal(1, 1, d),
        "pos_embed": normal(1, 1 + grid * grid, d),
        "mask_token": torch.zeros(1, d),
        "patch_embed.proj.weight": normal(d, 3, p, p),
        "patch_embed.proj.bias": torch.zeros(d),
    }
    if registers:
        sd["register_tokens"] = normal(1, DINOV2_REGISTERS, d)
    for i in range(cfg.layers):
        b = f"blocks.{i}."
        sd[b + "norm1.weight"], sd[b + "norm1.bias"] = torch.ones(d), torch.zeros(d)
        sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"] = normal(3 * d, d), torch.zeros(3 * d)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = normal(d, d), torch.zeros(d)
        sd[b + "ls1.gamma"] = torch.ones(d)  # the hub models' LayerScale init_values
        sd[b + "norm2.weight"], sd[b + "norm2.bias"] = torch.ones(d), torch.zeros(d)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = normal(hidden, d), torch.zeros(hidden)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = normal(d, hidden), torch.zeros(d)
        sd[b + "ls2.gamma"] = torch.ones(d)
    sd["norm.weight"], sd["norm.bias"] = torch.ones(d), torch.zeros(d)
    return sd


def write_random_dinov2(
    name: str, out: str | os.PathLike[str], tiny: bool = False, seed: int = 0
) -> list[Path]:
    """Write random weights in the official file layout of registry name ``name``
    (``dinov2_vits14`` ... ``dinov2_vitl14_reg``) to ``out`` (a ``torch.save`` state dict, as
    Meta's ``.pth``); ``tiny``: real layout and depth, width 64. Returns ``[out]``."""
    if name not in DINOV2_NAMES:
        raise ValueError(f"{name!r} is not a DINOv2 name ({', '.join(DINOV2_NAMES)})")
    size, registers = DINOV2_NAMES[name]
    state = dinov2_official_state(size, registers, seed, TINY_WIDTH if tiny else None)
    with atomic_path(out, suffix=".tmp") as tmp:
        torch.save(state, tmp)
    return [Path(out)]
