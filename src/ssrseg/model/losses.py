"""Decoder losses (SSR_SPEC section 8): balanced segmentation loss and the affinity loss.

Pure functions; tensors in, scalar tensors out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = 255


def balanced_seg_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE) -> Tensor:
    """``0.5 * (mean CE over background pixels + mean CE over foreground pixels)``.

    logits: ``B x K x H x W`` (already at the label size); target: ``B x H x W`` long with 0 =
    background, 1..K-1 foreground, ``ignore_index`` ignored. Means run over the whole batch.
    A term whose pixel set is empty (a batch without background or foreground) is left out
    (the other keeps its weight 0.5), so the loss stays finite; with no valid pixel at all it
    is 0 (in the graph).
    """
    ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    bg = target == 0
    fg = (target != 0) & (target != ignore_index)
    terms = [0.5 * ce[mask].mean() for mask in (bg, fg) if bool(mask.any())]
    if not terms:
        # still in the graph (zero gradient); only then, as it costs a pass over the logits
        return logits.sum() * 0.0
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def affinity_targets(
    labels: Tensor, patch_size: int, grid: tuple[int, int], radius: int, ignore_index: int = IGNORE
) -> Tensor:
    """Pairwise targets from pixel labels sampled at the patch grid.

    labels: ``B x H x W`` long; the label of patch (i, j) is the pixel at
    (patch_size * i, patch_size * j) (nearest sampling). Returns ``B x N x N`` long: 1 if both
    patches have the same label, 0 if different, ``ignore_index`` if either is ignored or their
    Chebyshev distance on the grid exceeds ``radius``.
    """
    h, w = grid
    small = labels[:, ::patch_size, ::patch_size][:, :h, :w]
    if small.shape[1:] != (h, w):
        raise ValueError(f"labels {tuple(labels.shape[1:])} too small for grid {grid}")
    flat = small.reshape(small.shape[0], h * w)
    same = (flat[:, :, None] == flat[:, None, :]).long()
    ii, jj = torch.meshgrid(
        torch.arange(h, device=labels.device), torch.arange(w, device=labels.device), indexing="ij"
    )
    ii, jj = ii.reshape(-1), jj.reshape(-1)
    far = torch.maximum((ii[:, None] - ii[None]).abs(), (jj[:, None] - jj[None]).abs()) > radius
    ignored = (flat == ignore_index)[:, :, None] | (flat == ignore_index)[:, None, :] | far[None]
    return same.masked_fill(ignored, ignore_index)


def feature_affinity(fused: Tensor) -> Tensor:
    """``p = sigmoid(F^T F)``: fused ``B x E x h x w`` -> ``B x N x N``."""
    f = fused.permute(0, 2, 3, 1).flatten(1, 2).float()  # B x N x E (no copy if channels-last)
    return torch.sigmoid(f @ f.transpose(1, 2))


def affinity_loss(affinity: Tensor, targets: Tensor) -> Tensor:
    """``0.5 * sum_pos(1 - p) / (n_pos + 1) + 0.5 * sum_neg(p) / (n_neg + 1)`` over the batch.

    affinity: ``B x N x N`` in [0, 1]; targets: ``B x N x N`` (1 pos, 0 neg, other ignored).
    """
    pos = (targets == 1).to(affinity.dtype)
    neg = (targets == 0).to(affinity.dtype)
    pos_term = ((1 - affinity) * pos).sum() / (pos.sum() + 1)
    neg_term = (affinity * neg).sum() / (neg.sum() + 1)
    return 0.5 * pos_term + 0.5 * neg_term
