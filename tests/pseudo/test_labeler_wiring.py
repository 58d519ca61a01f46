"""Configured values on their way into the labeller's maths: each test sets every field it
covers to a value of its own (none a default, no two alike), builds the expectation from the
public functions called by hand with those values, and checks that the swapped or ignored
configuration would give another answer (so the test can see the wiring bug)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ssrseg.cam.gradcam import minmax
from ssrseg.pseudo.labeler import PseudoLabeler, images_to_uint8
from ssrseg.rectify.affinity import refine_with_transition, transition_matrix
from ssrseg.rectify.sgc import colour_clusters, sgc_mask, slic_superpixels

LABELS = [(0, 2), (1,)]


def _images(seed: int) -> torch.Tensor:
    """Two 32 x 32 images of 6 x 6 blocks of random colours plus a little noise: SLIC finds
    segments in them (none in plain noise), and the blocks straddle the 8 x 8 patches, so the
    patches' target shares are not all 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.rand(2, 3, 6, 6, generator=g).repeat_interleave(6, 2).repeat_interleave(6, 3)
    return (blocks[..., :32, :32] + 0.05 * torch.rand(2, 3, 32, 32, generator=g)).clamp(0, 1)


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def test_fused_affinity_uses_the_configured_weights_layers_and_normalisation(
    make_labeler: Callable[..., PseudoLabeler],
) -> None:
    weights = {"clip": 0.3, "dino": 1.7}
    labeler = make_labeler(
        "affinity.mask=none",
        f"affinity.clip_weight={weights['clip']}",
        f"affinity.dino_weight={weights['dino']}",
        "affinity.clip_layers=2",
        "affinity.dino_layers=2",
        "affinity.sinkhorn_rounds=1",
        "affinity.square=false",
    )
    images = _images(11)
    out = labeler(images, LABELS)
    # CLIP: the mean of the last 2 of its 3 blocks' attentions; DINO: its last 2 blocks,
    # computed here with DINO's own forward (not the labeller's grid helper)
    a_clip = (out.clip_out.attentions[1] + out.clip_out.attentions[2]) / 2
    dino = labeler.dino
    assert dino is not None
    d = dino.forward_intermediates(dino.normalize(images), attn_layers=[1, 2])
    a_dino = (d.attentions[1] + d.attentions[2]) / 2

    def refined(w_clip: float, w_dino: float, rounds: int = 1, square: bool = False) -> list:
        trans = transition_matrix(w_clip * a_clip + w_dino * a_dino, rounds, square)
        cams = torch.zeros(2, 2, 4, 4)
        for i, c in enumerate(out.cams):
            cams[i, : c.shape[0]] = c
        grid = _up(refine_with_transition(trans, cams), (32, 32))
        return [grid[i, : len(lab)] for i, lab in enumerate(LABELS)]

    want = refined(0.3, 1.7)
    for got, exp in zip(out.refined, want, strict=True):
        torch.testing.assert_close(got, exp, atol=1e-5, rtol=1e-4)

    def differs(other: list) -> bool:
        return any(float((a - b).abs().max()) > 2e-4 for a, b in zip(want, other, strict=True))

    assert differs(refined(1.7, 0.3))  # swapped weights
    assert differs(refined(0.4, 0.6))  # the defaults (a weight ignored)
    assert differs(refined(0.3, 1.7, rounds=3))  # sinkhorn_rounds ignored
    assert differs(refined(0.3, 1.7, square=True))  # square ignored


def test_sgc_mask_is_sgc_of_colour_clusters_with_the_configured_values(
    make_labeler: Callable[..., PseudoLabeler],
) -> None:
    sgc = {
        "n_clusters": 5,
        "colour_space": "rgb",
        "kmeans_iters": 3,
        "seed": 7,
        "tau_hi": 0.35,
        "theta": 0.2,
        "patch_majority": 0.3,
    }
    labeler = make_labeler(
        "affinity.mask=sgc",
        "sgc.n_segments=20",
        "sgc.compactness=3.5",
        *(f"sgc.{k}={v}" for k, v in sgc.items()),
    )
    images = _images(12)
    out = labeler(images, LABELS)
    # SLIC with the configured segments and compactness (computed by the labeller here)
    sp = [slic_superpixels(im, 20, 3.5) for im in images_to_uint8(images)]
    assert not torch.equal(sp[0], slic_superpixels(images_to_uint8(images)[0], 12, 10.0))

    def masks(**over: object) -> list[torch.Tensor]:
        v = {**sgc, **over}
        result = []
        for i in range(2):
            clusters = colour_clusters(
                images[i], sp[i], v["n_clusters"], v["colour_space"], v["kmeans_iters"], v["seed"]
            )
            cam = out.cams[i]
            result.append(
                sgc_mask(
                    cam, clusters, v["n_clusters"], v["tau_hi"], v["theta"], v["patch_majority"]
                )
            )
        return result

    want = masks()
    for got, exp in zip(out.masks, want, strict=True):
        assert torch.equal(got, exp)
    # the fixture sees each value: swapping two thresholds or falling back to a default
    # changes the masks
    for over in (
        {"tau_hi": 0.2, "theta": 0.35},
        {"theta": 0.3, "patch_majority": 0.2},
        {"tau_hi": 0.4},
        {"theta": 0.5},
        {"patch_majority": 0.5},
        {"colour_space": "lab"},
        {"n_clusters": 8},
    ):
        other = masks(**over)
        assert any(not torch.equal(a, b) for a, b in zip(want, other, strict=True)), over


def test_background_score_uses_the_configured_power(
    make_labeler: Callable[..., PseudoLabeler],
) -> None:
    labeler = make_labeler(
        "affinity.use_clip_attention=false",
        "affinity.use_dino_attention=false",
        "par.enabled=false",
        "pseudo.background_power=2.5",
    )
    out = labeler(_images(13), LABELS)
    for scores, refined in zip(out.scores, out.refined, strict=True):
        want = (1 - refined.amax(dim=0)) ** 2.5
        torch.testing.assert_close(scores[0], want, atol=1e-6, rtol=1e-5)
        assert float((want - (1 - refined.amax(dim=0))).abs().max()) > 1e-2


def test_cams_are_min_max_normalised_the_configured_number_of_times(
    make_labeler: Callable[..., PseudoLabeler],
) -> None:
    images = _images(14)
    once = make_labeler("cam.minmax_passes=1")(images, LABELS)
    thrice = make_labeler("cam.minmax_passes=3")(images, LABELS)
    for a, b in zip(once.cams, thrice.cams, strict=True):
        # a second and third pass only renormalise what the first left (min 0, max < 1)
        torch.testing.assert_close(b, minmax(minmax(a)), atol=0, rtol=0)
        assert not torch.equal(a, b)
