"""SGC reads the CAM bilinearly upsampled with half-pixel centres (``align_corners=False``):
a hand-computed case where nearest and ``align_corners=True`` give other masks."""

from __future__ import annotations

import torch

from ssrseg.rectify.sgc import sgc_mask


def test_sgc_mask_upsamples_the_cam_bilinearly_with_half_pixel_centres() -> None:
    # grid 1 x 2 -> image 1 x 4 (patch 1 x 2). Bilinear, half-pixel centres, scale 2: pixel x
    # samples source (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped to [0, 1]), so a
    # patch row [a, b] becomes [a, 0.75a + 0.25b, 0.25a + 0.75b, b].
    # class 0 [0.2, 1.0] -> [0.2, 0.40, 0.80, 1.0]; nearest [0.2, 0.2, 1, 1];
    #   align_corners=True -> [0.2, 0.4667, 0.7333, 1.0]
    # class 1 [0.3, 1.0] -> [0.3, 0.475, 0.825, 1.0]; nearest [0.3, 0.3, 1, 1]
    cams = torch.tensor([[[0.2, 1.0]], [[0.3, 1.0]]])
    clusters = torch.tensor([[0, 1, 2, 3]])  # every pixel its own cluster
    # tau_hi 0.45: a pixel is a target iff its value > 0.45 (one pixel per cluster, theta 0.5)
    # patch 0 of class 0: bilinear pixel 1 = 0.40 -> share 0; class 1: 0.475 -> share 1/2
    # patch 1: pixels >= 0.73 in every mode -> share 1; patch_majority 0.25
    mask = sgc_mask(cams, clusters, 4, tau_hi=0.45, theta=0.5, patch_majority=0.25)
    assert mask.tolist() == [[[0.0, 1.0]], [[1.0, 1.0]]]
    # what the other modes would give (nearest: both patch 0 off; corners: both on)
    nearest = torch.tensor([[0.2, 0.2, 1.0, 1.0], [0.3, 0.3, 1.0, 1.0]])
    corners = torch.tensor(
        [[0.2, 0.2 + 0.8 / 3, 0.2 + 1.6 / 3, 1.0], [0.3, 0.3 + 0.7 / 3, 0.3 + 1.4 / 3, 1.0]]
    )
    for pix, patch0 in ((nearest, [0.0, 0.0]), (corners, [1.0, 1.0])):
        share = (pix[:, :2] > 0.45).float().mean(dim=1)
        assert ((share > 0.25).float()).tolist() == patch0
