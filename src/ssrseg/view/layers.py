"""Pure per-image maths of the page: colour layers and per-image scores (numpy only).

Label maps are ``H x W`` uint8 (0 background, c + 1 class c, 255 ignore); colour layers are
``H x W x 4`` uint8 RGBA drawn over the image with the page's opacity slider.
"""

from __future__ import annotations

import math

import numpy as np

from ssrseg.metrics import confusion_hist
from ssrseg.viz import jet

IGNORE = 255
ERROR_RGBA = (255, 0, 0, 255)  # a wrong pixel
BOUNDARY_RGBA = (255, 255, 255, 255)  # a superpixel boundary


def label_rgba(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``H x W`` labels -> ``H x W x 4``: the palette colour of each class, background
    transparent (the image shows through), ignore (255) in the palette's ignore colour."""
    rgba = np.empty((*labels.shape, 4), dtype=np.uint8)
    rgba[..., :3] = palette[labels.astype(np.intp)]
    rgba[..., 3] = np.where(labels == 0, 0, 255)
    return rgba


def error_rgba(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``H x W x 4``: red where the prediction differs from the ground truth; pixels whose
    ground truth or prediction is ignore (255) and right pixels are transparent."""
    wrong = (pred != gt) & (gt != IGNORE) & (pred != IGNORE)
    rgba = np.zeros((*gt.shape, 4), dtype=np.uint8)
    rgba[wrong] = ERROR_RGBA
    return rgba


def cam_rgb(cam: np.ndarray) -> np.ndarray:
    """``H x W`` CAM in [0, 1] -> ``H x W x 3`` jet heat map."""
    return jet(cam)


def boundary_rgba(segments: np.ndarray) -> np.ndarray:
    """``H x W`` superpixel ids -> ``H x W x 4``: white on pixels whose right or lower
    neighbour lies in another superpixel, transparent elsewhere."""
    edge = np.zeros(segments.shape, dtype=bool)
    edge[:, :-1] |= segments[:, :-1] != segments[:, 1:]
    edge[:-1, :] |= segments[:-1, :] != segments[1:, :]
    rgba = np.zeros((*segments.shape, 4), dtype=np.uint8)
    rgba[edge] = BOUNDARY_RGBA
    return rgba


def present_classes(labels: np.ndarray) -> list[int]:
    """0-based foreground classes present in a label map (background and ignore left out)."""
    values = np.unique(labels)
    return [int(v) - 1 for v in values if 0 < v < IGNORE]


def sparse_hist(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> list[list[int]]:
    """The image's confusion matrix as ``[gt, pred, pixels]`` triples of its non-zero cells
    (predicted and ground-truth ignore pixels left out, as :mod:`ssrseg.metrics` does)."""
    hist, _ = confusion_hist(pred, gt, num_classes)
    g, p = np.nonzero(hist)
    return [[int(a), int(b), int(hist[a, b])] for a, b in zip(g, p, strict=True)]


def dense_hist(cells: list[list[int]], num_classes: int) -> np.ndarray:
    """``K x K`` int64 matrix from :func:`sparse_hist` triples (summed when repeated)."""
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)
    for g, p, n in cells:
        hist[g, p] += n
    return hist


def image_miou(cells: list[list[int]], num_classes: int) -> float | None:
    """Per-image mIoU: the mean IoU over the classes in the image's ground truth or prediction
    (the others have no IoU); None when no pixel was scored."""
    hist = dense_hist(cells, num_classes).astype(np.float64)
    tp = np.diag(hist)
    union = hist.sum(axis=0) + hist.sum(axis=1) - tp
    seen = union > 0
    if not seen.any():
        return None
    value = float((tp[seen] / union[seen]).mean())
    return value if math.isfinite(value) else None


def fit_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) shrunk so the long side is at most ``long_side`` (never enlarged; >= 1)."""
    scale = min(1.0, long_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))
