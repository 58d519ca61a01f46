"""read_image conversions, read_mask formats, id checks, SkipLog / SafeDataset."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from data_fakes import make_voc
from PIL import Image

from ssrseg.data import BadInputError, SafeDataset, SkipLog, Skipped, build_dataset, iter_valid
from ssrseg.data.base import check_image_id, read_image, read_mask
from ssrseg.data.classes import VOC_CLASSES, read_class_file
from ssrseg.viz import palette, save_label_png


def test_rgb_is_read_unchanged(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    notes: list[str] = []
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", notes), arr)
    assert notes == []


def test_grayscale_is_converted_with_note(tmp_path: Path) -> None:
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7)
    Image.fromarray(gray).save(tmp_path / "g.png")
    notes: list[str] = []
    out = read_image(tmp_path / "g.png", notes)
    assert out.shape == (5, 7, 3) and (out == gray[..., None]).all()
    assert notes == ["converted grayscale image to RGB"]


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba).save(tmp_path / "a.png")
    notes: list[str] = []
    out = read_image(tmp_path / "a.png", notes)
    assert (out == [200, 0, 0]).all() and "alpha dropped" in notes[0]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    notes: list[str] = []
    out = read_image(tmp_path / "c.jpg", notes)
    assert out.shape == (4, 6, 3) and "CMYK" in notes[0]
    assert out[..., 0].min() > 200 and out[..., 1:].max() < 60


def test_sixteen_bit_png(tmp_path: Path) -> None:
    arr = np.array([[0, 257 * 100], [65535, 257 * 3]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    notes: list[str] = []
    out = read_image(tmp_path / "d.png", notes)
    np.testing.assert_array_equal(out[..., 0], [[0, 100], [255, 3]])
    assert "16-bit" in notes[0]


def test_unreadable_and_missing_files_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"not an image at all")
    with pytest.raises(BadInputError, match=r"x\.jpg: cannot read image"):
        read_image(tmp_path / "x.jpg")
    with pytest.raises(BadInputError, match=r"nope\.png: image file not found"):
        read_image(tmp_path / "nope.png")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(buf, format="JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[:200])
    with pytest.raises(BadInputError, match=r"t\.jpg: cannot read image"):
        read_image(tmp_path / "t.jpg")


def test_read_mask_palette_index_and_colour(tmp_path: Path) -> None:
    mask = np.array([[0, 1, 255], [20, 3, 0]], np.uint8)
    save_label_png(tmp_path / "p.png", mask, "voc")
    save_label_png(tmp_path / "i.png", mask, None)
    Image.fromarray(palette("voc")[mask]).save(tmp_path / "c.png")  # RGB colour mask
    assert Image.open(tmp_path / "p.png").mode == "P"
    for name in ("p.png", "i.png", "c.png"):
        np.testing.assert_array_equal(read_mask(tmp_path / name, 21, palette("voc")), mask)
    with pytest.raises(BadInputError, match=r"i\.png: mask holds values \[20\]"):
        read_mask(tmp_path / "i.png", 4)
    with pytest.raises(BadInputError, match="no palette"):
        read_mask(tmp_path / "c.png", 21)
    odd = np.zeros((2, 2, 3), np.uint8) + 3
    Image.fromarray(odd).save(tmp_path / "o.png")
    with pytest.raises(BadInputError, match="not in the palette"):
        read_mask(tmp_path / "o.png", 21, palette("voc"))


@pytest.mark.parametrize(
    "bad", ["../x", "a/b", "a\\b", "/etc/passwd", "..", ".", "", "C:evil", "x..y"]
)
def test_path_escaping_ids_rejected(bad: str) -> None:
    with pytest.raises(BadInputError, match=r"list\.txt"):
        check_image_id(bad, "list.txt")


def test_plain_ids_accepted() -> None:
    for good in ("2007_000032", "COCO_val2014_000000000042", "img-1.v2"):
        check_image_id(good, "list.txt")


def test_safe_dataset_returns_skipped_records(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, {"train": {"a": [1], "b": [2]}}, VOC_CLASSES)
    (voc / "JPEGImages" / "b.png").write_bytes(b"garbage")
    safe = SafeDataset(build_dataset("voc", voc, "train"), transform=lambda s: s.image_id)
    assert safe[0] == "a"
    rec = safe[1]
    assert isinstance(rec, Skipped) and rec.image_id == "b" and "b.png" in rec.message


def test_iter_valid_collects_conversion_notes(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, {"train": {"a": [1]}}, VOC_CLASSES)
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(voc / "JPEGImages" / "a.png")
    log = SkipLog()
    assert len(list(iter_valid(build_dataset("voc", voc, "train"), log))) == 1
    assert len(log) == 0 and log.notes and "grayscale" in log.notes[0][1]
    assert "converted while reading" in log.report(stream=io.StringIO())
    assert log.exit_code(False) == 0


def test_class_file(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("background\ncat\n# comment\n\ndog\n")
    assert read_class_file(str(tmp_path / "c.txt")) == ("cat", "dog")
    (tmp_path / "d.txt").write_text("cat\nCat\n")
    with pytest.raises(BadInputError, match="listed twice"):
        read_class_file(str(tmp_path / "d.txt"))
