"""Builders of tiny on-disk datasets (VOC, COCO in both layouts, folder, toy) for tests.

Each image is a flat grey background with one filled rectangle per tagged class; the mask holds
``c + 1`` inside the rectangle and 0 elsewhere, so expected labels and masks are known.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ssrseg.viz import save_label_png

H, W = 24, 32


def scene(classes: Sequence[int], h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    """(image H x W x 3 uint8, mask H x W uint8) with one 6 x 8 rectangle (48 pixels) per
    0-based class; rectangles of up to three classes never overlap."""
    image = np.full((h, w, 3), 100, dtype=np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    for k, c in enumerate(classes):
        y0, x0 = 2 + 4 * k, 2 + 10 * k
        image[y0 : y0 + 6, x0 : x0 + 8] = ((40 * c) % 256, 200, (90 * c) % 256)
        mask[y0 : y0 + 6, x0 : x0 + 8] = c + 1
    return image, mask


def voc_xml(path: Path, names: Sequence[str], difficult: Sequence[bool] | None = None) -> None:
    objs = []
    for i, name in enumerate(names):
        diff = 1 if difficult and difficult[i] else 0
        objs.append(
            f"<object><name>{name}</name><difficult>{diff}</difficult>"
            "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename>{''.join(objs)}</annotation>")


def save_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def make_voc(
    root: Path,
    splits: dict[str, dict[str, Sequence[int]]],
    class_names: Sequence[str],
    aug: dict[str, Sequence[int]] | None = None,
    ext: str = ".png",
) -> Path:
    """VOCdevkit/VOC2012 under ``root``: ``splits`` maps split -> {id: 0-based classes}.
    ``aug`` adds SBD-style images with index masks in SegmentationClassAug only (no list).
    Images are PNG by default (lossless, so pixel checks are exact). Returns VOC2012 path."""
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(
            "".join(f"{i}\n" for i in items)
        )
        for image_id, classes in items.items():
            image, mask = scene(classes)
            save_rgb(voc / "JPEGImages" / f"{image_id}{ext}", image)
            voc_xml(voc / "Annotations" / f"{image_id}.xml", [class_names[c] for c in classes])
            if split != "test":
                save_label_png(voc / "SegmentationClass" / f"{image_id}.png", mask, "voc")
                save_label_png(voc / "SegmentationClassAug" / f"{image_id}.png", mask, None)
    for image_id, classes in (aug or {}).items():
        image, mask = scene(classes)
        save_rgb(voc / "JPEGImages" / f"{image_id}{ext}", image)
        voc_xml(voc / "Annotations" / f"{image_id}.xml", [class_names[c] for c in classes])
        save_label_png(voc / "SegmentationClassAug" / f"{image_id}.png", mask, None)
    return voc


def make_coco(root: Path, items: dict[str, Sequence[int]], layout: str, split: str = "val") -> Path:
    """COCO 2014 in layout ``"split"`` (root/val2014, SegmentationClass/val2014) or ``"flat"``
    (JPEGImages/, SegmentationClass/); ``items`` maps a numeric-suffix id to 0-based classes.
    Writes annotations/instances_<split>2014.json. Returns root."""
    from ssrseg.data.classes import COCO_CATEGORIES

    folder = f"{split}2014"
    img_dir = root / folder if layout == "split" else root / "JPEGImages"
    mask_dir = (
        root / "SegmentationClass" / folder if layout == "split" else root / "SegmentationClass"
    )
    images, annotations = [], []
    for n, (num, classes) in enumerate(items.items()):
        stem = f"COCO_{folder}_{int(num):012d}"
        image, mask = scene(classes)
        save_rgb(img_dir / f"{stem}.jpg", image)
        save_label_png(mask_dir / f"{stem}.png", mask, None)
        images.append({"id": int(num), "file_name": f"{stem}.jpg", "height": H, "width": W})
        for c in classes:
            annotations.append(
                {
                    "id": 1000 + len(annotations),
                    "image_id": int(num),
                    "category_id": COCO_CATEGORIES[c][0],
                }
            )
        del n
    ann = root / "annotations" / f"instances_{folder}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    return root


def _scenes_with_tags(
    root: Path,
    items: dict[str, Sequence[int]],
    class_names: Sequence[str],
    image_dir: str,
    mask_dir: str,
) -> Path:
    """A scene per id (PNG image in ``image_dir``, VOC-palette mask in ``mask_dir``) plus
    ``classes.txt`` and ``tags.json``: what the folder and toy layouts share."""
    for image_id, classes in items.items():
        image, mask = scene(classes)
        save_rgb(root / image_dir / f"{image_id}.png", image)
        save_label_png(root / mask_dir / f"{image_id}.png", mask, "voc")
    (root / "classes.txt").write_text("\n".join(class_names) + "\n")
    tags = {i: [class_names[c] for c in classes] for i, classes in items.items()}
    (root / "tags.json").write_text(json.dumps(tags))
    return root


def make_folder(root: Path, items: dict[str, Sequence[int]], class_names: Sequence[str]) -> Path:
    """Folder dataset: images/, masks/, classes.txt, tags.json."""
    return _scenes_with_tags(root, items, class_names, "images", "masks")


def make_toy(root: Path, items: dict[str, Sequence[int]], class_names: Sequence[str]) -> Path:
    """Toy-world folder: JPEGImages/*.png, SegmentationClass, ImageSets, classes.txt, tags.json."""
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(items) + "\n")
    return _scenes_with_tags(root, items, class_names, "JPEGImages", "SegmentationClass")
