"""Palettes, colour masks, CAM overlays, panels and label PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssrseg.viz import colorize, jet, make_panel, overlay_cam, palette, save_label_png, save_panel


def test_voc_palette_known_colours() -> None:
    pal = palette("voc")
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    # devkit colours: background, aeroplane, bicycle, person (15), tvmonitor (20), ignore (255)
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[15].tolist() == [192, 128, 128]
    assert pal[20].tolist() == [0, 64, 128]
    assert pal[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in palette("coco")[:81]}) == 81  # 81 distinct COCO colours
    with pytest.raises(ValueError, match="unknown palette"):
        palette("nope")


def test_colorize() -> None:
    mask = np.array([[0, 1], [255, 15]])
    out = colorize(mask)
    assert out.shape == (2, 2, 3)
    assert out[0, 1].tolist() == [128, 0, 0] and out[1, 0].tolist() == [224, 224, 192]
    with pytest.raises(ValueError):
        colorize(np.zeros((2, 2, 2), int))


def test_jet_endpoints() -> None:
    out = jet(np.array([[0.0, 0.5, 1.0]]))
    assert out[0, 0].tolist() == [0, 0, 128]  # dark blue
    assert out[0, 1].tolist() == [128, 255, 128]  # green-ish middle
    assert out[0, 2].tolist() == [128, 0, 0]  # dark red


def test_overlay_cam_blend_and_resize() -> None:
    image = np.full((8, 8, 3), 100, np.uint8)
    out = overlay_cam(image, np.ones((2, 2), np.float32), alpha=0.5)
    assert out.shape == (8, 8, 3)
    assert out[0, 0].tolist() == [114, 50, 50]  # (100 + 128) / 2, (100 + 0) / 2
    np.testing.assert_array_equal(overlay_cam(image, np.zeros((8, 8)), alpha=0.0), image)


def test_label_png_round_trip(tmp_path: Path) -> None:
    mask = np.array([[0, 3, 255], [20, 1, 0]], np.uint8)
    p = save_label_png(tmp_path / "a" / "m.png", mask, "voc")
    img = Image.open(p)
    assert img.mode == "P" and img.getpalette()[3:6] == [128, 0, 0]
    np.testing.assert_array_equal(np.asarray(img), mask)
    q = save_label_png(tmp_path / "i.png", mask, None)
    assert Image.open(q).mode == "L"
    np.testing.assert_array_equal(np.asarray(Image.open(q)), mask)
    assert not list(tmp_path.glob("**/*.tmp"))


def test_panel(tmp_path: Path) -> None:
    image = np.full((10, 12, 3), 50, np.uint8)
    cam = np.linspace(0, 1, 20).reshape(4, 5)
    mask = np.ones((10, 12), np.uint8)
    panel = make_panel([("image", image), ("CAM", cam), ("pseudo", mask), ("gt", mask)])
    # 4 tiles scaled to height 10 (the CAM 4 x 5 becomes 10 x 12 or 13), gaps of 4, title 14
    assert panel.shape[0] == 24 and panel.shape[1] >= 12 * 4 + 3 * 4
    assert panel[14:, :12].tolist() == image.tolist()  # first tile pasted unchanged
    assert (panel[:14] != 255).any()  # titles drawn
    p = save_panel(tmp_path / "p.png", [("image", image), ("label", mask)])
    assert Image.open(p).size == (12 + 4 + 12, 24)
    with pytest.raises(ValueError):
        make_panel([])
