"""PAR: pixel-adaptive refinement of score maps with local colour affinity (SSR_SPEC section 7).

Definitions (WeCLIP's PAR; see ``docs/par_crf.md``):

- Neighbours: for every dilation ``d`` in ``cfg.dilations`` the 8 pixels at offsets
  ``(dy, dx) in {-d, 0, d}^2 \\ {(0, 0)}``; ``M = 8 * len(dilations)`` neighbours in all. Image
  borders use replicate padding, i.e. neighbour coordinates are clamped into the image.
- Colour affinity of neighbour m at pixel p, per colour channel c:
  ``-(|I_c(p + o_m) - I_c(p)| / (std_c(p) + 1e-8) / t)^2`` with ``std_c(p)`` the unbiased
  standard deviation of ``I_c`` over the M neighbours of p (the centre pixel is not in the set)
  and ``t = cfg.colour_temperature``; then averaged over the channels.
- Position affinity: the same formula on the neighbour's distance (``d`` for axis neighbours,
  ``sqrt(2) d`` for diagonals) with the std over the M distances; it does not depend on the
  image, so it is one constant M-vector per dilation set.
- Weights: ``softmax_m(colour) + position_weight * softmax_m(position)``; they sum to
  ``1 + position_weight`` per pixel (1.01), so each iteration scales the scores by 1.01 and 20
  iterations by about 1.22 (the argmax is unchanged). ``cfg.normalise`` divides the weights by
  ``1 + position_weight`` to remove that drift (off by default, as in WeCLIP).
- Iteration: ``scores(p) <- sum_m w_m(p) scores(p + o_m)``, ``cfg.iterations`` times.

Implementation: the weights are computed once per image; each iteration replicate-pads the
scores once by the largest dilation and adds the M shifted views (slices, no copies) with
in-place ``addcmul_``. Replicate padding is index clamping, so one padding by the largest
dilation serves every smaller dilation too. On the CPU, for float32 / float64 inputs that need
no autograd graph, the weights and the propagation run in compiled kernels
(:mod:`ssrseg.rectify.par_native`: the same arithmetic in the same order, one pass over the
pixels per iteration, threads synchronised once per iteration instead of once per neighbour);
the torch form is the fallback and the reference (``docs/performance.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ssrseg.config import PARConfig
from ssrseg.rectify import par_native

_EPS = 1e-8  # [WeCLIP] added to the std before dividing


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """The M = 8 * len(dilations) neighbour offsets ``(dy, dx)``, per dilation row-major."""
    offsets = []
    for d in dilations:
        if d < 1:
            raise ValueError(f"PAR dilations must be positive integers, got {tuple(dilations)}")
        for dy in (-d, 0, d):
            for dx in (-d, 0, d):
                if dy or dx:
                    offsets.append((dy, dx))
    return offsets


def position_weights(
    dilations: Sequence[int],
    temperature: float,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Softmax over the M neighbours of the position affinity -> M (a constant per neighbour)."""
    dist = torch.tensor(
        [math.hypot(dy, dx) for dy, dx in neighbour_offsets(dilations)],
        dtype=torch.float64,
    )
    # unbiased std over the neighbour set, as for the colour term
    std = dist.std() if dist.numel() > 1 else torch.zeros((), dtype=torch.float64)
    logits = -((dist / (std + _EPS) / temperature) ** 2)
    return torch.softmax(logits, dim=0).to(device=device, dtype=dtype)


def _shifted(padded: torch.Tensor, pad: int, dy: int, dx: int, h: int, w: int) -> torch.Tensor:
    """View of ``padded`` (.. x (h + 2 pad) x (w + 2 pad)) shifted by (dy, dx) -> .. x h x w."""
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32 for the exp/softmax maths; float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def _colour_logits(
    img: torch.Tensor, offsets: Sequence[tuple[int, int]], temperature: float
) -> torch.Tensor:
    """Colour-affinity logits, torch form: B x C x H x W -> B x M x H x W (module docstring)."""
    b, _, h, w = img.shape
    m = len(offsets)
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(img, [pad] * 4, mode="replicate")
    # two passes (mean, then squared deviations) instead of a B x C x M x H x W stack: the
    # streaming sums need M times less memory and the centred second pass stays accurate
    mean = torch.zeros_like(img)
    for dy, dx in offsets:
        mean += _shifted(padded, pad, dy, dx, h, w)
    mean /= m
    var = torch.zeros_like(img)
    for dy, dx in offsets:
        var += (_shifted(padded, pad, dy, dx, h, w) - mean) ** 2
    var /= max(m - 1, 1)  # unbiased, as torch.std over the neighbour dimension
    inv = 1.0 / ((var.sqrt() + _EPS) * temperature)  # B x C x H x W

    logits = img.new_empty(b, m, h, w)
    for i, (dy, dx) in enumerate(offsets):
        diff = (_shifted(padded, pad, dy, dx, h, w) - img) * inv
        logits[:, i] = -(diff * diff).mean(dim=1)
    return logits


