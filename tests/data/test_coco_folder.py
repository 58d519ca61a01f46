"""COCO in both layouts and the folder dataset, built on the fly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_fakes import make_coco, make_folder, scene
from PIL import Image

from ssrseg.data import BadInputError, SkipLog, build_dataset, iter_valid
from ssrseg.viz import save_label_png

ITEMS = {"42": [0, 79], "7": [2]}


@pytest.mark.parametrize("layout", ["split", "flat"])
def test_coco_layouts(tmp_path: Path, layout: str) -> None:
    root = make_coco(tmp_path, ITEMS, layout=layout)
    if layout == "flat":  # a train image in the flat folder must not leak into val
        make_coco(tmp_path / "other", {"1": [3]}, layout="flat", split="train")
        src = tmp_path / "other" / "JPEGImages" / "COCO_train2014_000000000001.jpg"
        src.rename(root / "JPEGImages" / src.name)
    ds = build_dataset("coco", root, "val")
    assert ds.num_classes == 81
    assert ds.ids == ["COCO_val2014_000000000007", "COCO_val2014_000000000042"]
    samples = list(iter_valid(ds, SkipLog()))
    assert [s.labels for s in samples] == [(2,), (0, 79)]
    np.testing.assert_array_equal(samples[1].mask, scene([0, 79])[1])
    assert samples[1].mask.max() == 80  # toothbrush is class 80 in the 81-class masks


def test_coco_list_file_and_tag_file(tmp_path: Path) -> None:
    root = make_coco(tmp_path, ITEMS, layout="split")
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "val.txt").write_text("COCO_val2014_000000000042\n")
    tags = tmp_path / "t.json"
    tags.write_text(json.dumps({"COCO_val2014_000000000042": ["dog"]}))
    ds = build_dataset("coco", root, "val", tag_file=tags)
    assert ds.ids == ["COCO_val2014_000000000042"] and ds[0].labels == (
        16,
    )  # dog is the 17th category


def test_coco_weclip_layout_with_numeric_list(tmp_path: Path) -> None:
    # MSCOCO/JPEGImages/val2014 + SegmentationClass/val2014 + val.txt of bare numbers
    root = make_coco(tmp_path, ITEMS, layout="split")
    (root / "JPEGImages").mkdir()
    (root / "val2014").rename(root / "JPEGImages" / "val2014")
    (root / "val.txt").write_text("42\n000000000007\n")
    ds = build_dataset("coco", root, "val")
    assert ds.ids == ["42", "000000000007"]
    assert [s.labels for s in iter_valid(ds, SkipLog())] == [(0, 79), (2,)]
    np.testing.assert_array_equal(ds[1].mask, scene([2])[1])


def test_coco_raw_category_id_masks(tmp_path: Path) -> None:
    root = make_coco(tmp_path, {"3": [79]}, layout="split")
    raw = scene([79])[1].copy()
    raw[raw == 80] = 90  # toothbrush's COCO category id
    save_label_png(root / "SegmentationClass" / "val2014" / "COCO_val2014_000000000003.png", raw)
    assert (
        "values [90]"
        in dict(_skips(build_dataset("coco", root, "val")))["COCO_val2014_000000000003"]
    )
    ds = build_dataset("coco", root, "val", mask_category_ids=True)
    np.testing.assert_array_equal(ds[0].mask, scene([79])[1])


def _skips(ds):  # type: ignore[no-untyped-def]
    log = SkipLog()
    list(iter_valid(ds, log))
    return log.skipped


def test_coco_without_tags_or_images(tmp_path: Path) -> None:
    root = make_coco(tmp_path, ITEMS, layout="split")
    (root / "annotations" / "instances_val2014.json").unlink()
    with pytest.raises(BadInputError, match="instances JSON not found"):
        build_dataset("coco", root, "val")
    assert build_dataset("coco", root, "val", require_labels=False)[0].labels == ()
    with pytest.raises(BadInputError, match="no COCO image folder"):
        build_dataset("coco", tmp_path / "empty", "val")


def test_folder_dataset(tmp_path: Path) -> None:
    names = ["apple", "pear"]
    root = make_folder(tmp_path, {"x": [0], "y": [1, 0]}, names)
    ds = build_dataset("folder", root, "all")
    assert ds.class_names == ("apple", "pear") and ds.ids == ["x", "y"]
    s = ds[1]
    assert s.labels == (0, 1) and s.mask is not None and set(np.unique(s.mask)) == {0, 1, 2}
    # class names from the call win over classes.txt; a split list narrows the ids
    (root / "splits").mkdir()
    (root / "splits" / "some.txt").write_text("y\n")
    ds = build_dataset("folder", root, "some", class_names=["apple", "pear"])
    assert ds.ids == ["y"]
    with pytest.raises(BadInputError, match="no list file for split 'val'"):
        build_dataset("folder", root, "val")


def test_folder_bad_inputs(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"x": [0], "y": [1]}, ["apple", "pear"])
    (root / "tags.json").write_text(json.dumps({"x": ["banana"], "y": []}))
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(root / "masks" / "x.png")
    skipped = dict(_skips(build_dataset("folder", root, "all")))
    assert "unknown class(es) ['banana']" in skipped["x"] and "tags.json" in skipped["x"]
    assert "no (foreground) tags" in skipped["y"]
    (root / "tags.json").write_text(json.dumps({"x": ["apple"]}))
    skipped = dict(_skips(build_dataset("folder", root, "all")))
    assert "x.png: mask is 3x3 but its image x.png is 32x24" in skipped["x"]
    assert "has no entry" in skipped["y"]


def test_folder_needs_class_names_and_tags(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"x": [0]}, ["apple"])
    (root / "classes.txt").unlink()
    with pytest.raises(BadInputError, match="class names needed"):
        build_dataset("folder", root, "all")
    (root / "tags.json").unlink()
    with pytest.raises(BadInputError, match="tag file not found"):
        build_dataset("folder", root, "all", class_names=["apple"])
    ds = build_dataset("folder", root, "all", class_names=["apple"], require_labels=False)
    assert ds[0].labels == ()


def test_unknown_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        build_dataset("imagenet", tmp_path, "val")
