"""Your own data: a folder of images plus a tag file; masks optional (for evaluation).

Layout::

    root/images/<id>.jpg|png     (or the images directly in root/)
    root/tags.json | tags.csv    image_id -> class names (or pass tag_file)
    root/classes.txt             foreground class names, one per line (or pass class_names)
    root/masks/<id>.png          optional ground truth (palette or index PNG: 0 bg, c+1, 255)
    root/splits/<split>.txt      optional id lists (or root/<split>.txt); split "all" = every
                                 image in the folder
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ssrseg.data.base import (
    IMAGE_EXTENSIONS,
    first_file,
    open_tags,
    read_id_list,
)
from ssrseg.data.classes import read_class_file
from ssrseg.data.stem_files import StemFileDataset
from ssrseg.data.tags import Tags
from ssrseg.errors import BadInputError


class FolderDataset(StemFileDataset):
    """Images in a folder with a tag file (see module docstring)."""

    name = "folder"
    palette_name = "voc"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "all",
        tag_file: str | os.PathLike[str] | None = None,
        class_names: Sequence[str] | None = None,
        *,
        with_masks: bool | None = None,
        min_size: int = 0,
        require_labels: bool = True,
    ) -> None:
        base = Path(root)
        if not base.is_dir():
            raise BadInputError(base, "dataset folder not found")
        self.image_dir = base / "images" if (base / "images").is_dir() else base
        if class_names is None:
            if not (base / "classes.txt").is_file():
                raise BadInputError(
                    base / "classes.txt",
                    "class names needed: write classes.txt (one per line) or pass class names",
                )
            class_names = read_class_file(str(base / "classes.txt"))
        if tag_file is None:
            for name in ("tags.json", "tags.csv"):
                if (base / name).is_file():
                    tag_file = base / name
                    break
        tags, _ = open_tags(
            tag_file,
            class_names,
            base / "tags.json",
            need_own=require_labels,
            missing="tag file not found (tags.json or tags.csv)",
        )
        self._tags: Tags = tags or {}
        found = first_file((base / "splits" / f"{split}.txt", base / f"{split}.txt"))
        list_file: Path = found if found is not None else self.image_dir
        if list_file.is_file():
            ids = read_id_list(list_file)
        elif split == "all":
            ids = sorted({p.stem for p in self.image_dir.iterdir() if p.suffix in IMAGE_EXTENSIONS})
        else:
            raise BadInputError(
                base / "splits" / f"{split}.txt", f"no list file for split {split!r} (or use 'all')"
            )
        super().__init__(
            base,
            split,
            class_names,
            ids,
            list_file,
            min_size=min_size,
            require_labels=require_labels,
            tag_source=str(tag_file) if tag_file is not None else "",
        )
        self.mask_dir = base / "masks"
        self.with_masks = with_masks

    def raw_tags(self, image_id: str) -> list[str] | None:
        return self._tags.get(image_id)
