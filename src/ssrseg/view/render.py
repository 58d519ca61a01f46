"""One image's files for the page: the image and each layer at display size and as a
thumbnail, plus its entry (layers shown, classes, per-image scores).

An image that cannot be shown (file missing or unreadable, a layer whose size differs from its
image) becomes a placeholder entry whose ``error`` names the file: the page draws a tile saying
so instead of a broken image.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ssrseg.atomic import atomic_path
from ssrseg.data import BadInputError, read_image, read_mask
from ssrseg.view.discover import (
    CAM_LABELS,
    ERRORS,
    GT,
    IMAGE,
    SCORED,
    SUPERPIXELS,
    Item,
    Source,
    is_cam_file,
)
from ssrseg.view.layers import (
    boundary_rgba,
    cam_rgb,
    error_rgba,
    fit_size,
    image_miou,
    label_rgba,
    present_classes,
    sparse_hist,
)

GREY = 128  # the stand-in image of a predict folder without its source images
# (cams K x H x W float32, classes) -> H x W uint8 labels
CamLabeller = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]
Segmenter = Callable[[np.ndarray], np.ndarray]  # H x W x 3 uint8 -> H x W superpixel ids


@dataclass(frozen=True)
class RenderSettings:
    """What shapes the files (a change redoes every image)."""

    display: int = 512  # long side of the detail view's files
    thumb: int = 128  # long side of the gallery's thumbnails

    def as_dict(self) -> dict[str, int]:
        return {"display": self.display, "thumb": self.thumb}


class Unshowable(Exception):
    """An image that becomes a placeholder tile (the message names the file)."""


def layer_slug(name: str) -> str:
    """A layer name as a file name: ``CAM (refined): traffic light`` ->
    ``cam-refined-traffic-light``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "layer"


def item_folder(key: str) -> str:
    """The site-relative folder of an item's files: ``i/<2 hex>/<safe key>`` (256 buckets keep
    folders small; the hash keeps distinct keys distinct after the name is made safe)."""
    digest = hashlib.sha1(key.encode()).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[-60:]
    return f"i/{digest[:2]}/{safe}-{digest[:8]}"


def _read_rgb(path: Path) -> np.ndarray:
    if not path.is_file():
        raise Unshowable(f"image not found: {path}")
    try:
        return read_image(path)
    except BadInputError as exc:
        raise Unshowable(str(exc)) from None


def _read_labels(path: Path, source: Source) -> np.ndarray:
    if not path.is_file():
        raise Unshowable(f"file not found: {path}")
    try:
        # without class names (a predict folder of an unknown dataset) any label is shown
        return read_mask(path, source.num_classes if source.class_names else None, source.palette)
    except BadInputError as exc:
        raise Unshowable(str(exc)) from None


def _read_gt(item: Item, path: Path, source: Source) -> np.ndarray:
    """The ground truth as the dataset reads it (its own decoding), else as a label PNG."""
    if item.dataset is None:
        return _read_labels(path, source)
    try:
        mask = item.dataset.load_mask(item.index)
    except BadInputError as exc:
        raise Unshowable(str(exc)) from None
    if mask is None:
        raise Unshowable(f"file not found: {path}")
    return np.asarray(mask)


def _read_cams(path: Path) -> tuple[np.ndarray, tuple[int, ...]]:
    if not path.is_file():
        raise Unshowable(f"file not found: {path}")
    try:
        with np.load(path) as data:
            return data["cams"].astype(np.float32), tuple(int(c) for c in data["classes"])
    except (OSError, ValueError, KeyError) as exc:
        raise Unshowable(f"unreadable CAM file {path} ({exc})") from None


def _check_size(what: Path, shape: tuple[int, ...], image: Path | None, size: tuple[int, int]):
    if tuple(shape[-2:]) != size:
        raise Unshowable(
            f"{what} is {shape[-1]}x{shape[-2]} but its image "
            f"{image.name if image else ''} is {size[1]}x{size[0]}"
        )


