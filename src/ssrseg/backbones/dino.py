"""DINO v1 ViT-S/16: the second frozen backbone, used only for its attention maps.

DINO is the shared :class:`~ssrseg.backbones.vit.VisionTransformer` with GELU, LayerNorm eps
1e-6, no ``ln_pre``, a patch convolution with bias, no projection and ImageNet mean/std
(:func:`~ssrseg.backbones.vit.dino_vit_s16_config`). Weights: ``ssrseg.backbones.weights``.
"""

from __future__ import annotations

import torch

from ssrseg.backbones.vit import VisionTransformer, ViTConfig, dino_vit_s16_config

__all__ = ["build_dino", "dino_vit_s16_config"]


def build_dino(
    cfg: ViTConfig | None = None, device: str | torch.device = "cpu"
) -> VisionTransformer:
    """A randomly initialised DINO-style ViT (default: ViT-S/16's shape); load weights with
    :func:`ssrseg.backbones.weights.load_dino`."""
    cfg = cfg or dino_vit_s16_config()
    if cfg.output_dim is not None:
        raise ValueError("a DINO backbone has no projection: set output_dim=None")
    return VisionTransformer(cfg).to(device)
