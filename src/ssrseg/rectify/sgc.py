"""SGC, superpixel-guided correction (SSR_SPEC section 5).

1. SLIC superpixels of the image (:func:`slic_superpixels`, once per image, cacheable);
2. K-means over the superpixels' mean colours (:func:`colour_clusters`) -> a cluster id per
   pixel (-1 where there is no superpixel, e.g. crop padding);
3. per class c and cluster k: ``ratio = sum(CAM_c > tau_hi over k) / sum(CAM_c over k)`` on the
   CAM bilinearly upsampled to the image (pixel level, as the spec defines it); target if
   ``ratio > theta`` (:func:`target_clusters`);
4. patch mask: a patch is 1 if more than ``patch_majority`` of its pixels lie in target clusters
   (:func:`sgc_mask`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ssrseg.rectify.slic import slic_labels


def slic_superpixels(image: np.ndarray, n_segments: int = 100, compactness: float = 10.0) -> Tensor:
    """SLIC label map of an ``H x W x 3`` uint8 RGB image: ``H x W`` long, labels from 0
    (:func:`ssrseg.rectify.slic.slic_labels`, what the superpixel pool's workers run)."""
    return torch.from_numpy(slic_labels(image, n_segments, compactness)).long()


def rgb_to_lab(rgb01: Tensor) -> Tensor:
    """sRGB in [0, 1] (``... x 3``) -> CIE Lab (D65), ``... x 3``, in the input's dtype."""
    c = rgb01.float()
    lin = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = torch.tensor(
        [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
         [0.019334, 0.119193, 0.950227]],
        dtype=lin.dtype, device=lin.device,
    )  # fmt: skip
    white = torch.tensor([0.95047, 1.0, 1.08883], dtype=lin.dtype, device=lin.device)
    xyz = (lin @ m.t()) / white
    delta = 6.0 / 29.0
    f = torch.where(
        xyz > delta**3, xyz.clamp_min(1e-12) ** (1.0 / 3.0), xyz / (3 * delta**2) + 4 / 29
    )
    lab = torch.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], dim=-1
    )
    return lab.to(rgb01.dtype)


def superpixel_colours(
    image01: Tensor, superpixels: Tensor, colour_space: str = "lab"
) -> tuple[Tensor, Tensor]:
    """Mean colour of each superpixel.

    image01: ``3 x H x W`` in [0, 1]; superpixels: ``H x W`` long (-1 = none).
    Returns (``S x 3`` mean colours, float32; ``S`` bool, True where the id has pixels), with
    S = max id + 1.
    """
    if colour_space not in ("lab", "rgb"):
        raise ValueError(f"colour_space must be 'lab' or 'rgb', got {colour_space!r}")
    pix = image01.permute(1, 2, 0).reshape(-1, 3).float()
    if colour_space == "lab":
        pix = rgb_to_lab(pix)
    ids = superpixels.reshape(-1).to(pix.device)
    keep = ids >= 0
    if not bool(keep.all()):
        pix, ids = pix[keep], ids[keep]
    s = int(ids.max()) + 1 if ids.numel() else 0
    # index_add_ with a ones column: sums and counts in one pass (bincount is slower on CPU).
    acc = torch.zeros(s, 4, dtype=pix.dtype, device=pix.device)
    acc.index_add_(0, ids, torch.cat([pix, torch.ones_like(pix[:, :1])], dim=1))
    counts = acc[:, 3]
    return acc[:, :3] / counts.clamp_min(1)[:, None], counts > 0


def _sq_dist(x: Tensor, c: Tensor) -> Tensor:
    """Squared distances ``S x K`` (explicit: ``torch.cdist`` has a large overhead on tiny
    inputs)."""
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(dim=-1)


