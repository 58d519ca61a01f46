"""The labeller's refinement and label routes against the public functions called by hand
(issue 26, mutation triage): the paper-order masked affinity, the mask_target switch without a
mask, DINO's last layer, WeCLIP+'s feedback, the decoder affinity switch, the ignore band, PAR at
a reduced size (and disabled), and the switches that reach Grad-CAM and the box masks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from test_labeler_switches import _images, _up

import ssrseg.pseudo.labeler as labeler_module
from ssrseg.model.dino_branch import Feedback, weight_cams
from ssrseg.pseudo.labeler import PseudoLabeler, pad_stack
from ssrseg.rectify.affinity import (
    refine_with_masked_affinity,
    refine_with_transition,
    transition_matrix,
)
from ssrseg.rectify.labels import scores_to_labels, with_background
from ssrseg.rectify.par import par_refine

NO_PAR = "par.enabled=false"
CLIP_ONLY = "affinity.use_dino_attention=false"


def _clip_affinity(out: Any) -> torch.Tensor:
    """small_config: the mean of CLIP's last 2 (of 3) blocks' attentions."""
    return (out.clip_out.attentions[1] + out.clip_out.attentions[2]) / 2


@pytest.mark.parametrize("square", [True, False])
def test_mask_target_affinity_masks_the_affinity_per_class(
    make_labeler: Callable[..., PseudoLabeler], square: bool
) -> None:
    """Paper eq. 10 order: the box masks cut the affinity's columns, one transition matrix per
    class, with the configured Sinkhorn rounds (2, not the default 3) and squaring."""
    labeler = make_labeler(
        CLIP_ONLY, NO_PAR, "affinity.mask=box", "affinity.mask_target=affinity",
        "affinity.sinkhorn_rounds=2", f"affinity.square={str(square).lower()}",
    )  # fmt: skip
    images = _images(24, 32, 20)
    out = labeler(images, [(0, 1, 2)])
    cams, masks = out.cams[0][None], out.masks[0][None]
    a = _clip_affinity(out)

    def route(rounds: int, sq: bool) -> torch.Tensor:
        return _up(refine_with_masked_affinity(a, cams, masks, rounds, sq), (24, 32))[0]

    want = route(2, square)
    torch.testing.assert_close(out.refined[0], want, atol=1e-6, rtol=1e-5)
    assert float((route(2, not square) - want).abs().max()) > 1e-3
    transition = refine_with_transition(transition_matrix(a, 2, square), cams, masks)
    assert float((_up(transition, (24, 32))[0] - want).abs().max()) > 1e-3


def test_without_a_mask_mask_target_changes_nothing(
    make_labeler: Callable[..., PseudoLabeler],
) -> None:
    """affinity.mask=none: one transition matrix for all classes whatever mask_target says,
    bit for bit (the per-class route with all-ones masks is the same maths in another
    summation order: about 1e-5 apart here)."""
    images = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(21))
    labels = [(0, 1, 2), (2,)]
    common = (CLIP_ONLY, NO_PAR, "affinity.mask=none")
    a = make_labeler(*common, "affinity.mask_target=affinity")(images, labels)
    b = make_labeler(*common, "affinity.mask_target=transition")(images, labels)
    for x, y in zip(a.refined, b.refined, strict=True):
        assert torch.equal(x, y)


def test_dino_attention_is_its_last_layers(make_labeler: Callable[..., PseudoLabeler]) -> None:
    """dino_layers=1: the last of DINO's 3 blocks (not the first after the patch embedding)."""
    labeler = make_labeler(
        "affinity.use_clip_attention=false", "affinity.mask=none", "affinity.dino_layers=1",
        NO_PAR,
    )  # fmt: skip
    images = _images(32, 32, 22)
    out = labeler(images, [(1, 2)])
    dino = labeler.dino
    assert dino is not None
    att = dino.forward_intermediates(dino.normalize(images), attn_layers=[0, 2]).attentions
    cams = out.cams[0][None]

    def route(layer: int) -> torch.Tensor:
        return _up(refine_with_transition(transition_matrix(att[layer]), cams), (32, 32))[0]

    torch.testing.assert_close(out.refined[0], route(2), atol=1e-4, rtol=1e-3)
    assert float((route(0) - route(2)).abs().max()) > 1e-3


