"""Balanced segmentation loss and affinity loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from weclip_reference import (
    weclip_aff_loss,
    weclip_affinity_label,
    weclip_radius_mask,
    weclip_seg_loss,
)

from ssrseg.model.losses import (
    affinity_loss,
    affinity_targets,
    balanced_seg_loss,
    feature_affinity,
)


def _ce(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def test_balanced_seg_loss_hand_computed() -> None:
    # 1 x 3 x 1 x 4 logits; pixels: bg, fg 1, fg 2, ignore
    pix = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 1.5], [9.0, 0.0, 0.0]]
    logits = torch.tensor(pix).t().reshape(1, 3, 1, 4)
    target = torch.tensor([[[0, 1, 2, 255]]])
    bg = _ce(pix[0], 0)
    fg = (_ce(pix[1], 1) + _ce(pix[2], 2)) / 2
    assert balanced_seg_loss(logits, target).item() == pytest.approx(0.5 * (bg + fg), rel=1e-6)


def test_balanced_seg_loss_batch_without_foreground_is_finite() -> None:
    pix = [[2.0, 0.0], [1.0, 1.0]]
    logits = torch.tensor(pix).t().reshape(1, 2, 1, 2).requires_grad_(True)
    loss = balanced_seg_loss(logits, torch.tensor([[[0, 0]]]))
    expected = 0.5 * (_ce(pix[0], 0) + _ce(pix[1], 0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    no_bg = balanced_seg_loss(logits, torch.tensor([[[1, 255]]]))
    assert no_bg.item() == pytest.approx(0.5 * _ce(pix[0], 1), rel=1e-6)
    nothing = balanced_seg_loss(logits, torch.tensor([[[255, 255]]]))
    nothing.backward()
    assert nothing.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_affinity_targets_from_small_label_map() -> None:
    # patch size 2, 8 x 8 labels -> 4 x 4 grid sampled at even pixels; odd pixels hold 7,
    # which must never be read
    grid_labels = torch.tensor(
        [[0, 0, 1, 255], [0, 1, 1, 1], [2, 2, 1, 0], [2, 2, 0, 0]], dtype=torch.long
    )
    labels = torch.full((1, 8, 8), 7, dtype=torch.long)
    labels[0, ::2, ::2] = grid_labels
    t = affinity_targets(labels, patch_size=2, grid=(4, 4), radius=1)
    assert t.shape == (1, 16, 16)
    idx = lambda i, j: 4 * i + j  # noqa: E731
    assert t[0, idx(0, 0), idx(0, 1)] == 1  # 0 vs 0, adjacent
    assert t[0, idx(0, 1), idx(0, 2)] == 0  # 0 vs 1
    assert t[0, idx(0, 2), idx(0, 3)] == 255  # 255 involved
    assert t[0, idx(0, 0), idx(1, 1)] == 0  # diagonal neighbour, 0 vs 1
    assert t[0, idx(0, 0), idx(0, 2)] == 255  # Chebyshev distance 2 > radius 1
    assert t[0, idx(2, 0), idx(3, 1)] == 1  # 2 vs 2 diagonal
    assert t[0, idx(2, 2), idx(2, 2)] == 1  # self pair
    assert torch.equal(t[0], t[0].t())
    # counts: every non-ignored patch pairs with its <= 8 neighbours and itself
    assert int((t == 255).sum()) > 0 and int((t == 7).sum()) == 0


def test_affinity_loss_hand_computed() -> None:
    p = torch.tensor([[[0.9, 0.2], [0.4, 0.7]]])
    targets = torch.tensor([[[1, 0], [255, 1]]])
    # pos: (1-0.9) + (1-0.7) = 0.4 over n_pos + 1 = 3; neg: 0.2 over n_neg + 1 = 2
    expected = 0.5 * 0.4 / 3 + 0.5 * 0.2 / 2
    assert affinity_loss(p, targets).item() == pytest.approx(expected, rel=1e-6)


def test_feature_affinity_is_sigmoid_of_gram() -> None:
    f = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # B=1, E=2, h=1, w=2
    p = feature_affinity(f)
    expected = torch.sigmoid(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
    assert torch.allclose(p[0], expected)


def _weclip_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2-image batch of 64 x 80 labels (patch 16: a 4 x 5 grid) with blobs of 3 classes and
    matching logits; a few 255 pixels, one of them on a patch's sampled (top-left) pixel."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 4, (2, 1, 8, 10), generator=g).float()
    labels = F.interpolate(small, size=(64, 80), mode="nearest")[:, 0].long()
    labels[0, 16, 32] = 255
    labels[1, 5:9, 70:75] = 255
    logits = torch.randn(2, 4, 64, 80, generator=g)
    return logits, labels


def test_seg_loss_equals_weclips_get_seg_loss() -> None:
    for seed in range(3):
        logits, labels = _weclip_batch(seed)
        ours = balanced_seg_loss(logits, labels)
        torch.testing.assert_close(ours, weclip_seg_loss(logits, labels), rtol=1e-6, atol=1e-7)


def test_affinity_targets_and_loss_equal_weclips() -> None:
    # WeCLIP at crop 320: a 20 x 20 grid and radius 8; here a 4 x 5 grid and radius 2
    mask = weclip_radius_mask(4, 5, 2)
    g = torch.Generator().manual_seed(0)
    for seed in range(3):
        _, labels = _weclip_batch(seed)
        ref = weclip_affinity_label(labels, mask, 16)
        ours = affinity_targets(labels, 16, (4, 5), radius=2)
        assert torch.equal(ours, ref)
        p = torch.rand(2, 20, 20, generator=g)
        torch.testing.assert_close(affinity_loss(p, ours), weclip_aff_loss(p, ref))
    assert bool((ref == 255).any()) and bool((ref == 0).any()) and bool((ref == 1).any())
