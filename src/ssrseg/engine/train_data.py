"""What the training loader reads: augmented crops with their superpixels, item by item, and
how many loader workers the machine can use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ssrseg.config import SSRConfig
from ssrseg.data.base import Skipped
from ssrseg.data.transforms import TrainTransform, collate_train
from ssrseg.errors import BadInputError
from ssrseg.rectify.sgc import slic_superpixels

__all__ = ["TrainItems", "collate", "loader_workers"]


class TrainItems(Dataset[Any]):
    """Dataset wrapper for the training loader: item ``(index, seed)`` -> augmented crop.

    Superpixels (when ``with_superpixels``) are computed once on the whole image and carried
    through rescale / crop / flip with nearest sampling (SSR_SPEC section 5). Bad inputs come
    back as ``Skipped`` and are reported by the trainer.
    """

    def __init__(self, dataset: Any, cfg: SSRConfig, with_superpixels: bool) -> None:
        self.dataset = dataset
        self.cfg = cfg
        self.with_superpixels = with_superpixels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        try:
            sample = self.dataset[index]
        except BadInputError as exc:
            return Skipped(exc.image_id or self.dataset.ids[index], str(exc))
        sp = None
        if self.with_superpixels:
            sgc = self.cfg.sgc
            sp = slic_superpixels(sample.image, sgc.n_segments, sgc.compactness).numpy()
        d = self.cfg.data
        transform = TrainTransform(
            d.crop_size,
            d.scale_range,
            d.hflip,
            rng=np.random.default_rng(seed),
            scale_rounding=d.scale_rounding,
        )
        return transform(sample, sp)


def collate(samples: Sequence[Any]) -> dict[str, Any]:
    return collate_train(samples)


def loader_workers(requested: int, cpus: int) -> int:
    """``data.num_workers`` capped at the machine's cores: more workers than cores only add
    processes that wait (a preset's 4 on a 2-core machine gives 2). Data order and
    augmentation do not depend on the worker count (seeds come from the sampler)."""
    return max(0, min(requested, cpus))
