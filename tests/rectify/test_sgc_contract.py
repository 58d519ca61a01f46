"""SGC contract details the hand-made scenes of test_sgc.py leave open: defaults (SGCConfig's),
dark colours in the Lab conversion, empty inputs, the "no superpixel" slot, exact ties at the
thresholds, error messages, and the device of the empty K-means result (on the meta device,
which needs no GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from ssrseg.config import SGCConfig
from ssrseg.rectify import sgc
from ssrseg.rectify.sgc import (
    colour_clusters,
    kmeans,
    rgb_to_lab,
    sgc_mask,
    slic_superpixels,
    superpixel_colours,
    target_clusters,
)
from ssrseg.rectify.slic import slic_labels


def _blob_image(size: int = 60) -> np.ndarray:
    """Smooth colour gradients plus seeded noise: SLIC's result depends on its parameters."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin(6 * xx) * 0.5 + 0.5, np.cos(5 * yy) * 0.5 + 0.5, xx * yy], axis=-1)
    img = img * 200 + rng.integers(0, 40, size=img.shape)
    return img.clip(0, 255).astype(np.uint8)


def test_slic_defaults_are_the_config_defaults() -> None:
    img = _blob_image()
    cfg = SGCConfig()
    default = slic_superpixels(img)
    assert torch.equal(default, slic_superpixels(img, cfg.n_segments, cfg.compactness))
    # The image tells the parameters apart (otherwise the check above could not fail).
    assert not torch.equal(default, slic_superpixels(img, cfg.n_segments + 1, cfg.compactness))
    assert not torch.equal(default, slic_superpixels(img, cfg.n_segments, cfg.compactness + 1))
    assert np.array_equal(slic_labels(img), default.numpy())


def test_slic_labels_count_from_zero() -> None:
    # Superpixel ids index the S-row colour tables and the -1 "no superpixel" slot S of SGC:
    # they must be exactly 0 .. S-1 (scikit-image's own default start is 1).
    labels = slic_labels(_blob_image())
    ids = np.unique(labels)
    assert ids[0] == 0
    assert np.array_equal(ids, np.arange(ids.size))
    assert labels.flags.c_contiguous


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 4)])
def test_slic_rejects_non_rgb_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="expected an H x W x 3 image"):
        slic_labels(np.zeros(shape, dtype=np.uint8))


def test_rgb_to_lab_matches_scikit_image_including_dark_colours() -> None:
    # Values below the sRGB knee (0.04045) and with Y under (6/29)^3 take the linear pieces of
    # both transfer functions; scikit-image uses the same D65 matrix and white point.
    levels = np.array([0.0, 0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.1, 0.3, 0.7, 1.0])
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    ref = rgb2lab(rgb[:, None, :])[:, 0]
    out = rgb_to_lab(torch.from_numpy(rgb).float()).double().numpy()
    np.testing.assert_allclose(out, ref, atol=2e-3)
    # Grey 0.02: Y = 0.02 / 12.92 -> L = (24389 / 27) * Y = 1.3983 (the CIE linear segment).
    grey = rgb_to_lab(torch.full((1, 3), 0.02))[0]
    assert grey[0].item() == pytest.approx(24389 / 27 * 0.02 / 12.92, abs=1e-4)


def test_rgb_to_lab_keeps_leading_dims_and_dtype() -> None:
    img = torch.rand(2, 5, 3, generator=torch.Generator().manual_seed(0))
    lab = rgb_to_lab(img)
    assert lab.shape == (2, 5, 3)
    torch.testing.assert_close(lab, rgb_to_lab(img.reshape(-1, 3)).reshape(2, 5, 3))
    assert rgb_to_lab(img.double()).dtype == torch.float64


def test_superpixel_colours_default_space_is_lab_and_names_are_checked() -> None:
    img = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1))
    sp = torch.arange(4).repeat_interleave(4).reshape(4, 4)
    default, _ = superpixel_colours(img, sp)
    lab, _ = superpixel_colours(img, sp, "lab")
    rgb, _ = superpixel_colours(img, sp, "rgb")
    assert torch.equal(default, lab) and not torch.allclose(default, rgb)
    with pytest.raises(ValueError, match="colour_space must be 'lab' or 'rgb', got 'hsv'"):
        superpixel_colours(img, sp, "hsv")


def test_superpixel_colours_marks_missing_ids_and_handles_no_superpixel() -> None:
    img = torch.zeros(3, 2, 2)
    img[:, 0, 0] = 1.0
    sp = torch.tensor([[0, 2], [2, -1]])  # id 1 has no pixel
    colours, present = superpixel_colours(img, sp, "rgb")
    assert present.tolist() == [True, False, True]
    assert colours.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    # Crop padding only: no superpixel at all -> S = 0.
    colours, present = superpixel_colours(img, torch.full((2, 2), -1), "rgb")
    assert colours.shape == (0, 3) and present.shape == (0,)


def test_kmeans_no_points() -> None:
    out = kmeans(torch.zeros(0, 3), 4)
    assert out.shape == (0,) and out.dtype == torch.long
    assert kmeans(torch.zeros(0, 3, device="meta"), 4).device.type == "meta"


def test_kmeans_small_spread_one_feature() -> None:
    # Squared distances sum to well under 1: the second centre is still drawn by k-means++, and
    # the two groups separate (S x 1 features are allowed).
    pts = torch.tensor([[0.0], [0.01], [0.3], [0.31]])
    for seed in range(4):
        out = kmeans(pts, 2, seed=seed)
        assert out[0] == out[1] and out[2] == out[3] and out[0] != out[2]


