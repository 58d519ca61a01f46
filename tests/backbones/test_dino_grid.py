"""The DINO slot on CLIP's patch grid: DINOv2 (patch 14) next to CLIP ViT-B/16 sees the image
resized to 14H/16 x 14W/16, so both attentions are N x N over the same patches; SSR's labeller
runs end to end with a random small DINOv2 (with and without registers)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
from tests_model_fakes import word_clip

from ssrseg.backbones.dino import dino_input_size, run_on_grid
from ssrseg.backbones.dinov2 import dinov2_config
from ssrseg.backbones.vit import VisionTransformer, dino_vit_s16_config
from ssrseg.cam.prompts import ClassPrompts
from ssrseg.config import load_config
from ssrseg.pseudo.labeler import PseudoLabeler


def tiny_dinov2(patch: int = 14, registers: bool = True) -> VisionTransformer:
    torch.manual_seed(0)
    cfg = dataclasses.replace(
        dinov2_config("s", registers), image_size=4 * patch, patch_size=patch, width=24,
        layers=1, heads=2,
    )  # fmt: skip
    return VisionTransformer(cfg).eval()


@pytest.mark.parametrize("size", [(320, 320), (448, 336), (512, 384), (224, 560), (16, 48)])
def test_dinov2_grid_equals_clip_b16_grid(size: tuple[int, int]) -> None:
    h, w = size
    grid = (h // 16, w // 16)  # CLIP ViT-B/16's grid for this input
    assert dino_input_size(grid, 14) == (14 * h // 16, 14 * w // 16)
    dino = tiny_dinov2()
    seen: list[tuple[int, ...]] = []
    dino.patch_embed.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    with torch.no_grad():
        out = run_on_grid(dino, torch.rand(1, 3, h, w), grid, attn_layers=[-1])
    assert seen == [(1, 3, 14 * h // 16, 14 * w // 16)]
    n = grid[0] * grid[1]
    assert out.grid == grid and out.attentions[0].shape == (1, n, n)
    assert out.tokens[-1].shape == (1, 1 + 4 + n, 24)  # CLS, 4 registers, CLIP's N patches


def test_same_patch_runs_unresized() -> None:
    """A DINO v1 of CLIP's patch (the paper's pairing, the toy world) sees the image as is."""
    torch.manual_seed(1)
    d = dino_vit_s16_config()
    dino = VisionTransformer(dataclasses.replace(d, width=24, heads=2, layers=1, image_size=64))
    images = torch.rand(2, 3, 48, 80)
    with torch.no_grad():
        out = run_on_grid(dino, images, (3, 5), attn_layers=[-1])
        ref = dino.forward_intermediates(dino.normalize(images), attn_layers=[-1])
    assert torch.equal(out.tokens[-1], ref.tokens[-1])
    assert torch.equal(out.attentions[0], ref.attentions[0])


def test_grid_must_be_positive() -> None:
    with pytest.raises(ValueError, match="empty"):
        dino_input_size((0, 3), 14)


WORDS = ("a", "photo", "of", "red", "square", "blue", "disk", "green", "star", "water")
SMALL = ["par.iterations=3", "par.dilations=[1,2]", "sgc.n_segments=12", "affinity.clip_layers=2"]


def _labeler(registers: bool) -> PseudoLabeler:
    clip, tok, _ = word_clip(WORDS, seed=0)
    prompts = ClassPrompts(
        names=("square", "disk", "star"), prompts=("red square", "blue disk", "green star"),
        background=("water",), template="a photo of {}",
    )  # fmt: skip
    cfg = load_config(None, SMALL)
    return PseudoLabeler(clip, tok, tiny_dinov2(patch=7, registers=registers), prompts, cfg)


@pytest.mark.parametrize("registers", [False, True])
@pytest.mark.parametrize("size", [(24, 40), (48, 32), (16, 56)])
def test_labeller_end_to_end_with_a_small_dinov2(registers: bool, size: tuple[int, int]) -> None:
    """CLIP patch 8, DINOv2 patch 7: the labeller fuses both attentions (SGC mask on)."""
    labeler = _labeler(registers)
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    labels = [(0, 2), (1,)]
    out = labeler(images, labels)
    h, w = size[0] // 8, size[1] // 8
    assert out.grid == (h, w) and out.labels.shape == (2, *size)
    assert [tuple(r.shape) for r in out.refined] == [(2, *size), (1, *size)]
    assert set(out.labels[0].unique().tolist()) <= {0, 1, 3, 255}
    assert set(out.labels[1].unique().tolist()) <= {0, 2, 255}
    # DINOv2's attention takes part: without it the refined CAMs differ
    labeler.cfg = load_config(None, [*SMALL, "affinity.use_dino_attention=false"])
    clip_only = labeler(images, labels)
    assert (out.refined[0] - clip_only.refined[0]).abs().max() > 1e-4
