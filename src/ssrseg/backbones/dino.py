"""The DINO slot: the second frozen backbone (DINO v1 ViT-S/16 by default, or DINOv2).

DINO is the shared :class:`~ssrseg.backbones.vit.VisionTransformer` with GELU, LayerNorm eps
1e-6, no ``ln_pre``, a patch convolution with bias, no projection and ImageNet mean/std
(:func:`~ssrseg.backbones.vit.dino_vit_s16_config`); DINOv2 adds LayerScale and registers
(:mod:`ssrseg.backbones.dinov2`). Weights: ``ssrseg.backbones.weights``; ``backbone.dino``
names either (``dino_vit_s16``, ``dinov2_vits14`` ...).

SSR fuses DINO's N x N patch attention with CLIP's, so both must live on the same patch grid.
A DINO whose patch differs from CLIP's (DINOv2: 14 px, CLIP: 16 px) sees the image resized so
that its grid equals CLIP's: an ``H x W`` CLIP input has an ``(H/16) x (W/16)`` grid, so DINOv2
gets ``(14 H/16) x (14 W/16)`` pixels (:func:`dino_input_size`, :func:`run_on_grid`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ssrseg.backbones.vit import VisionTransformer, ViTConfig, ViTOutput, dino_vit_s16_config

__all__ = ["build_dino", "dino_input_size", "dino_vit_s16_config", "run_on_grid"]


def build_dino(
    cfg: ViTConfig | None = None, device: str | torch.device = "cpu"
) -> VisionTransformer:
    """A randomly initialised DINO-style ViT (default: ViT-S/16's shape); load weights with
    :func:`ssrseg.backbones.weights.load_dino`."""
    cfg = cfg or dino_vit_s16_config()
    if cfg.output_dim is not None:
        raise ValueError("a DINO backbone has no projection: set output_dim=None")
    return VisionTransformer(cfg).to(device)


def dino_input_size(grid: tuple[int, int], dino_patch: int) -> tuple[int, int]:
    """Input size that gives a DINO with patch ``dino_patch`` the patch grid ``grid``."""
    h, w = grid
    if h < 1 or w < 1:
        raise ValueError(f"patch grid {grid} is empty")
    return h * dino_patch, w * dino_patch


def run_on_grid(
    dino: VisionTransformer,
    images01: Tensor,
    grid: tuple[int, int],
    attn_layers: Sequence[int] = (),
    n_blocks: int | None = None,
) -> ViTOutput:
    """DINO forward on ``images01`` (``B x 3 x H x W`` in [0, 1]) with patch grid ``grid``.

    When the input is not already ``grid * patch`` pixels (a DINOv2 next to CLIP ViT-B/16, or
    an input whose size does not fit), it is resized bilinearly (``align_corners=False``, no
    antialiasing: how WeCLIP+ resizes its DINOv2 input) before normalisation. Returns DINO's
    :class:`ViTOutput`, whose ``grid`` is ``grid``; no gradients are taken here or dropped:
    callers wrap it in ``torch.no_grad`` as they need.
    """
    size = dino_input_size(grid, dino.cfg.patch_size)
    if tuple(images01.shape[-2:]) != size:
        images01 = F.interpolate(images01, size=size, mode="bilinear", align_corners=False)
    out = dino.forward_intermediates(dino.normalize(images01), attn_layers, n_blocks)
    if out.grid != grid:  # cannot happen with dino_input_size; kept as a guard for callers
        raise ValueError(f"DINO patch grid {out.grid} differs from the wanted {grid}")
    return out
