"""SGC on hand-made images, superpixels and CAMs."""

from __future__ import annotations

import numpy as np
import torch

from ssrseg.rectify.sgc import (
    colour_clusters,
    kmeans,
    rgb_to_lab,
    sgc_mask,
    slic_superpixels,
    superpixel_colours,
    target_clusters,
)


def test_target_clusters_keeps_strong_drops_weak() -> None:
    clusters = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, -1, -1], [2, 2, -1, -1]])
    cam = torch.zeros(1, 4, 4)
    cam[0, :2, :2] = 0.9  # cluster 0: all mass above tau_hi -> ratio 1 -> target
    cam[0, :2, 2:] = 0.3  # cluster 1: weakly activated -> ratio 0 -> dropped
    cam[0, 2, :2] = 0.8  # cluster 2: half strong pixels -> ratio 1.6 / 1.8 = 0.89 -> target
    cam[0, 3, :2] = 0.1
    t = target_clusters(cam, clusters, n_clusters=3, tau_hi=0.4, theta=0.5)
    assert t.tolist() == [[True, False, True]]
    # A higher theta drops cluster 2 (0.89 < 0.9) but keeps cluster 0.
    t = target_clusters(cam, clusters, n_clusters=3, tau_hi=0.4, theta=0.9)
    assert t.tolist() == [[True, False, False]]


def test_sgc_mask_patch_majority() -> None:
    # 8 x 8 image, patch 2 -> 4 x 4 grid. CAM 1 on the two left patch columns, 0 on the right.
    # Upsampled bilinearly, pixel columns 0-3 are 1, column 4 is 0.75, 5 is 0.25, 6-7 are 0.
    cam = torch.zeros(1, 4, 4)
    cam[0, :, :2] = 1.0
    clusters = torch.ones(8, 8, dtype=torch.long)
    clusters[:, :5] = 0  # cluster 0: pixel columns 0-4, all strong -> target
    clusters[0, :] = -1  # first pixel row belongs to no superpixel (crop padding)
    # Cluster 1 (columns 5-7) has mass only at 0.25 < tau_hi -> dropped.
    expected = torch.zeros(1, 4, 4)
    expected[0, :, :2] = 1
    expected[0, 0, :] = 0  # top patches: only 2 of 4 pixels in a cluster -> share 0.5, not > 0.5
    mask = sgc_mask(cam, clusters, n_clusters=2, tau_hi=0.4, theta=0.5, patch_majority=0.5)
    assert torch.equal(mask, expected)
    # Patch column 2 (pixel columns 4-5) has half its pixels in cluster 0.
    mask = sgc_mask(cam, clusters, n_clusters=2, patch_majority=0.4)
    expected[0, 1:, 2] = 1
    expected[0, 0, :2] = 1  # share 0.5 > 0.4
    assert torch.equal(mask, expected)


def test_sgc_on_two_colour_image_masks_the_object_region() -> None:
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[:, :] = (30, 120, 200)  # blue background
    img[8:24, 8:24] = (220, 40, 40)  # red square
    sp = slic_superpixels(img, n_segments=16, compactness=10.0)
    image01 = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    clusters = colour_clusters(image01, sp, n_clusters=2)
    assert clusters[16, 16] != clusters[2, 2]
    cam = torch.zeros(1, 4, 4)
    cam[0, 1:3, 1:3] = 1.0  # CAM on the square, patch 8
    cam[0, 0, 0] = 0.3  # weak leak into the background
    mask = sgc_mask(cam, clusters, n_clusters=2)
    expected = torch.zeros(1, 4, 4)
    expected[0, 1:3, 1:3] = 1
    assert torch.equal(mask, expected)


def test_kmeans_deterministic_and_separates_blobs() -> None:
    g = torch.Generator().manual_seed(0)
    pts = torch.cat([torch.randn(20, 3, generator=g), torch.randn(20, 3, generator=g) + 10])
    a = kmeans(pts, 2, seed=3)
    b = kmeans(pts, 2, seed=3)
    assert torch.equal(a, b)
    assert len(set(a[:20].tolist())) == 1 and len(set(a[20:].tolist())) == 1
    assert a[0] != a[20]
    assert kmeans(pts[:3], 8).tolist() == [0, 1, 2] or len(set(kmeans(pts[:3], 8).tolist())) == 3
    assert kmeans(torch.zeros(5, 3), 3).max() < 3  # duplicates: no crash, valid ids


def test_superpixel_colours_and_lab() -> None:
    image = torch.zeros(3, 2, 2)
    image[:, 0, 0] = 1.0  # white pixel in superpixel 0
    sp = torch.tensor([[0, 1], [1, -1]])
    cols, present = superpixel_colours(image, sp, "rgb")
    torch.testing.assert_close(cols, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert present.tolist() == [True, True]
    lab = rgb_to_lab(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    torch.testing.assert_close(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=1e-2, rtol=0)
    torch.testing.assert_close(lab[1], torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(lab[2], torch.tensor([53.24, 80.09, 67.20]), atol=0.05, rtol=0)
