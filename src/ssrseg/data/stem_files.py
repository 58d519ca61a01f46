"""Datasets whose images and masks are found by file stem in two folders (COCO, folder)."""

from __future__ import annotations

from pathlib import Path

from ssrseg.data.base import SegDataset, find_image


class StemFileDataset(SegDataset):
    """Images ``image_dir/<stem>.<any image extension>``, masks ``mask_dir/<stem>.png``.

    Subclasses set :attr:`image_dir` and :attr:`mask_dir`, and map an id to its file stem in
    :meth:`file_stem` (the id itself by default). Without an explicit :attr:`with_masks`, the
    split has masks when ``mask_dir`` exists.
    """

    image_dir: Path
    mask_dir: Path

    def file_stem(self, image_id: str) -> str:
        return image_id

    def image_path(self, image_id: str) -> Path:
        return find_image(self.image_dir, self.file_stem(image_id))

    def mask_path(self, image_id: str) -> Path | None:
        return self.mask_in(self.mask_dir / f"{self.file_stem(image_id)}.png")

    @property
    def has_masks(self) -> bool:
        return self.with_masks if self.with_masks is not None else self.mask_dir.is_dir()