def load_layers(
    item: Item, source: Source, cam_labeller: CamLabeller | None
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(image ``H x W x 3``, label layers ``{name: H x W}``, CAMs ``{name: H x W}``), every
    layer checked against the image's size (:class:`Unshowable` otherwise)."""
    labels = {
        n: _read_gt(item, p, source) if n == GT else _read_labels(p, source)
        for n, p in item.layers.items()
        if not is_cam_file(p)
    }
    cams: dict[str, np.ndarray] = {}
    where: dict[str, Path] = dict(item.layers)  # the file each layer comes from
    for layer, file in item.layers.items():
        if not is_cam_file(file):
            continue
        maps, classes = _read_cams(file)
        if maps.shape[0] != len(classes):
            raise Unshowable(f"{file}: {maps.shape[0]} CAMs for {len(classes)} class ids")
        for c, cam in zip(classes, maps, strict=True):
            name = source.class_names[c] if 0 <= c < len(source.class_names) else f"class {c}"
            cams[f"{layer}: {name}"] = cam
            where[f"{layer}: {name}"] = file
        if cam_labeller is not None and CAM_LABELS not in labels:
            labels[CAM_LABELS] = cam_labeller(maps, classes)
            where[CAM_LABELS] = file
    if item.image is not None:
        image = _read_rgb(item.image)
    else:  # no source image: a grey stand-in of the first layer's size
        first = next(iter([*labels.values(), *cams.values()]), None)
        if first is None:
            raise Unshowable(f"no image and no layer for {item.key}")
        image = np.full((*first.shape[-2:], 3), GREY, dtype=np.uint8)
    size = (int(image.shape[0]), int(image.shape[1]))
    for name, arr in [*labels.items(), *cams.items()]:
        _check_size(where[name], arr.shape, item.image, size)
    return image, labels, cams


def item_stats(
    labels: dict[str, np.ndarray], tags: tuple[int, ...], num_classes: int
) -> dict[str, Any]:
    """Classes of the image (its ground truth's, else its tags, else its scored layer's) and,
    with a ground truth, each scored layer's confusion cells and mIoU."""
    gt = labels.get(GT)
    scored = [n for n in SCORED if n in labels]
    scored += [n for n in labels if n not in scored and n != GT]  # added folders' layers
    if gt is not None:
        classes = present_classes(gt)
    elif tags:
        classes = sorted(tags)
    else:
        classes = present_classes(labels[scored[0]]) if scored else []
    hists: dict[str, list[list[int]]] = {}
    mious: dict[str, float | None] = {}
    if gt is not None:
        for name in scored:
            hists[name] = sparse_hist(labels[name], gt, num_classes)
            mious[name] = image_miou(hists[name], num_classes)
    return {"classes": classes, "hists": hists, "mious": mious}


def _resize(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> Image.Image:
    img = Image.fromarray(arr)
    if img.size == (size[1], size[0]):
        return img
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return img.resize((size[1], size[0]), method)


def _save(img: Image.Image, path: Path) -> None:
    options = {"quality": 88} if path.suffix == ".jpg" else {"optimize": False}
    with atomic_path(path) as tmp:
        img.save(tmp, format="JPEG" if path.suffix == ".jpg" else "PNG", **options)


def write_layer(
    folder: Path, name: str, arr: np.ndarray, settings: RenderSettings, nearest: bool
) -> None:
    """``<slug>.<ext>`` at display size and ``<slug>.t.<ext>`` as a thumbnail (JPEG for
    opaque RGB, PNG for RGBA)."""
    h, w = arr.shape[:2]
    ext = "png" if arr.ndim == 3 and arr.shape[2] == 4 else "jpg"
    slug = layer_slug(name)
    full, thumb = folder / f"{slug}.{ext}", folder / f"{slug}.t.{ext}"
    size = fit_size(h, w, settings.display)
    _save(_resize(arr, size, nearest), full)
    if fit_size(h, w, settings.thumb) == size:  # a small image is its own thumbnail
        _link(full, thumb)
    else:
        _save(_resize(arr, fit_size(h, w, settings.thumb), nearest), thumb)


def _link(src: Path, dest: Path) -> None:
    """``dest`` as a hard link to ``src`` (no second encode, no extra bytes on disk), put in
    place atomically; a copy where the file system has no hard links."""
    with atomic_path(dest) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def render_item(
    item: Item,
    source: Source,
    site: Path,
    settings: RenderSettings,
    cam_labeller: CamLabeller | None = None,
    superpixels: Segmenter | None = None,
) -> dict[str, Any]:
    """Write one item's files under ``site`` and return its entry (a placeholder entry with
    ``error`` when it cannot be shown)."""
    base: dict[str, Any] = {"key": item.key, "id": item.image_id, "split": item.split}
    try:
        image, labels, cams = load_layers(item, source, cam_labeller)
    except Unshowable as exc:
        return {**base, "error": str(exc), "classes": list(item.tags)}
    rel = item_folder(item.key)
    folder = site / rel
    write_layer(folder, IMAGE, image, settings, nearest=False)
    shown = [IMAGE]
    for name, arr in labels.items():
        write_layer(folder, name, label_rgba(arr, source.palette), settings, nearest=True)
        shown.append(name)
    stats = item_stats(labels, item.tags, source.num_classes)
    scored = next(iter(stats["mious"]), None)
    if scored is not None:
        write_layer(folder, ERRORS, error_rgba(labels[scored], labels[GT]), settings, True)
        shown.append(ERRORS)
    if superpixels is not None:
        write_layer(folder, SUPERPIXELS, boundary_rgba(superpixels(image)), settings, True)
        shown.append(SUPERPIXELS)
    for name, cam in cams.items():
        write_layer(folder, name, cam_rgb(cam), settings, nearest=False)
        shown.append(name)
    return {
        **base,
        "dir": rel,
        "size": [int(image.shape[1]), int(image.shape[0])],
        "layers": shown,
        "classes": stats["classes"],
        "scored": scored,
        "miou": stats["mious"].get(scored) if scored else None,
        "mious": stats["mious"],
        "hists": stats["hists"],
    }
