"""Balanced segmentation loss and affinity loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

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
