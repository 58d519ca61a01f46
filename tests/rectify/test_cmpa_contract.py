"""CMPA's pure functions at their edges: CAMs of another size than the patch grid, images
without classes, dtypes, scale invariance of the cosine choices, K-means wiring (issue 26,
mutation triage; docs/mutation/rectify.cmpa.md)."""

from __future__ import annotations

import pytest
import torch

from ssrseg.rectify.cmpa import (
    background_weights,
    kmeans,
    masked_average_pool,
    nearest_centroid,
    nearest_prompt,
)
from ssrseg.rectify.sgc import kmeans as lloyd

# 1 x 4 patch grid, features 1..4 (d = 1)
ROW = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])


def test_pool_resizes_a_cam_bilinearly_to_the_patch_grid() -> None:
    # a 1 x 2 CAM (0, 1) on a 1 x 4 grid, bilinear with align_corners=False: source x =
    # (x' + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamped weights (0, 0.25, 0.75, 1);
    # pooled (0.25*2 + 0.75*3 + 1*4) / 2 = 3.375 (align_corners=True: 3.333, nearest: 3.5)
    cam = torch.tensor([[[0.0, 1.0]]])
    same = torch.tensor([[[0.0, 0.25, 0.75, 1.0]]])  # already on the grid: used as it is
    pooled = masked_average_pool(ROW.repeat(2, 1, 1), [cam, same], (1, 4))
    assert [p.shape for p in pooled] == [(1, 1), (1, 1)]
    assert pooled[0].item() == pytest.approx(3.375, rel=1e-5)
    assert pooled[1].item() == pytest.approx(3.375, rel=1e-5)


def test_pool_of_an_image_without_classes_is_empty_and_later_images_still_pool() -> None:
    # B = 2, N = 4 patches, d = 3 (N != d, so a wrong width cannot pass)
    feats = torch.arange(24.0).reshape(2, 4, 3)
    empty = torch.zeros(0, 3, 3)  # another size than the grid: must not reach interpolate
    cam = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    pooled = masked_average_pool(feats, [empty, cam], (2, 2))
    assert len(pooled) == 2
    assert pooled[0].shape == (0, 3) and pooled[0].dtype == feats.dtype
    # image 1, patches 0 and 3: mean of (12, 13, 14) and (21, 22, 23)
    assert pooled[1][0].tolist() == pytest.approx([16.5, 17.5, 18.5], rel=1e-5)


def test_pool_casts_the_cam_to_the_feature_dtype() -> None:
    feats = ROW.double()
    cam = torch.tensor([[[1.0, 0.0, 0.0, 3.0]]])  # float32 CAM, float64 features
    (pooled,) = masked_average_pool(feats, [cam], (1, 4))
    assert pooled.dtype == torch.float64
    assert pooled.item() == pytest.approx((1.0 + 12.0) / (4.0 + 1e-6), rel=1e-12)


def test_pool_eps_is_added_to_the_cam_mass() -> None:
    # CAM mass 1, weighted sum 2: 2 / (1 + eps); eps = 1 makes its sign visible
    cam = torch.tensor([[[0.0, 1.0, 0.0, 0.0]]])
    (pooled,) = masked_average_pool(ROW, [cam], (1, 4), eps=1.0)
    assert pooled.item() == pytest.approx(1.0, rel=1e-6)


def test_background_weight_of_an_all_negative_pixel_is_one() -> None:
    # CAMs are clamped to [0, 1] before the max: a pixel where every class is negative is
    # pure background (weight 1), not more than background
    cam = torch.tensor([[[-0.5, 0.3]], [[-2.0, 0.1]]])
    (w,) = background_weights([cam])
    assert w.flatten().tolist() == pytest.approx([1.0, 0.7])


def test_nearest_prompt_ignores_row_scales_of_features_and_prompts() -> None:
    # cosine only: the norm of a feature or of a prompt must not matter, and one feature's
    # magnitude must not rescale another's (a per-column normalisation would)
    prompts = torch.tensor([[1.0, 0.0], [10.0, 10.0]])  # e0 and the diagonal, unequal norms
    feats = torch.tensor([[1.0, 0.2], [100.0, 0.0], [0.1, 0.3]])
    # (1, 0.2): cos 0.98 vs 0.85 -> 0; (100, 0): 1 vs 0.71 -> 0; (0.1, 0.3): 0.32 vs 0.89 -> 1
    assert nearest_prompt(feats, prompts).tolist() == [0, 0, 1]


def test_nearest_centroid_of_no_features_is_an_empty_long_vector() -> None:
    out = nearest_centroid(torch.zeros(0, 4), torch.eye(4)[:3])
    assert out.shape == (0,) and out.dtype == torch.long


def test_nearest_centroid_of_no_features_keeps_their_device() -> None:
    # "meta" stands in for an accelerator (no computation on it: its first one imports sympy)
    feats = torch.zeros(0, 4, device="meta")
    assert nearest_centroid(feats, torch.eye(4)[:3]).device.type == "meta"


def _spread() -> torch.Tensor:
    # 40 points in 2-D from a seeded generator: no clear clusters, so the partition found
    # depends on the seeding and on the number of Lloyd iterations
    return torch.randn(40, 2, generator=torch.Generator().manual_seed(3))


def test_kmeans_labels_are_sgc_kmeans_with_the_same_iters_and_seed() -> None:
    points = _spread()
    for iters, seed in ((0, 7), (30, 5)):
        _, labels, _ = kmeans(points, 5, iters, seed)
        assert torch.equal(labels, lloyd(points, 5, iters, seed))
    # guard: the fixture is sensitive to both arguments
    assert not torch.equal(lloyd(points, 5, 0, 7), lloyd(points, 5, 7, 0))
    assert not torch.equal(lloyd(points, 5, 30, 5), lloyd(points, 5, 30, 0))
