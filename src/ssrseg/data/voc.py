"""PASCAL VOC 2012 (and the VOC-like toy world): images, image-level tags, masks.

Layout (``root`` may be ``VOCdevkit/VOC2012``, ``VOCdevkit`` or their parent)::

    VOC2012/JPEGImages/<id>.jpg          images (.jpg/.jpeg/.png accepted)
    VOC2012/Annotations/<id>.xml         object names -> image-level tags
    VOC2012/ImageSets/Segmentation/{train,val,test,train_aug}.txt
    VOC2012/SegmentationClass/<id>.png   palette masks (train/val)
    VOC2012/SegmentationClassAug/<id>.png  index masks of the SBD-augmented set (optional)

Without ``train_aug.txt`` the ``train_aug`` list is derived, where the files are present, as the
ids of ``SegmentationClassAug`` minus those of ``val.txt`` (10,582 ids for the usual files).
Tags never come from masks: from the XML annotations, or from a tag file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ssrseg.data.base import SegDataset, find_image, open_tags, read_id_list
from ssrseg.data.classes import VOC_CLASSES, read_class_file
from ssrseg.data.tags import Tags, voc_xml_tags
from ssrseg.errors import BadInputError

SPLITS_WITHOUT_MASKS = ("test",)


def find_voc_root(root: str | os.PathLike[str]) -> Path:
    """The folder holding ``JPEGImages`` among ``root``, ``root/VOC2012``,
    ``root/VOCdevkit/VOC2012``."""
    base = Path(root)
    for candidate in (base, base / "VOC2012", base / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise BadInputError(
        base,
        "no JPEGImages folder here, in VOC2012/ or in VOCdevkit/VOC2012/ (see docs/datasets.md)",
    )


def derive_train_aug(voc_root: Path) -> list[str]:
    """train_aug ids = SegmentationClassAug ids minus val.txt ids (sorted)."""
    aug = voc_root / "SegmentationClassAug"
    if not aug.is_dir():
        raise BadInputError(
            voc_root / "ImageSets" / "Segmentation" / "train_aug.txt",
            "split list not found and SegmentationClassAug/ is missing, so it cannot be derived "
            "(see docs/datasets.md: SBD / SegmentationClassAug)",
        )
    val_file = voc_root / "ImageSets" / "Segmentation" / "val.txt"
    val = set(read_id_list(val_file)) if val_file.is_file() else set()
    return sorted(p.stem for p in aug.glob("*.png") if p.stem not in val)


class VOCDataset(SegDataset):
    """PASCAL VOC 2012 segmentation splits (train 1,464 / train_aug 10,582 / val 1,449 /
    test 1,456, no masks).

    Args:
        root: dataset root (see module docstring).
        split: list name under ``ImageSets/Segmentation``.
        tag_file: JSON / CSV / one-hot ``.npy`` tags; None: the XML annotations.
        class_names: foreground classes (default :data:`VOC_CLASSES`).
        with_masks: True: a missing mask is bad input; None: masks where present; False: none.
        include_difficult: XML objects marked ``difficult`` count as tags [decision: yes, the
            object is in the image].
        min_size / require_labels: see :class:`SegDataset`.
    """

    name = "voc"
    palette_name = "voc"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        tag_file: str | os.PathLike[str] | None = None,
        class_names: Sequence[str] | None = None,
        *,
        with_masks: bool | None = None,
        include_difficult: bool = True,
        min_size: int = 0,
        require_labels: bool = True,
    ) -> None:
        voc_root = find_voc_root(root)
        list_file = voc_root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if list_file.is_file() or split != "train_aug":
            ids = read_id_list(list_file)
        else:
            ids = derive_train_aug(voc_root)
            list_file = voc_root / "SegmentationClassAug"
        names = tuple(class_names) if class_names is not None else VOC_CLASSES
        self._tags: Tags | None
        self._tags, source = open_tags(
            tag_file,
            names,
            voc_root / "Annotations",
            need_own=require_labels,
            missing="no Annotations folder and no tag file: image-level tags are needed",
        )
        super().__init__(
            voc_root,
            split,
            names,
            ids,
            list_file,
            min_size=min_size,
            require_labels=require_labels,
            tag_source=source,
        )
        self.include_difficult = include_difficult
        if split in SPLITS_WITHOUT_MASKS and with_masks:
            raise BadInputError(list_file, f"split {split!r} has no ground-truth masks")
        self.with_masks = False if split in SPLITS_WITHOUT_MASKS else with_masks

    def image_path(self, image_id: str) -> Path:
        return find_image(self.root / "JPEGImages", image_id)

    def mask_path(self, image_id: str) -> Path | None:
        if self.with_masks is False:
            return None
        for folder in ("SegmentationClass", "SegmentationClassAug"):
            path = self.root / folder / f"{image_id}.png"
            if path.is_file():
                return path
        return self.root / "SegmentationClass" / f"{image_id}.png" if self.with_masks else None

    @property
    def has_masks(self) -> bool:
        if self.with_masks is not None:
            return self.with_masks
        return (self.root / "SegmentationClass").is_dir() or (
            self.root / "SegmentationClassAug"
        ).is_dir()

    def tag_location(self, image_id: str) -> str:
        if self._tags is not None:
            return self.tag_source
        return str(self.root / "Annotations" / f"{image_id}.xml")

    def no_tags_reason(self, image_id: str) -> str:
        if self._tags is not None:
            return super().no_tags_reason(image_id)
        return (
            "annotation XML not found (VOC's image-level tags come from Annotations/<id>.xml; "
            "restore the file or pass --tag-file)"
        )

    def raw_tags(self, image_id: str) -> list[str] | None:
        if self._tags is not None:
            return self._tags.get(image_id)
        xml = self.root / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            return None
        return voc_xml_tags(xml, self.include_difficult)


class ToyDataset(VOCDataset):
    """The toy world on disk: a VOC-like folder with ``classes.txt`` and ``tags.json``."""

    name = "toy"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        tag_file: str | os.PathLike[str] | None = None,
        class_names: Sequence[str] | None = None,
        **kwargs: object,
    ) -> None:
        base = Path(root)
        if class_names is None:
            class_names = read_class_file(str(base / "classes.txt"))
        if tag_file is None and (
            kwargs.get("require_labels", True) or (base / "tags.json").is_file()
        ):
            tag_file = base / "tags.json"
        super().__init__(root, split, tag_file, class_names, **kwargs)  # type: ignore[arg-type]
