"""Attention affinity, the transition matrix, the CLIP-ES box mask and masked refinement
(SSR_SPEC section 4). Pure functions on tensors; N = h * w patches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ssrseg.cam.gradcam import minmax
from ssrseg.precision import fp32_island


def mean_attention(attentions: Mapping[int, Tensor], layers: Sequence[int]) -> Tensor:
    """Average of the given blocks' head-averaged patch attentions: ``B x N x N`` (float32).

    attentions: block index -> ``B x N x N`` (as in ``ViTOutput.attentions``).
    """
    missing = [i for i in layers if i not in attentions]
    if missing:
        raise KeyError(
            f"attention of blocks {missing} was not computed (have {sorted(attentions)})"
        )
    with fp32_island(attentions[layers[0]].device if layers else "cpu"):
        return torch.stack([attentions[i].float() for i in layers]).mean(dim=0)


def fuse_affinity(
    a_clip: Tensor | None, a_dino: Tensor | None, w_clip: float = 0.4, w_dino: float = 0.6
) -> Tensor:
    """``w_clip * A_clip + w_dino * A_dino`` when both are given, else the one given.

    The weights only matter relative to each other after the transition normalisation, but the
    sum is kept as written in the spec. Both ``B x N x N`` on the same patch grid.
    """
    if a_clip is None and a_dino is None:
        raise ValueError("no affinity: enable CLIP attention, DINO attention or both")
    if a_clip is None:
        return a_dino  # type: ignore[return-value]
    if a_dino is None:
        return a_clip
    if a_clip.shape != a_dino.shape:
        raise ValueError(
            f"CLIP affinity {tuple(a_clip.shape)} and DINO affinity {tuple(a_dino.shape)} differ: "
            "both backbones must see the same patch grid (same patch size and input size)"
        )
    return w_clip * a_clip + w_dino * a_dino


def transition_matrix(
    affinity: Tensor, rounds: int = 3, square: bool = True, eps: float = 1e-12
) -> Tensor:
    """CLIP-ES transition matrix: ``rounds`` x (divide by column sums, then by row sums),
    symmetrise ``(T + T^T) / 2``, then ``T @ T`` once if ``square``.

    affinity: ``B x N x N`` non-negative -> ``B x N x N`` symmetric. ``eps`` keeps an all-zero
    column or row (possible only with a masked affinity) at zero instead of NaN.
    """
    with fp32_island(affinity.device):  # T @ T in bf16 moves every refined CAM (measured)
        t = affinity.float()
        for _ in range(rounds):
            t = t / t.sum(dim=-2, keepdim=True).clamp_min(eps)
            t = t / t.sum(dim=-1, keepdim=True).clamp_min(eps)
        t = (t + t.transpose(-2, -1)) / 2
        if square:
            t = t @ t
        return t


def box_seeds(cam: Tensor, threshold: float, quantise: bool = True) -> Tensor:
    """Pixels of each map that seed a box: ``K x h x w`` -> ``K x h x w`` bool.

    quantise=True [CLIP-ES]: on the 8-bit map ``q = floor(255 * cam)`` (its ``astype(uint8)``),
    ``q > int(threshold * max(q))`` (OpenCV's binary threshold on a truncated integer);
    quantise=False: ``cam > threshold * max(cam)`` in floating point. A map whose maximum is
    not positive (or quantises to 0) has no seeds. The two differ at the threshold: with
    ``max(cam) ~ 1`` and t = 0.7 CLIP-ES keeps ``cam >= 178 / 255 = 0.698``.
    """
    x = cam.detach().float()
    if quantise:
        q = torch.floor(x.clamp(0, 1) * 255)  # cam in [0, 1]: truncation == astype(uint8)
        peak = q.flatten(1).amax(dim=1) if q.numel() else q.new_zeros(q.shape[0])
        # int(t * max) in double precision, as Python computes it, then a strict ">".
        thr = torch.tensor([int(threshold * float(p)) for p in peak.tolist()], dtype=q.dtype)
        return q > thr.to(q.device)[:, None, None]
    peak = x.flatten(1).amax(dim=1) if x.numel() else x.new_zeros(x.shape[0])
    return (x > threshold * peak[:, None, None]) & (peak > 0)[:, None, None]


def box_mask(
    cam: Tensor, threshold: float, quantise: bool = True, clip_last: bool = True
) -> Tensor:
    """CLIP-ES box mask on the patch grid: 1 inside the bounding boxes of the 8-connected
    components of the seeds (:func:`box_seeds`).

    cam: ``K x h x w`` -> ``K x h x w`` float (0 / 1). CLIP-ES draws one box per contour
    (OpenCV, all contours); a component's bounding box is the box of its outer contour and
    hole contours lie inside it. clip_last=True [CLIP-ES, WeCLIP]: each box's exclusive end
    is clipped to ``w - 1`` / ``h - 1`` before slicing, so the last patch column and row are
    never inside a box; False: the components' full bounding boxes.
    """
    from scipy import ndimage

    seeds = box_seeds(cam, threshold, quantise).cpu().numpy()
    k, h, w = seeds.shape
    out = np.zeros((k, h, w), dtype=np.float32)
    structure = np.ones((3, 3), dtype=bool)
    for i in range(k):
        if not seeds[i].any():
            continue
        comps, _ = ndimage.label(seeds[i], structure=structure)
        for box in ndimage.find_objects(comps):
            if box is None:
                continue
            rows, cols = box
            r1, c1 = rows.stop, cols.stop
            if clip_last:
                r1, c1 = min(r1, h - 1), min(c1, w - 1)
            out[i, rows.start : r1, cols.start : c1] = 1.0
    return torch.from_numpy(out).to(cam.device)


def refine_with_transition(trans: Tensor, cams: Tensor, masks: Tensor | None = None) -> Tensor:
    """Refine CAMs with a transition matrix whose columns are masked per class.

    ``(T * M_c[None, :]) @ vec(cam_c) == T @ (M_c * vec(cam_c))``, so the mask multiplies the
    CAM and no per-class N x N copy is made.
    trans: ``B x N x N``; cams: ``B x K x h x w``; masks: ``B x K x h x w`` (or None: no mask).
    Returns ``B x K x h x w`` min-max normalised per class.
    """
    b, k, h, w = cams.shape
    with fp32_island(cams.device):
        x = cams.float() if masks is None else cams.float() * masks.float()
        refined = torch.bmm(trans.float(), x.reshape(b, k, h * w).transpose(1, 2))  # B x N x K
        return minmax(refined.transpose(1, 2).reshape(b, k, h, w))


def refine_with_masked_affinity(
    affinity: Tensor, cams: Tensor, masks: Tensor, rounds: int = 3, square: bool = True
) -> Tensor:
    """Paper eq. 10 order: mask the affinity's columns first, then build one transition matrix
    per class (``B*K`` of them; slower, an option). Shapes as :func:`refine_with_transition`."""
    b, k, h, w = cams.shape
    n = h * w
    with fp32_island(cams.device):
        masked = affinity.float()[:, None] * masks.float().reshape(b, k, 1, n)
        trans = transition_matrix(masked.reshape(b * k, n, n), rounds, square)
        refined = torch.bmm(trans, cams.float().reshape(b * k, n, 1))
        return minmax(refined.reshape(b, k, h, w))


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of ``B x K x h x w`` maps to ``B x K x H x W``."""
    if maps.shape[-2:] == size:
        return maps
    with fp32_island(maps.device):
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
