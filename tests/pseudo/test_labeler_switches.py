"""The labeller's CLIP-ES switches: output resize, float16 scores, logit scale, box options."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from pseudo_models import PROMPTS, small_config, tiny_models

from ssrseg.cam.gradcam import gradcam
from ssrseg.config import ConfigError
from ssrseg.pseudo.labeler import PseudoLabeler
from ssrseg.rectify.affinity import box_mask

NO_REFINE = ("affinity.use_clip_attention=false", "affinity.use_dino_attention=false")
NO_PAR = ("par.enabled=false",)


def _images(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def test_output_resize_direct_is_one_resize_from_the_grid(
    make_labeler: Callable[..., PseudoLabeler],
) -> None:
    """CLIP-ES resizes the refined grid straight to the original size (cv2 bilinear, half-pixel
    centres) and takes the background and argmax there; two_step goes through the work size."""
    images = _images(24, 32, 0)  # work size of an original 21 x 29 image (patch 8)
    orig = (21, 29)
    direct = make_labeler(*NO_REFINE, *NO_PAR)(images, [(0, 2)], out_size=orig)
    grid = direct.cams[0][None]  # no attention: the refined grid is the initial CAM
    expected = _up(grid, orig)[0]
    torch.testing.assert_close(direct.refined[0], expected, atol=0, rtol=0)
    bg = 1 - expected.amax(dim=0)
    want = torch.tensor([0, 1, 3])[torch.cat([bg[None], expected]).argmax(dim=0)]
    assert direct.labels.shape == (1, *orig) and torch.equal(direct.labels[0], want)
    assert direct.scores[0].shape == (3, *orig)

    two = make_labeler(*NO_REFINE, *NO_PAR, "pseudo.output_resize=two_step")
    out2 = two(images, [(0, 2)], out_size=orig)
    work = _up(grid, (24, 32))
    torch.testing.assert_close(out2.refined[0], _up(work, orig)[0], atol=0, rtol=0)
    scores_work = torch.cat([1 - work.amax(dim=1, keepdim=True), work], dim=1)
    torch.testing.assert_close(out2.scores[0], _up(scores_work, orig)[0], atol=1e-6, rtol=0)
    # The two routes give different maps (not only rounding).
    assert float((out2.refined[0] - direct.refined[0]).abs().max()) > 1e-3
    # Without out_size both modes work at the batch size, as before.
    a = make_labeler(*NO_REFINE, *NO_PAR)(images, [(0, 2)])
    b = two(images, [(0, 2)])
    assert torch.equal(a.refined[0], b.refined[0]) and torch.equal(a.labels, b.labels)
    assert a.refined[0].shape == (2, 24, 32)


def test_output_resize_with_attention_and_label_size(
    make_labeler: Callable[..., PseudoLabeler],
) -> None:
    images = _images(32, 40, 1)
    orig = (27, 38)
    base = make_labeler("affinity.use_dino_attention=false", "affinity.mask=box", *NO_PAR)
    full = base(images, [(1,)], out_size=orig)
    assert full.refined[0].shape == (1, *orig) and full.labels.shape == (1, *orig)
    small = make_labeler(
        "affinity.use_dino_attention=false", "affinity.mask=box", *NO_PAR, "pseudo.cam_size=19"
    )(images, [(1,)], out_size=orig)
    # cam_size shrinks the label computation from the original size; labels come back at it.
    assert small.scores[0].shape == (2, 14, 19) and small.labels.shape == (1, *orig)


def test_fp16_scores_round_like_clip_es_npy(make_labeler: Callable[..., PseudoLabeler]) -> None:
    images = _images(24, 24, 2)
    off = make_labeler(*NO_PAR)(images, [(0, 1)])
    on = make_labeler(*NO_PAR, "pseudo.fp16_scores=true")(images, [(0, 1)])
    assert not torch.equal(off.refined[0], off.refined[0].half().float())
    assert torch.equal(on.refined[0], off.refined[0].half().float())
    assert torch.equal(on.scores[0], on.scores[0].half().float())
    # background = fp16(1 - max of the fp16 maps), as NumPy computes it on float16 arrays
    bg = (1 - on.refined[0].amax(dim=0)).half().float()
    assert torch.equal(on.scores[0][0], bg)
    want = torch.tensor([0, 1, 2])[on.scores[0].argmax(dim=0)]
    assert torch.equal(on.labels[0], want)


def test_logit_scale_none_is_the_models_own() -> None:
    clip, tok, dino = tiny_models()
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(37.0))
    images = _images(16, 24, 3)
    for setting, scale in (("cam.logit_scale=null", 37.0), ("cam.logit_scale=5", 5.0)):
        labeler = PseudoLabeler(clip, tok, dino, PROMPTS, small_config(setting))
        assert labeler.raw_logit_scale == pytest.approx(scale, rel=1e-6)
        out = labeler(images, [(0, 2)])
        ref = gradcam(
            clip.visual, images, [(0, 2)], labeler.class_emb, labeler.bg_emb, scale, attn_last=2
        )
        torch.testing.assert_close(out.cams[0], ref.cams[0], atol=1e-6, rtol=1e-5)
    assert small_config().cam.logit_scale is None  # default: CLIP-ES's model.logit_scale.exp()


@pytest.mark.parametrize(("quantise", "clip_last"), [(True, True), (False, False)])
def test_box_switches_reach_the_masks(
    make_labeler: Callable[..., PseudoLabeler], quantise: bool, clip_last: bool
) -> None:
    labeler = make_labeler(
        "affinity.mask=box",
        f"affinity.box_quantise={str(quantise).lower()}",
        f"affinity.box_clip_last={str(clip_last).lower()}",
        *NO_PAR,
    )
    images = _images(32, 40, 4)
    out = labeler(images, [(0, 1, 2)])
    expected = box_mask(out.cams[0], 0.4, quantise, clip_last)
    assert torch.equal(out.masks[0], expected)
    edge = torch.cat([out.masks[0][:, -1, :].flatten(), out.masks[0][:, :, -1].flatten()])
    if clip_last:
        assert not bool(edge.any())


def test_new_config_errors() -> None:
    clip, tok, dino = tiny_models()
    for bad, field in (
        ("cam.input_resize=bicubic", "input_resize"),
        ("cam.minmax_passes=0", "minmax_passes"),
        ("pseudo.output_resize=once", "output_resize"),
    ):
        with pytest.raises(ConfigError, match=field):
            PseudoLabeler(clip, tok, dino, PROMPTS, small_config(bad))
