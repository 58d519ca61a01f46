"""Training augmentation and batching; per-backbone normalisation constants.

:class:`TrainTransform` applies random rescale, random crop (padding with ignore) and horizontal
flip to an image and any number of per-pixel maps (ground truth, superpixel labels). Maps are
resampled with nearest neighbour so labels never blend.

WeCLIP's loader flips before it pads and crops; here the flip comes last. With uniform pad and
crop offsets the two orders give the same distribution of crops (a flipped crop at x is the crop
at ``W - c - x`` of the flipped image), so only the random draws differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ssrseg.data.base import IGNORE_INDEX, Sample, Skipped

# CLIP (OpenAI) and ImageNet (DINO) normalisation, RGB.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Names of ``data.clip_normalisation``: WeCLIP's training images reach CLIP normalised with the
# ImageNet statistics; CLIP-ES (and CLIP itself) use CLIP's.
INPUT_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
}

SUPERPIXEL_PAD = -1


def normalize(images01: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel. images01: B x 3 x H x W in [0, 1] -> same shape."""
    m = torch.as_tensor(mean, dtype=images01.dtype, device=images01.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images01.dtype, device=images01.device).view(1, -1, 1, 1)
    return (images01 - m) / s


def clip_normalize(images01: torch.Tensor) -> torch.Tensor:
    """CLIP mean/std normalisation of B x 3 x H x W images in [0, 1]."""
    return normalize(images01, CLIP_MEAN, CLIP_STD)