def par_weights(
    images01: torch.Tensor, cfg: PARConfig
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """PAR neighbour weights of images already at the score size.

    Args:
        images01: B x 3 x H x W float images in [0, 1] (any channel count works).
        cfg: dilations, colour_temperature, position_weight, normalise.

    Returns:
        (weights B x M x H x W in the images' floating dtype (at least float32), offsets: the M
        ``(dy, dx)`` pairs in the order of the weights' dimension 1).
    """
    if images01.dim() != 4:
        raise ValueError(f"par_weights expects B x C x H x W images, got {tuple(images01.shape)}")
    offsets = neighbour_offsets(cfg.dilations)
    m = len(offsets)
    img = images01.to(_work_dtype(images01.dtype))
    pos = position_weights(cfg.dilations, cfg.colour_temperature, img.device, img.dtype)
    lib = par_native.load() if par_native.supported(img) else None
    if lib is not None:
        # the same arithmetic in one compiled pass over the pixels (par_native)
        norm = 1.0 + cfg.position_weight if cfg.normalise else None
        weights = par_native.weights(
            lib, img, offsets, _EPS, cfg.colour_temperature, cfg.position_weight * pos, norm
        )
        return weights, offsets
    logits = _colour_logits(img, offsets, cfg.colour_temperature)
    # out of place: softmax's backward needs its output unmodified (PAR stays differentiable)
    weights = torch.softmax(logits, dim=1) + cfg.position_weight * pos.view(1, m, 1, 1)
    if cfg.normalise:
        weights = weights / (1.0 + cfg.position_weight)
    return weights, offsets


def par_propagate(
    scores: torch.Tensor,
    weights: torch.Tensor,
    offsets: Sequence[tuple[int, int]],
    iterations: int,
) -> torch.Tensor:
    """Apply ``scores <- sum_m w_m * shift_m(scores)`` ``iterations`` times.

    Args:
        scores: B x K x H x W.
        weights: B x M x H x W from :func:`par_weights` (same H, W).
        offsets: the M ``(dy, dx)`` neighbour offsets.
        iterations: number of propagation steps.

    Returns:
        B x K x H x W in the dtype of ``weights``.
    """
    b, k, h, w = scores.shape
    if weights.shape[0] != b or weights.shape[-2:] != (h, w) or weights.shape[1] != len(offsets):
        raise ValueError(
            f"PAR weights {tuple(weights.shape)} do not match scores {tuple(scores.shape)} "
            f"and {len(offsets)} offsets"
        )
    if k == 0 or iterations <= 0 or not offsets:
        return scores.to(weights.dtype)
    cur = scores.to(weights.dtype)
    lib = par_native.load() if par_native.supported(cur, weights) else None
    if lib is not None:
        # all iterations in one compiled call, one thread synchronisation per iteration
        return par_native.propagate(lib, cur, weights, list(offsets), iterations)
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    w_maps = weights.unsqueeze(2)  # B x M x 1 x H x W, broadcast over the K score channels
    for _ in range(iterations):
        padded = F.pad(cur, [pad] * 4, mode="replicate")
        nxt = torch.zeros_like(cur)
        for i, (dy, dx) in enumerate(offsets):
            nxt.addcmul_(_shifted(padded, pad, dy, dx, h, w), w_maps[:, i])
        cur = nxt
    return cur


def par_refine(images01: torch.Tensor, scores: torch.Tensor, cfg: PARConfig) -> torch.Tensor:
    """Refine score maps with PAR.

    Args:
        images01: B x 3 x H' x W' float images in [0, 1]; resized bilinearly (antialias off,
            ``cfg.align_corners``: True as in WeCLIP) to the scores' H x W when the sizes differ.
        scores: B x K x H x W score maps (e.g. [background, classes of the image]).
        cfg: ``PARConfig``; with ``cfg.enabled`` False the scores are returned unchanged.

    Returns:
        B x K x H x W refined scores, on the scores' device and dtype. Pixels outside a crop's
        valid area take part like any other pixel (their padded colour decides their weights);
        callers mask the resulting labels with their ``valid`` map.
    """
    if scores.dim() != 4 or images01.dim() != 4:
        raise ValueError(
            f"par_refine expects B x 3 x H x W images and B x K x H x W scores, got "
            f"{tuple(images01.shape)} and {tuple(scores.shape)}"
        )
    if images01.shape[0] != scores.shape[0]:
        raise ValueError(
            f"par_refine: batch sizes differ (images {images01.shape[0]}, scores {scores.shape[0]})"
        )
    if not cfg.enabled:
        return scores
    size = tuple(scores.shape[-2:])
    images = images01.to(device=scores.device, dtype=_work_dtype(images01.dtype))
    if tuple(images.shape[-2:]) != size:
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=cfg.align_corners)
    weights, offsets = par_weights(images, cfg)
    weights = weights.to(_work_dtype(scores.dtype))
    return par_propagate(scores, weights, offsets, cfg.iterations).to(scores.dtype)
