"""A SLIC stand-in for the superpixel pool's worker processes. Spawned workers import the
function they run by its module's name, so it lives in a light module of its own (NumPy only)
that the workers can import from the tests folder (spawn passes the parent's ``sys.path``)."""

from __future__ import annotations

import numpy as np

from ssrseg.rectify.slic import slic_labels

BAD_WIDTH = 24  # cli_fakes' img1 (40 x 24) keeps its size as the labeller's input


def slic_failing_on_width_24(image: np.ndarray, n_segments: int, compactness: float) -> np.ndarray:
    """The real SLIC, except for images ``BAD_WIDTH`` pixels wide."""
    if image.shape[1] == BAD_WIDTH:
        raise ValueError(f"no superpixels for a {image.shape[1]}-pixel-wide image")
    return slic_labels(image, n_segments, compactness)
