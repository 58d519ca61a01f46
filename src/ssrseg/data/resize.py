"""Image resize to the labeller's work size, in the reference code's way or ours.

CLIP-ES resizes the PIL image (uint8) with PIL's bicubic filter and only then converts it to
float (``/ 255``) and normalises; the result is quantised to 8 bits after the resize. ssrseg
used to convert first and resize the float tensor bilinearly. ``cam.input_resize`` selects one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

RESIZE_MODES = ("pil_bicubic", "torch_bilinear")


def check_resize_mode(mode: str) -> str:
    """Return ``mode`` if known, else raise ValueError naming the valid ones."""
    if mode not in RESIZE_MODES:
        valid = " | ".join(RESIZE_MODES)
        raise ValueError(f"cam.input_resize must be one of {valid}, got {mode!r}")
    return mode


def resize_to_tensor01(
    image: np.ndarray,
    size: tuple[int, int],
    mode: str = "pil_bicubic",
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``H x W x 3`` uint8 -> ``1 x 3 x h x w`` float32 in [0, 1] at ``size = (h, w)``.

    pil_bicubic: ``PIL.Image.resize((w, h), BICUBIC)`` on the uint8 image (the output is
    rounded and clipped to uint8 by PIL), then ``/ 255``; PIL returns a copy when the size is
    unchanged. torch_bilinear: ``/ 255`` first, then ``F.interpolate(bilinear,
    align_corners=False)`` clamped to [0, 1].
    """
    check_resize_mode(mode)
    arr = np.ascontiguousarray(image, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 image, got shape {arr.shape}")
    h, w = size
    if mode == "pil_bicubic":
        if arr.shape[:2] != (h, w):
            arr = np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BICUBIC))
        x = torch.from_numpy(arr.copy()).to(device).permute(2, 0, 1)[None].float()
        return x / 255.0
    x = torch.from_numpy(arr.copy()).to(device).permute(2, 0, 1)[None].float() / 255.0
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    return x


def work_size(height: int, width: int, patch: int, long_side: int) -> tuple[int, int]:
    """Size the labeller runs at: shrunk to ``long_side`` if larger (0: never), then each side
    rounded up to a multiple of the patch size (CLIP-ES rounds up)."""
    scale = 1.0
    if long_side and max(height, width) > long_side:
        scale = long_side / max(height, width)
    h = max(patch, math.ceil(round(height * scale) / patch) * patch)
    w = max(patch, math.ceil(round(width * scale) / patch) * patch)
    return h, w
