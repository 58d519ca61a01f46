"""SLIC superpixels as a NumPy array, without torch.

The superpixel pool's worker processes (:mod:`ssrseg.engine.superpixel_pool`) run this function;
it imports only NumPy and scikit-image, so a spawned worker starts in a fraction of a second and
holds tens of MB instead of the hundreds a torch import takes. The in-process path
(:func:`ssrseg.rectify.sgc.slic_superpixels`) wraps the same function: both give the same labels.
"""

from __future__ import annotations

import numpy as np


def slic_labels(image: np.ndarray, n_segments: int = 100, compactness: float = 10.0) -> np.ndarray:
    """SLIC label map of an ``H x W x 3`` uint8 RGB image: ``H x W`` integer labels from 0
    (C-contiguous)."""
    from skimage.segmentation import slic  # scikit-image loads its submodules on first use

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {image.shape}")
    labels = slic(image, n_segments=n_segments, compactness=compactness, start_label=0)
    return np.ascontiguousarray(labels)
