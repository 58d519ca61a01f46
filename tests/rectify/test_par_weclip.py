"""PAR and the pseudo-label step against a functional re-implementation of WeCLIP's PAR.

``weclip_par`` below follows the structure of WeCLIP's ``PAR`` module (our own code): one-hot
3 x 3 kernels applied with ``conv2d`` at each dilation to replicate-padded maps, the position
table ``[sqrt2, 1, sqrt2, 1, 1, sqrt2, 1, sqrt2] * d``, ``torch.std`` over the neighbour axis,
softmax over it, and the image resized to the score size with ``align_corners=True``. WeCLIP's
training calls it at the full label size on [background, refined CAMs] of each crop.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from ssrseg.config import PARConfig, PseudoLabelConfig, load_config
from ssrseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from ssrseg.rectify.labels import scores_to_labels, with_background
from ssrseg.rectify.par import par_refine

DILATIONS = (1, 2, 4, 8, 12, 24)


def _one_hot_kernels() -> torch.Tensor:
    """8 x 1 x 3 x 3: one kernel per neighbour of the 3 x 3 window, row-major, centre skipped."""
    k = torch.zeros(8, 1, 3, 3)
    cells = [(r, c) for r in range(3) for c in range(3) if (r, c) != (1, 1)]
    for i, (r, c) in enumerate(cells):
        k[i, 0, r, c] = 1.0
    return k


def _neighbours(x: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    """B x C x H x W -> B x C x (8 * len(dilations)) x H x W via dilated one-hot convolutions."""
    b, c, h, w = x.shape
    kernel = _one_hot_kernels().to(x.dtype)
    out = []
    for d in dilations:
        padded = F.pad(x, [d] * 4, mode="replicate").reshape(b * c, 1, h + 2 * d, w + 2 * d)
        out.append(F.conv2d(padded, kernel, dilation=d).view(b, c, 8, h, w))
    return torch.cat(out, dim=2)


def weclip_par(
    images: torch.Tensor, masks: torch.Tensor, dilations: tuple[int, ...], iterations: int
) -> torch.Tensor:
    """WeCLIP's PAR forward, written out: images B x 3 x H' x W', masks B x K x H x W."""
    images = F.interpolate(images, size=masks.shape[-2:], mode="bilinear", align_corners=True)
    b, _, h, w = images.shape
    nb = _neighbours(images, dilations)  # B x 3 x M x H x W
    ring = torch.tensor([math.sqrt(2), 1, math.sqrt(2), 1, 1, math.sqrt(2), 1, math.sqrt(2)])
    pos = torch.cat([ring * d for d in dilations]).view(1, 1, -1, 1, 1).repeat(b, 1, 1, h, w)
    diff = (nb - images.unsqueeze(2)).abs()
    aff = -((diff / (nb.std(dim=2, keepdim=True) + 1e-8) / 0.3) ** 2)
    aff = aff.mean(dim=1, keepdim=True)  # B x 1 x M x H x W
    pos_aff = -((pos / (pos.std(dim=2, keepdim=True) + 1e-8) / 0.3) ** 2)
    aff = F.softmax(aff, dim=2) + 0.01 * F.softmax(pos_aff, dim=2)
    for _ in range(iterations):
        masks = (_neighbours(masks, dilations) * aff).sum(2)
    return masks


def weclip_labels(images: torch.Tensor, cams: torch.Tensor, keys: list[int]) -> torch.Tensor:
    """WeCLIP's label step of one crop: background ``(1 - max) ** 1``, PAR, argmax, class ids.

    images: 3 x H x W as PAR receives it; cams: K x H x W refined CAMs; keys: 0-based classes.
    """
    bg = torch.pow(1 - cams.max(dim=0, keepdim=True)[0], 1)
    scores = torch.cat([bg, cams], dim=0)
    refined = weclip_par(images[None].float(), scores[None].float(), DILATIONS, 20)
    valid_key = torch.tensor([0] + [k + 1 for k in keys])
    return valid_key[refined.argmax(dim=1)][0]


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
