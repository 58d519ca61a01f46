"""MS COCO 2014 with the field's 81-class converted masks (0 background, 1..80, 255 ignore).

Two layouts are accepted (``S`` = ``train2014`` or ``val2014``):

1. split folders: images in ``root/S/`` (or ``root/images/S/``, ``root/JPEGImages/S/``,
   ``root/coco2014/S/``), masks in ``root/SegmentationClass/S/<stem>.png``;
2. flat (``MSCOCO/`` of WeCLIP-style repos): images in ``root/JPEGImages/``, masks in
   ``root/SegmentationClass/``, the split chosen by a list file or by the ``COCO_S_`` prefix.

Ids are file stems (``COCO_val2014_000000000042``; bare numbers in a list file are expanded). A
list file is looked up as ``root/ImageSets/Segmentation/<split>.txt``,
``root/ImageSets/<split>.txt``, ``root/<split>.txt`` or ``root/<S>.txt``; without one, every
image of the split's folder is used. Tags come from a tag
file or from ``root/annotations/instances_S.json`` (category ids map to :data:`COCO_CLASSES` in
id order).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssrseg.data.base import (
    IMAGE_EXTENSIONS,
    first_file,
    open_tags,
    read_id_list,
    read_mask,
)
from ssrseg.data.classes import COCO_CATEGORIES, COCO_CLASSES
from ssrseg.data.stem_files import StemFileDataset
from ssrseg.data.tags import Tags, coco_instances_tags
from ssrseg.errors import BadInputError


def coco_split_folder(split: str) -> str:
    """``train`` -> ``train2014``; ``val`` -> ``val2014``; other names unchanged."""
    return f"{split}2014" if split in ("train", "val") else split


def _find_layout(root: Path, folder: str) -> tuple[Path, Path, bool]:
    """(image dir, mask dir, flat?) for the split folder name ``folder``."""
    for images in (
        root / folder,
        root / "images" / folder,
        root / "JPEGImages" / folder,
        root / "coco2014" / folder,
    ):
        if images.is_dir():
            return images, root / "SegmentationClass" / folder, False
    if (root / "JPEGImages").is_dir():
        return root / "JPEGImages", root / "SegmentationClass", True
    raise BadInputError(
        root,
        f"no COCO image folder for {folder!r}: expected {folder}/, images/{folder}/, "
        f"JPEGImages/{folder}/ or a flat JPEGImages/ (see docs/datasets.md)",
    )


class CocoDataset(StemFileDataset):
    """MS COCO 2014 (train 82,081 / val 40,137 images with masks).

    Args:
        root, split, tag_file, class_names, min_size, require_labels, with_masks: as
            :class:`ssrseg.data.voc.VOCDataset`.
        instances: instances JSON for tags (default ``root/annotations/instances_S.json``).
        mask_category_ids: masks hold raw COCO category ids (1..90) instead of 1..80; they are
            remapped on reading.
    """

    name = "coco"
    palette_name = "coco"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        tag_file: str | os.PathLike[str] | None = None,
        class_names: Sequence[str] | None = None,
        *,
        instances: str | os.PathLike[str] | None = None,
        with_masks: bool | None = None,
        mask_category_ids: bool = False,
        min_size: int = 0,
        require_labels: bool = True,
    ) -> None:
        base = Path(root)
        folder = coco_split_folder(split)
        images, masks, flat = _find_layout(base, folder)
        list_file = first_file(
            (
                base / "ImageSets" / "Segmentation" / f"{split}.txt",
                base / "ImageSets" / f"{split}.txt",
                base / f"{split}.txt",
                base / f"{folder}.txt",
            )
        )
        if list_file is not None:
            ids = read_id_list(list_file)
        else:
            prefix = f"COCO_{folder}_" if flat else ""
            ids = sorted(
                p.stem
                for p in images.iterdir()
                if p.suffix in IMAGE_EXTENSIONS and p.name.startswith(prefix)
            )
            list_file = images
        names = tuple(class_names) if class_names is not None else COCO_CLASSES
        self._instances = (
            Path(instances) if instances else base / "annotations" / f"instances_{folder}.json"
        )
        self._tags: Tags | None
        self._tags, source = open_tags(
            tag_file,
            names,
            self._instances,
            need_own=require_labels,
            missing="COCO instances JSON not found and no tag file given: tags are needed",
        )
        if self._tags is None and require_labels:
            # read once here, not lazily in every DataLoader worker
            self._tags = coco_instances_tags(self._instances)
        super().__init__(
            base,
            split,
            names,
            ids,
            list_file,
            min_size=min_size,
            require_labels=require_labels,
            tag_source=source,
        )
        self.image_dir = images
        self.mask_dir = masks
        self.flat = flat
        self.with_masks = with_masks
        self.mask_category_ids = mask_category_ids
        self.folder = folder

    def file_stem(self, image_id: str) -> str:
        """File stem of an id; list files may hold bare numbers (``42`` or ``000000000042``)."""
        if image_id.isdigit():
            return f"COCO_{self.folder}_{int(image_id):012d}"
        return image_id

    def raw_tags(self, image_id: str) -> list[str] | None:
        if self._tags is None:
            if not self._instances.is_file():
                return None
            self._tags = coco_instances_tags(self._instances)
        tags = self._tags.get(image_id)
        return tags if tags is not None else self._tags.get(self.file_stem(image_id))

    def load_mask(self, index: int) -> np.ndarray | None:
        if not self.mask_category_ids:
            return super().load_mask(index)

        image_id = self.checked_id(index)
        path = self.mask_path(image_id)
        if path is None:
            return None
        lut = np.full(256, 255, dtype=np.uint8)
        lut[0] = 0
        for i, (cid, _) in enumerate(COCO_CATEGORIES):
            lut[cid] = i + 1
        raw = read_mask(path)
        bad = (lut[raw] == 255) & (raw != 255)
        if bad.any():
            values = sorted({int(v) for v in np.unique(raw[bad])})[:8]
            raise BadInputError(
                path, f"mask holds values {values} that are not COCO category ids", image_id
            )
        return lut[raw]