def imagenet_normalize(images01: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation (DINO) of B x 3 x H x W images in [0, 1]."""
    return normalize(images01, IMAGENET_MEAN, IMAGENET_STD)


def input_stats(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) of a normalisation name (``imagenet`` | ``clip``), RGB, for [0, 1] images."""
    if name not in INPUT_STATS:
        raise ValueError(f"normalisation must be one of {sorted(INPUT_STATS)}, got {name!r}")
    return INPUT_STATS[name]


def scaled_size(height: int, width: int, scale: float, rounding: str) -> tuple[int, int]:
    """Side lengths after rescaling by ``scale``: ``floor`` truncates ``scale * side`` as
    WeCLIP's ``int(scale * w)``; ``round`` rounds to the nearest. Never below 1."""
    if rounding == "floor":
        return max(1, int(height * scale)), max(1, int(width * scale))
    if rounding == "round":
        return max(1, round(height * scale)), max(1, round(width * scale))
    raise ValueError(f"data.scale_rounding must be floor | round, got {rounding!r}")


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x H x W float32 in [0, 1]."""
    # a float copy: images decoded from PIL are read-only, which torch.from_numpy warns about
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).div_(255.0)


def resize_nearest(label: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an H x W map of any dtype (pixel-centre sampling)."""
    h, w = label.shape[:2]
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return label[rows[:, None], cols[None, :]]


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an H x W x 3 uint8 image."""
    if image.shape[:2] == (height, width):
        return image
    pil = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(pil, dtype=np.uint8)


@dataclass
class TrainSample:
    """One augmented crop: image crop_size x crop_size x 3 uint8; mask crop x crop uint8 (255 in
    padding, None if the sample had no mask); superpixels crop x crop int32 (-1 in padding) or
    None; valid crop x crop bool (False in padding)."""

    image_id: str
    image: np.ndarray
    labels: tuple[int, ...]
    mask: np.ndarray | None
    superpixels: np.ndarray | None
    valid: np.ndarray


class TrainTransform:
    """Random rescale (uniform factor in ``scale_range``) -> pad to at least the crop size
    (image 0, mask 255, superpixels -1, valid False) -> random crop -> random horizontal flip.

    Args:
        crop_size: side of the square crop (pixels).
        scale_range: (min, max) rescale factor of both sides.
        hflip: flip with probability 0.5.
        seed / rng: a seed or a ``numpy.random.Generator`` (rng wins) for reproducible crops.
        scale_rounding: ``floor`` (WeCLIP) or ``round``, see :func:`scaled_size`.
    """

    def __init__(
        self,
        crop_size: int,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip: bool = True,
        seed: int | None = None,
        rng: np.random.Generator | None = None,
        scale_rounding: str = "floor",
    ) -> None:
        scaled_size(1, 1, 1.0, scale_rounding)  # validates the name
        if crop_size <= 0:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be 0 < min <= max, got {scale_range}")
        self.crop_size = int(crop_size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = hflip
        self.scale_rounding = scale_rounding
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    def apply(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
        superpixels: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
        """Augment image (H x W x 3 uint8) and its maps (H x W); returns (image, mask,
        superpixels, valid), all crop_size x crop_size."""
        h, w = image.shape[:2]
        for name, m in (("mask", mask), ("superpixels", superpixels)):
            if m is not None and m.shape[:2] != (h, w):
                raise ValueError(f"{name} is {m.shape[:2]} but the image is {(h, w)}")
        scale = float(self.rng.uniform(*self.scale_range))
        nh, nw = scaled_size(h, w, scale, self.scale_rounding)
        image = resize_image(image, nh, nw)
        mask = resize_nearest(mask, nh, nw) if mask is not None else None
        superpixels = resize_nearest(superpixels, nh, nw) if superpixels is not None else None
        valid = np.ones((nh, nw), dtype=bool)

        c = self.crop_size
        ph, pw = max(c, nh), max(c, nw)
        # place the (smaller) image at a random offset inside the padded canvas
        oy = int(self.rng.integers(0, ph - nh + 1))
        ox = int(self.rng.integers(0, pw - nw + 1))

        def pad(arr: np.ndarray, fill: int) -> np.ndarray:
            if (ph, pw) == (nh, nw):
                return arr
            out = np.full((ph, pw, *arr.shape[2:]), fill, dtype=arr.dtype)
            out[oy : oy + nh, ox : ox + nw] = arr
            return out

        image = pad(image, 0)
        valid = pad(valid, 0)
        mask = pad(mask, IGNORE_INDEX) if mask is not None else None
        superpixels = (
            pad(superpixels.astype(np.int32), SUPERPIXEL_PAD) if superpixels is not None else None
        )
        y = int(self.rng.integers(0, ph - c + 1))
        x = int(self.rng.integers(0, pw - c + 1))
        flip = self.hflip and bool(self.rng.random() < 0.5)

        def crop(arr: np.ndarray) -> np.ndarray:
            out = arr[y : y + c, x : x + c]
            return np.ascontiguousarray(out[:, ::-1] if flip else out)

        return (
            crop(image),
            crop(mask) if mask is not None else None,
            crop(superpixels) if superpixels is not None else None,
            crop(valid),
        )

    def __call__(self, sample: Sample, superpixels: np.ndarray | None = None) -> TrainSample:
        image, mask, sp, valid = self.apply(sample.image, sample.mask, superpixels)
        return TrainSample(sample.image_id, image, sample.labels, mask, sp, valid)


def collate_train(samples: Sequence[TrainSample | Skipped]) -> dict[str, object]:
    """Stack augmented crops into a batch.

    Returns ``images`` B x 3 x H x W float in [0, 1]; ``labels`` list of tuples; ``masks``
    B x H x W long (255 where unknown: padding or no mask); ``superpixels`` B x H x W long or
    None (when no sample has them); ``valid`` B x H x W bool; ``ids``; ``skipped`` list of
    (id, message) for items a :class:`~ssrseg.data.base.SafeDataset` could not load.
    """
    skipped = [(s.image_id, s.message) for s in samples if isinstance(s, Skipped)]
    good = [s for s in samples if isinstance(s, TrainSample)]
    if not good:
        return {
            "images": None,
            "labels": [],
            "masks": None,
            "superpixels": None,
            "valid": None,
            "ids": [],
            "skipped": skipped,
        }
    images = torch.stack([to_tensor(s.image) for s in good])
    masks = torch.stack(
        [
            torch.from_numpy(s.mask.astype(np.int64))
            if s.mask is not None
            else torch.full(s.valid.shape, IGNORE_INDEX, dtype=torch.long)
            for s in good
        ]
    )
    with_sp = [s.superpixels is not None for s in good]
    if any(with_sp) and not all(with_sp):
        raise ValueError("some samples of the batch have superpixels and others not")
    superpixels = (
        torch.stack([torch.from_numpy(s.superpixels.astype(np.int64)) for s in good])  # type: ignore[union-attr]
        if all(with_sp)
        else None
    )
    valid = torch.stack([torch.from_numpy(s.valid) for s in good])
    return {
        "images": images,
        "labels": [s.labels for s in good],
        "masks": masks,
        "superpixels": superpixels,
        "valid": valid,
        "ids": [s.image_id for s in good],
        "skipped": skipped,
    }