def kmeans(points: Tensor, k: int, iters: int = 20, seed: int = 0) -> Tensor:
    """Deterministic K-means (k-means++ seeding from ``seed``, Lloyd iterations).

    points: ``S x F`` -> cluster id per point, ``S`` long in [0, min(k, S)). A cluster that
    loses all its points keeps its centre.
    """
    s = points.shape[0]
    if s == 0:
        return torch.zeros(0, dtype=torch.long, device=points.device)
    x = points.detach().double().cpu()
    k = min(k, s)
    gen = torch.Generator().manual_seed(seed)
    centres = [x[int(torch.randint(s, (1,), generator=gen))]]
    d2 = _sq_dist(x, centres[0][None])[:, 0]
    for _ in range(1, k):
        if float(d2.sum()) <= 0:  # fewer distinct points than k: reuse the first point
            centres.append(x[0])
            continue
        centres.append(x[int(torch.multinomial(d2 / d2.sum(), 1, generator=gen))])
        d2 = torch.minimum(d2, _sq_dist(x, centres[-1][None])[:, 0])
    c = torch.stack(centres)
    assign = _sq_dist(x, c).argmin(dim=1)
    for _ in range(iters):
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.zeros(k, dtype=x.dtype).index_add_(0, assign, torch.ones_like(x[:, 0]))
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        new = _sq_dist(x, c).argmin(dim=1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign.to(points.device)


def colour_clusters(
    image01: Tensor,
    superpixels: Tensor,
    n_clusters: int = 8,
    colour_space: str = "lab",
    iters: int = 20,
    seed: int = 0,
) -> Tensor:
    """Cluster id per pixel: K-means over superpixel mean colours, ``H x W`` long (-1 = none).

    image01: ``3 x H x W`` in [0, 1]; superpixels: ``H x W`` long (-1 = none).
    """
    colours, present = superpixel_colours(image01, superpixels, colour_space)
    sp = superpixels.to(image01.device)
    lut = torch.full((colours.shape[0] + 1,), -1, dtype=torch.long, device=image01.device)
    ids = torch.nonzero(present).squeeze(1)
    lut[ids] = kmeans(colours[ids], n_clusters, iters, seed)
    return lut[torch.where(sp >= 0, sp, colours.shape[0])]  # index S (the -1 slot) for none


def target_clusters(
    cams: Tensor, clusters: Tensor, n_clusters: int, tau_hi: float = 0.4, theta: float = 0.5
) -> Tensor:
    """Ratio test: ``K x n_clusters`` bool, True where the share of cluster k's CAM mass that
    lies above ``tau_hi`` exceeds ``theta``.

    cams: ``K x H x W`` (pixel level); clusters: ``H x W`` long (-1 = none).
    """
    k = cams.shape[0]
    flat = clusters.reshape(-1)
    keep = flat >= 0
    ids = flat[keep]
    vals = cams.reshape(k, -1)[:, keep].float()
    strong = vals * (vals > tau_hi)
    total = torch.zeros(k, n_clusters, device=cams.device).index_add_(1, ids, vals)
    high = torch.zeros(k, n_clusters, device=cams.device).index_add_(1, ids, strong)
    return high > theta * total.clamp_min(1e-12)


def sgc_mask(
    cams: Tensor,
    clusters: Tensor,
    n_clusters: int,
    tau_hi: float = 0.4,
    theta: float = 0.5,
    patch_majority: float = 0.5,
) -> Tensor:
    """Per-class patch mask.

    cams: ``K x h x w`` CAMs on the patch grid (upsampled bilinearly to the image inside);
    clusters: ``H x W`` cluster ids (-1 = none), H and W multiples of h and w.
    Returns ``K x h x w`` float (0 / 1).
    """
    k, gh, gw = cams.shape
    height, width = clusters.shape
    if height % gh or width % gw:
        raise ValueError(f"image {height}x{width} is not a multiple of the patch grid {gh}x{gw}")
    if k == 0:
        return cams.new_zeros(0, gh, gw)
    pix = F.interpolate(cams[None].float(), size=(height, width), mode="bilinear")[0]
    targets = target_clusters(pix, clusters, n_clusters, tau_hi, theta)  # K x n_clusters
    # Column n_clusters is the "no cluster" slot (never a target).
    lut = torch.cat([targets, targets.new_zeros(k, 1)], dim=1).float()
    slot = torch.where(clusters >= 0, clusters, n_clusters)
    pixel_mask = lut[:, slot]  # K x H x W
    share = F.avg_pool2d(pixel_mask[None], kernel_size=(height // gh, width // gw))[0]
    return (share > patch_majority).float()
