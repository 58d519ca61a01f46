"""Datasets (VOC, COCO, your own folder, the toy world), tags, transforms.

``build_dataset(name, root, split)`` is the one entry point; every dataset yields
:class:`~ssrseg.data.base.Sample` items and raises :class:`~ssrseg.errors.BadInputError`
for bad files, which jobs skip and report via :func:`~ssrseg.data.base.iter_valid`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ssrseg.data.base import (
    SafeDataset,
    Sample,
    SegDataset,
    SkipLog,
    Skipped,
    iter_valid,
    read_image,
    read_mask,
)
from ssrseg.data.classes import COCO_CLASSES, VOC_CLASSES, read_class_file
from ssrseg.data.coco import CocoDataset
from ssrseg.data.folder import FolderDataset
from ssrseg.data.voc import ToyDataset, VOCDataset
from ssrseg.errors import BadInputError

DATASETS = ("voc", "coco", "folder", "toy")

__all__ = [
    "COCO_CLASSES",
    "DATASETS",
    "VOC_CLASSES",
    "BadInputError",
    "SafeDataset",
    "Sample",
    "SegDataset",
    "SkipLog",
    "Skipped",
    "build_dataset",
    "iter_valid",
    "read_image",
    "read_mask",
]


def build_dataset(
    name: str,
    root: str | os.PathLike[str],
    split: str,
    tag_file: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | str | None = None,
    **kwargs: Any,
) -> SegDataset:
    """Build dataset ``name`` (voc | coco | folder | toy).

    ``class_names`` may be a sequence or the path of a class-name file. Extra keyword arguments
    (``min_size``, ``require_labels``, ``with_masks``, ...) go to the dataset class.
    Raises :class:`BadInputError` when the dataset as a whole cannot be opened.
    """
    names: Sequence[str] | None
    if isinstance(class_names, str):
        names = read_class_file(class_names)
    else:
        names = class_names
    if name == "voc":
        return VOCDataset(root, split, tag_file, names, **kwargs)
    if name == "toy":
        return ToyDataset(root, split, tag_file, names, **kwargs)
    if name == "coco":
        return CocoDataset(root, split, tag_file, names, **kwargs)
    if name == "folder":
        return FolderDataset(root, split, tag_file, names, **kwargs)
    raise ValueError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