def test_kmeans_plus_plus_picks_one_centre_per_distinct_value() -> None:
    # Four distinct points, three copies each: k-means++ gives an already chosen value weight 0,
    # so the four centres are the four values and every seed returns the four groups.
    values = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    pts = values.repeat_interleave(3, dim=0)
    groups = torch.arange(4).repeat_interleave(3)
    for seed in range(12):
        out = kmeans(pts, 4, seed=seed)
        assert len(set(out.tolist())) == 4
        for g in range(4):
            assert len(set(out[groups == g].tolist())) == 1


def test_kmeans_returns_a_lloyd_fixed_point() -> None:
    # Converged K-means: every point is nearest to the mean of its own cluster. In this set a
    # cluster is left with a single point during the iterations; its centre must move to that
    # point (a stale centre ends in an assignment that is not a fixed point).
    values = [6.934, 8.153, 5.076, 9.867, 6.668, 4.424, 12.422, 5.156, 11.755, 9.579, 5.149,
              9.596, 9.909, 9.494, 5.398, 12.696, 9.607, 9.9, 6.11, 6.519, 9.487, 5.624, 3.208,
              6.948]  # fmt: skip
    pts = torch.tensor(values, dtype=torch.float64)[:, None]
    out = kmeans(pts, 4)
    means = torch.stack([pts[out == j].mean(dim=0) for j in range(4)])
    assert torch.equal(((pts - means.T) ** 2).argmin(dim=1), out)


def test_kmeans_defaults_are_the_config_defaults() -> None:
    # 200 uniform points, k = 8: Lloyd needs more than 20 iterations here, so the iteration
    # count shows in the result; the seed changes the k-means++ start.
    pts = torch.rand(200, 1, generator=torch.Generator().manual_seed(35)).double()
    cfg = SGCConfig()
    default = kmeans(pts, 8)
    assert torch.equal(default, kmeans(pts, 8, iters=cfg.kmeans_iters, seed=cfg.seed))
    assert not torch.equal(default, kmeans(pts, 8, iters=cfg.kmeans_iters + 1, seed=cfg.seed))
    assert not torch.equal(default, kmeans(pts, 8, iters=cfg.kmeans_iters, seed=cfg.seed + 1))


def test_colour_clusters_passes_config_defaults_to_kmeans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[int, int, int]] = []
    real = sgc.kmeans

    def spy(points: torch.Tensor, k: int, iters: int = -1, seed: int = -1) -> torch.Tensor:
        seen.append((k, iters, seed))
        return real(points, k, iters, seed)

    monkeypatch.setattr(sgc, "kmeans", spy)
    img = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(2))
    colour_clusters(img, torch.arange(16).reshape(4, 4))
    cfg = SGCConfig()
    assert seen == [(cfg.n_clusters, cfg.kmeans_iters, cfg.seed)]


def test_colour_clusters_no_superpixel_is_minus_one() -> None:
    # Five superpixels with distinct grey levels and two padding pixels; S = 5 > 3 channels.
    img = torch.linspace(0, 1, 8).reshape(1, 2, 4).expand(3, 2, 4).contiguous()
    sp = torch.tensor([[0, 1, 2, 3], [4, 4, -1, -1]])
    out = colour_clusters(img, sp, n_clusters=5, colour_space="rgb")
    assert out.dtype == torch.long
    assert out[1, 2:].tolist() == [-1, -1]
    assert sorted(set(out[sp >= 0].tolist())) == [0, 1, 2, 3, 4]
    # No superpixel at all: every pixel -1.
    none = colour_clusters(img, torch.full((2, 4), -1))
    assert torch.equal(none, torch.full((2, 4), -1))


def test_target_clusters_defaults_and_ties() -> None:
    clusters = torch.tensor([[0, 0, 1, 1]])
    cam = torch.tensor([[[0.6, 0.6, 0.3, 0.3]]])
    cfg = SGCConfig()
    default = target_clusters(cam, clusters, 2)
    assert default.tolist() == [[True, False]]  # ratio 1 and 0 against theta = 0.5
    assert torch.equal(default, target_clusters(cam, clusters, 2, cfg.tau_hi, cfg.theta))
    # A value equal to tau_hi is not strong ("CAM_c > tau_hi").
    at_tau = torch.tensor([[[0.4, 0.4, 0.0, 0.0]]])
    assert target_clusters(at_tau, clusters, 2, tau_hi=0.4).tolist() == [[False, False]]
    # Ratio exactly theta is not a target ("ratio > theta"): 0.5 / (0.5 + 0.25 + 0.25).
    tie = torch.tensor([[[0.5, 0.25, 0.25, 0.0]]])
    one = torch.zeros(1, 4, dtype=torch.long)
    assert target_clusters(tie, one, 1, tau_hi=0.4, theta=0.5).tolist() == [[False]]


def test_sgc_mask_rejects_width_off_grid_and_empty_classes() -> None:
    with pytest.raises(ValueError, match=r"image 4x5 is not a multiple of the patch grid 2x2"):
        sgc_mask(torch.zeros(1, 2, 2), torch.zeros(4, 5, dtype=torch.long), 2)
    out = sgc_mask(torch.zeros(0, 2, 3), torch.zeros(4, 6, dtype=torch.long), 2)
    assert out.shape == (0, 2, 3)
