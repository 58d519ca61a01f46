"""Tiny random-weight CLIP for Grad-CAM tests (patch 8, width 32, 3 blocks)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from ssrseg.backbones.clip import CLIP, CLIPConfig, TextConfig
from ssrseg.backbones.vit import ViTConfig


def tiny_clip(seed: int = 0, layers: int = 3) -> CLIP:
    torch.manual_seed(seed)
    vision = ViTConfig(image_size=32, patch_size=8, width=32, layers=layers, heads=4, output_dim=16)
    text = TextConfig(
        vocab_size=40, context_length=8, width=32, layers=1, heads=4, eot_token_id=39,
        sot_token_id=38,
    )  # fmt: skip
    clip = CLIP(CLIPConfig(vision=vision, text=text, embed_dim=16)).eval()
    # LayerNorm affine params start at 1/0; perturb them so the test exercises them.
    with torch.no_grad():
        for name, p in clip.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return clip


@pytest.fixture
def clip() -> CLIP:
    return tiny_clip()


@pytest.fixture
def make_clip() -> Callable[..., CLIP]:
    """``tiny_clip`` itself, for tests that need another depth or seed."""
    return tiny_clip
