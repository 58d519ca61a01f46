"""VOC test-server export: exact layout, palette PNGs of the image size, resume, bad images."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from ssrseg.config import InferConfig
from ssrseg.engine.export import (
    archive_voc_results,
    check_voc_mask,
    export_voc_test,
    missing_voc_test,
    voc_test_path,
)
from ssrseg.engine.infer import Segmenter

PATCH = 8
# Colours of the standard VOC palette (index -> RGB): facts of the dataset's PNG format.
VOC_COLOURS = {
    0: (0, 0, 0),
    1: (128, 0, 0),
    2: (0, 128, 0),
    3: (128, 128, 0),
    4: (0, 0, 128),
    15: (192, 128, 128),
    20: (0, 64, 128),
    255: (224, 224, 192),
}


class TinyNet(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, num_classes, PATCH, stride=PATCH)
        with torch.no_grad():
            self.conv.weight.mul_(20.0)  # spread the argmax over many classes

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def segmenter(num_classes: int = 21) -> Segmenter:
    return Segmenter(TinyNet(num_classes).eval(), num_classes, PATCH, InferConfig(long_side=48))


def write_images(folder: Path, sizes: dict[str, tuple[int, int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            folder / f"{image_id}.png"
        )


SIZES = {"2008_000001": (30, 41), "2008_000002": (50, 22), "2009_000003": (33, 33)}


def test_path_layout() -> None:
    assert voc_test_path("out", "2008_000001") == Path(
        "out/results/VOC2012/Segmentation/comp6_test_cls/2008_000001.png"
    )
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="file name"):
            voc_test_path("out", bad)


def test_export_writes_exact_layout(tmp_path: Path) -> None:
    images = tmp_path / "JPEGImages"
    write_images(images, SIZES)
    seg = segmenter()
    out = tmp_path / "export"
    written = export_voc_test(seg, list(SIZES), lambda i: images / f"{i}.png", out, progress=False)
    assert written == list(SIZES)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png" for i in sorted(SIZES)]
    for image_id, (h, w) in SIZES.items():
        png = Image.open(voc_test_path(out, image_id))
        assert png.mode == "P" and png.size == (w, h)
        pal = np.asarray(png.getpalette(), dtype=np.uint8).reshape(-1, 3)
        for index, rgb in VOC_COLOURS.items():
            if index < len(pal):
                assert tuple(pal[index]) == rgb, index
        values = np.asarray(png)
        expected = seg.predict(np.asarray(Image.open(images / f"{image_id}.png")))
        np.testing.assert_array_equal(values, expected)
        assert values.max() <= 20
    assert (
        len(
            {
                int(v)
                for i in SIZES
                for v in np.unique(np.asarray(Image.open(voc_test_path(out, i))))
            }
        )
        > 2
    )
    assert missing_voc_test(out, [*SIZES, "2010_000004"]) == ["2010_000004"]


def test_export_resumes_and_skips_bad_images(tmp_path: Path) -> None:
    from ssrseg.data.base import SkipLog
    from ssrseg.errors import BadInputError

    images = tmp_path / "JPEGImages"
    write_images(images, SIZES)
    (images / "2010_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ids = [*SIZES, "2010_bad"]
    seg = segmenter()
    out = tmp_path / "export"
    with pytest.raises(BadInputError, match="2010_bad"):
        export_voc_test(seg, ids, lambda i: images / f"{i}.png", out, progress=False)
    log = SkipLog()
    export_voc_test(seg, ids, lambda i: images / f"{i}.png", out, skip_log=log, progress=False)
    assert [i for i, _ in log.skipped] == ["2010_bad"]
    assert missing_voc_test(out, ids) == ["2010_bad"]
    # Resume: nothing left to do but the bad image; a deleted file is redone.
    (images / "2010_bad.png").unlink()
    voc_test_path(out, "2008_000002").unlink()
    log = SkipLog()
    done = export_voc_test(
        seg, ids, lambda i: images / f"{i}.png", out, skip_log=log, progress=False
    )
    assert done == ["2008_000002"] and len(log) == 1


def test_export_refuses_non_voc_models(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="21-class"):
        export_voc_test(segmenter(81), ["a"], lambda i: tmp_path / "a.png", tmp_path)


def test_mask_checks() -> None:
    check_voc_mask(np.zeros((4, 5), np.uint8), (4, 5, 3), "x")
    with pytest.raises(ValueError, match="image is"):
        check_voc_mask(np.zeros((4, 4), np.uint8), (4, 5, 3), "x")
    with pytest.raises(ValueError, match="0-20"):
        check_voc_mask(np.full((4, 5), 21, np.uint8), (4, 5, 3), "x")
    with pytest.raises(ValueError, match="uint8"):
        check_voc_mask(np.zeros((4, 5), np.int64), (4, 5, 3), "x")


def test_archive_holds_results_folder(tmp_path: Path) -> None:
    target = voc_test_path(tmp_path, "2008_000001")
    target.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((3, 3), np.uint8), mode="L").save(target)
    tar_path = archive_voc_results(tmp_path)
    assert tar_path == tmp_path / "results.tar.gz"
    with tarfile.open(tar_path) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
    assert names == ["results/VOC2012/Segmentation/comp6_test_cls/2008_000001.png"]
    with pytest.raises(FileNotFoundError):
        archive_voc_results(tmp_path / "empty")