def test_weclip_feedback_weights_cams_and_multiplies_the_affinity(
    make_labeler: Callable[..., PseudoLabeler],
) -> None:
    """WeCLIP+'s branch hook: DINO runs for it without attentions (none are used), each CAM is
    weighted by its class's probability and the affinity multiplied by the decoder's."""
    labeler = make_labeler(
        CLIP_ONLY, NO_PAR, "affinity.mask=none", "decoder.dino_layer_select=false"
    )
    images = _images(24, 32, 23)
    gen = torch.Generator().manual_seed(24)
    fb = Feedback(
        prob=torch.rand(1, 4, 3, 4, generator=gen), affinity=torch.rand(1, 12, 12, generator=gen)
    )
    seen: list[list[int]] = []

    def hook(tokens: Any, grid: tuple[int, int], d_out: Any) -> Feedback:
        seen.append(sorted(d_out.attentions))
        return fb

    labeler.branch_hook = hook
    out = labeler(images, [(0, 2)])
    assert seen == [[]]
    cams = weight_cams(pad_stack(out.cams, 2), fb.prob, [(0, 2)])
    a = _clip_affinity(out)

    def route(affinity: torch.Tensor) -> torch.Tensor:
        return _up(refine_with_transition(transition_matrix(affinity), cams), (24, 32))[0]

    want = route(a * fb.affinity)
    torch.testing.assert_close(out.refined[0], want, atol=1e-5, rtol=1e-4)
    assert float((route(a / fb.affinity) - want).abs().max()) > 1e-3


def test_decoder_affinity_is_ignored_when_switched_off(
    make_labeler: Callable[..., PseudoLabeler],
) -> None:
    labeler = make_labeler(CLIP_ONLY, NO_PAR, "affinity.mask=none")
    assert not labeler.cfg.affinity.decoder_affinity
    images = _images(16, 24, 25)
    plain = labeler(images, [(1,)])
    given = labeler(images, [(1,)], decoder_affinity=torch.zeros(1, 6, 6))
    assert torch.equal(plain.refined[0], given.refined[0])
    assert float(plain.refined[0].amax()) > 0.5  # a zero RFM would give all zeros


def test_ignore_band_reaches_the_labels(make_labeler: Callable[..., PseudoLabeler]) -> None:
    labeler = make_labeler(
        CLIP_ONLY, NO_PAR, "affinity.mask=box", "pseudo.ignore_low=0.3", "pseudo.ignore_high=0.7"
    )
    out = labeler(_images(24, 32, 26), [(0, 2)])
    want = scores_to_labels(out.scores[0], (0, 2), labeler.cfg.pseudo)
    assert torch.equal(out.labels[0], want)
    assert bool((want == 255).any())  # the band is in use (no band: no 255)


def test_par_at_a_tiny_reduced_size(make_labeler: Callable[..., PseudoLabeler]) -> None:
    """par_downscale larger than the map: PAR runs on a 1 x 1 map (never 0 pixels)."""
    labeler = make_labeler(CLIP_ONLY, "affinity.mask=box", "pseudo.par_downscale=32")
    images = _images(16, 24, 28)
    out = labeler(images, [(1,)])
    scores = with_background(out.refined[0][None], 1.0)

    def route(low: tuple[int, int]) -> torch.Tensor:
        return _up(par_refine(images, _up(scores, low), labeler.cfg.par), (16, 24))[0]

    torch.testing.assert_close(out.scores[0], route((1, 1)))
    assert float((route((2, 1)) - route((1, 1))).abs().max()) > 1e-2  # 2 rows: another answer


def test_disabled_par_ignores_par_downscale(make_labeler: Callable[..., PseudoLabeler]) -> None:
    labeler = make_labeler(CLIP_ONLY, "affinity.mask=box", NO_PAR, "pseudo.par_downscale=2")
    out = labeler(_images(16, 24, 28), [(0, 1)])
    want = with_background(out.refined[0][None], 1.0)[0]
    assert torch.equal(out.scores[0], want)


@pytest.mark.parametrize("flag", [True, False])
def test_switches_reach_gradcam_and_the_box_masks(
    make_labeler: Callable[..., PseudoLabeler], monkeypatch: pytest.MonkeyPatch, flag: bool
) -> None:
    """cam.batch_classes (a speed switch: same CAMs either way) and the box options arrive as
    configured, True and False alike."""
    seen: dict[str, Any] = {}
    real_gradcam, real_box = labeler_module.gradcam, labeler_module.box_mask

    def gradcam(*args: Any, **kwargs: Any) -> Any:
        seen["gradcam"] = kwargs
        return real_gradcam(*args, **kwargs)

    def box_mask(*args: Any) -> torch.Tensor:
        seen["box"] = args[1:]
        return real_box(*args)

    monkeypatch.setattr(labeler_module, "gradcam", gradcam)
    monkeypatch.setattr(labeler_module, "box_mask", box_mask)
    on = str(flag).lower()
    labeler = make_labeler(
        CLIP_ONLY, NO_PAR, "affinity.mask=box", "affinity.box_threshold=0.35",
        f"cam.batch_classes={on}", f"affinity.box_quantise={on}",
        f"affinity.box_clip_last={str(not flag).lower()}",
    )  # fmt: skip
    labeler(_images(16, 16, 29), [(0, 1)])
    assert seen["gradcam"]["batch_classes"] is flag
    assert seen["box"] == (0.35, flag, not flag)
