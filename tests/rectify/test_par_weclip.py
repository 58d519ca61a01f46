"""PAR and the pseudo-label step against a functional re-implementation of WeCLIP's PAR
(``tests/model/weclip_reference.py``). WeCLIP's training calls its PAR at the full label size on
[background, refined CAMs] of each crop, with the image resized with ``align_corners=True``."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
from weclip_reference import DILATIONS, weclip_labels, weclip_par

from ssrseg.config import PARConfig, PseudoLabelConfig, load_config
from ssrseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from ssrseg.rectify.labels import scores_to_labels, with_background
from ssrseg.rectify.par import par_refine


def _crop(seed: int, h: int = 40, w: int = 48, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A piecewise-flat image with noise (8-bit values) and smooth CAMs in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    img = torch.zeros(1, 3, h, w)
    img[..., : h // 2, :] = torch.tensor([0.8, 0.3, 0.1]).view(1, 3, 1, 1)
    img[..., :, w // 3 :] += torch.tensor([0.1, 0.5, 0.6]).view(1, 3, 1, 1)
    img = ((img + 0.05 * torch.rand(img.shape, generator=gen)).clamp(0, 1) * 255).round() / 255
    small = torch.rand(1, k, h // 8, w // 8, generator=gen)
    cams = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]
    cams = (cams - cams.amin(dim=(1, 2), keepdim=True)) / cams.amax(dim=(1, 2), keepdim=True)
    return img, cams


def test_defaults_are_weclips_training_par() -> None:
    cfg = load_config(None)
    assert cfg.pseudo.par_downscale == 1  # WeCLIP's training: PAR at the full label size
    assert cfg.par.align_corners is True
    assert (cfg.par.dilations, cfg.par.iterations) == (DILATIONS, 20)
    assert (cfg.par.colour_temperature, cfg.par.position_weight) == (0.3, 0.01)
    assert cfg.par.normalise is False


def test_full_size_par_equals_weclip() -> None:
    images, cams = _crop(0)
    scores = with_background(cams[None], 1.0)
    ours = par_refine(images, scores, PARConfig())
    ref = weclip_par(images, scores, DILATIONS, 20)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_image_resize_align_corners_switch() -> None:
    # image at twice the score size: PAR resizes it first, WeCLIP with align_corners=True
    images, _ = _crop(1, 64, 80)
    _, cams = _crop(2, 32, 40)
    scores = with_background(cams[None], 1.0)
    cfg = PARConfig(iterations=5)
    ref = weclip_par(images, scores, DILATIONS, 5)
    torch.testing.assert_close(par_refine(images, scores, cfg), ref, rtol=1e-5, atol=1e-6)
    half_pixel = par_refine(images, scores, dataclasses.replace(cfg, align_corners=False))
    assert (half_pixel - ref).abs().max() > 1e-3  # the switch changes the result


def test_pseudo_labels_equal_weclip_including_normalised_image() -> None:
    # WeCLIP hands PAR the crop as its loader normalised it (ImageNet mean/std); ssrseg hands
    # it the [0, 1] image. PAR's colour term divides by the local std, so a per-channel affine
    # map changes only the 1e-8 epsilon's share: the labels are identical.
    keys = [4, 11]
    worst = 0.0
    for seed in range(3):
        images, cams = _crop(10 + seed)
        weclip_in = normalize(images, IMAGENET_MEAN, IMAGENET_STD)[0]
        ref = weclip_labels(weclip_in, cams, keys)
        scores = par_refine(images, with_background(cams[None], 1.0), PARConfig())[0]
        ours = scores_to_labels(scores, keys, PseudoLabelConfig())
        assert torch.equal(ours, ref)
        ref_scores = weclip_par(weclip_in[None], with_background(cams[None], 1.0), DILATIONS, 20)[0]
        worst = max(worst, float((scores - ref_scores).abs().max()))
    assert worst < 1e-5, worst
