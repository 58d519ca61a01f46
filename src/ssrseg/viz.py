"""Figures: label palettes, colour masks, CAM heat-map overlays, titled side-by-side panels.

Everything uses numpy + PIL (matplotlib is not needed). All writers are atomic (temporary file
in the same folder, then rename).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from ssrseg.atomic import atomic_path

PaletteLike = str | np.ndarray


def _bitwise_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: bits of the index spread over R, G, B from the high bit."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out[index] = (r, g, b)
    return out


_PALETTES: dict[str, np.ndarray] = {}


def palette(name: PaletteLike = "voc") -> np.ndarray:
    """256 x 3 uint8 colour table. ``voc``: the devkit colour map (255 -> (224, 224, 192));
    ``coco`` and ``toy`` use the same map (the field colours COCO's 81 classes with it)."""
    if isinstance(name, np.ndarray):
        if name.ndim != 2 or name.shape[1] != 3:
            raise ValueError(f"palette array must be N x 3, got {name.shape}")
        full = np.zeros((256, 3), dtype=np.uint8)
        full[: min(256, len(name))] = name[:256]
        return full
    if name not in ("voc", "coco", "toy", "folder"):
        raise ValueError(f"unknown palette {name!r} (voc | coco | toy | folder)")
    if "voc" not in _PALETTES:
        _PALETTES["voc"] = _bitwise_palette()
    return _PALETTES["voc"].copy()


def colorize(mask: np.ndarray, pal: PaletteLike = "voc") -> np.ndarray:
    """H x W integer labels (0..255) -> H x W x 3 uint8 colours."""
    labels = np.asarray(mask)
    if labels.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("mask values must lie in 0..255")
    return palette(pal)[labels.astype(np.intp)]


def jet(values: np.ndarray) -> np.ndarray:
    """The jet colour map computed in numpy: H x W floats in [0, 1] -> H x W x 3 uint8."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return (np.stack([r, g, b], axis=-1) * 255.0).round().astype(np.uint8)


def _resize_float(values: np.ndarray, height: int, width: int) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def overlay_cam(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a jet heat map of ``cam`` (h x w, values in [0, 1]; resized bilinearly to the image)
    over ``image`` (H x W x 3 uint8): out = (1 - alpha) * image + alpha * jet(cam)."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"cam must be h x w, got shape {cam.shape}")
    h, w = image.shape[:2]
    if cam.shape != (h, w):
        cam = _resize_float(cam, h, w)
    heat = jet(cam).astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def _as_rgb(item: np.ndarray, pal: PaletteLike) -> np.ndarray:
    """Panel item -> H x W x 3 uint8: RGB as is; integer H x W as a label mask; float H x W as
    a [0, 1] heat map."""
    arr = np.asarray(item)
    if arr.ndim == 3 and arr.shape[2] == 3:
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0), 0, 255)
            return arr.round().astype(np.uint8)
        return arr
    if arr.ndim == 2:
        if np.issubdtype(arr.dtype, np.floating):
            return jet(arr)
        return colorize(arr, pal)
    raise ValueError(f"panel items must be H x W x 3 images or H x W maps, got {arr.shape}")


def _atomic_save(
    img: Image.Image, path: str | os.PathLike[str], text: dict[str, str] | None = None
) -> Path:
    info = None
    if text:
        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    with atomic_path(path, suffix=".tmp") as tmp:
        img.save(tmp, format="PNG", pnginfo=info)
    return Path(path)


def make_panel(
    items: Sequence[tuple[str, np.ndarray]],
    pal: PaletteLike = "voc",
    gap: int = 4,
    title_height: int = 14,
) -> np.ndarray:
    """Side-by-side titled panel (e.g. image | CAM | pseudo label | prediction | ground truth).

    Items are resized (nearest) to the first item's height. Returns H' x W' x 3 uint8.
    """
    if not items:
        raise ValueError("a panel needs at least one item")
    tiles = [_as_rgb(img, pal) for _, img in items]
    height = tiles[0].shape[0]
    resized = []
    for tile in tiles:
        if tile.shape[0] != height:
            width = max(1, round(tile.shape[1] * height / tile.shape[0]))
            tile = np.asarray(
                Image.fromarray(tile).resize((width, height), Image.Resampling.NEAREST)
            )
        resized.append(tile)
    total_w = sum(t.shape[1] for t in resized) + gap * (len(resized) - 1)
    canvas = Image.new("RGB", (total_w, height + title_height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for (title, _), tile in zip(items, resized, strict=True):
        canvas.paste(Image.fromarray(tile), (x, title_height))
        draw.text((x + 2, 1), str(title), fill=(0, 0, 0))
        x += tile.shape[1] + gap
    return np.asarray(canvas)


def save_panel(
    path: str | os.PathLike[str],
    items: Sequence[tuple[str, np.ndarray]],
    pal: PaletteLike = "voc",
) -> Path:
    """Write :func:`make_panel` of ``items`` as a PNG at ``path``; returns the path."""
    return _atomic_save(Image.fromarray(make_panel(items, pal)), path)


def save_label_png(
    path: str | os.PathLike[str],
    mask: np.ndarray,
    pal: PaletteLike | None = "voc",
    text: dict[str, str] | None = None,
) -> Path:
    """Write an H x W label map (0..255) as a palette PNG (``pal`` None: plain grayscale
    index PNG). Reading it back with PIL gives the same indices. ``text``: PNG text chunks
    (the job stamp of :mod:`ssrseg.runrecord`, so a rerun knows which files it wrote)."""
    labels = np.asarray(mask)
    if labels.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("label values must lie in 0..255")
    data = np.ascontiguousarray(labels.astype(np.uint8))
    size = (data.shape[1], data.shape[0])
    img = Image.frombytes("L" if pal is None else "P", size, data.tobytes())
    if pal is not None:
        img.putpalette(palette(pal).reshape(-1).tolist())
    return _atomic_save(img, path, text)
