"""VOC and toy datasets built on the fly: loading, tags, masks, splits and bad inputs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from data_fakes import H, W, make_toy, make_voc, scene, voc_xml
from PIL import Image

from ssrseg.data import BadInputError, SkipLog, build_dataset, iter_valid
from ssrseg.data.base import EXIT_SKIPPED
from ssrseg.data.classes import VOC_CLASSES

SPLITS = {
    "train": {"2007_000001": [0, 14], "2007_000002": [11]},
    "val": {"2007_000003": [4]},
    "test": {"2008_000009": [2]},
}


@pytest.fixture()
def voc(tmp_path: Path) -> Path:
    return make_voc(tmp_path, SPLITS, VOC_CLASSES, aug={"2008_100001": [6], "2008_100002": [19]})


def test_loads_images_labels_masks(voc: Path) -> None:
    for root in (voc, voc.parent, voc.parent.parent):  # VOC2012, VOCdevkit or their parent
        ds = build_dataset("voc", root, "train")
        assert ds.ids == ["2007_000001", "2007_000002"]
        assert ds.num_classes == 21
    s = ds[0]
    image, mask = scene([0, 14])
    assert s.image.dtype == np.uint8 and s.image.shape == (H, W, 3)
    np.testing.assert_array_equal(s.image, image)
    np.testing.assert_array_equal(s.mask, mask)
    assert s.labels == (0, 14)  # aeroplane, person from the XML
    assert s.image_id == "2007_000001" and s.path.endswith("2007_000001.png")


def test_jpg_images_are_found(tmp_path: Path) -> None:
    make_voc(tmp_path, {"val": {"a1": [3]}}, VOC_CLASSES, ext=".jpg")
    s = build_dataset("voc", tmp_path, "val")[0]
    assert s.path.endswith("a1.jpg") and s.image.shape == (H, W, 3)


def test_xml_tags_never_read_from_masks(voc: Path) -> None:
    # the XML says "cat" while the mask shows aeroplane: tags follow the XML
    voc_xml(voc / "Annotations" / "2007_000001.xml", ["cat"])
    assert build_dataset("voc", voc, "train")[0].labels == (7,)


def test_difficult_objects(voc: Path) -> None:
    voc_xml(voc / "Annotations" / "2007_000001.xml", ["cat", "dog"], difficult=[False, True])
    assert build_dataset("voc", voc, "train")[0].labels == (7, 11)
    assert build_dataset("voc", voc, "train", include_difficult=False)[0].labels == (7,)


def test_tag_file_overrides_xml(voc: Path, tmp_path: Path) -> None:
    tags = tmp_path / "tags.json"
    tags.write_text(json.dumps({"2007_000001": ["Dog"], "2007_000002": ["tvmonitor", "sofa"]}))
    ds = build_dataset("voc", voc, "train", tag_file=tags)
    assert ds[0].labels == (11,) and ds[1].labels == (17, 19)


def test_test_split_has_no_masks(voc: Path) -> None:
    ds = build_dataset("voc", voc, "test", require_labels=False)
    assert ds[0].mask is None and not ds.has_masks
    with pytest.raises(BadInputError, match="no ground-truth masks"):
        build_dataset("voc", voc, "test", with_masks=True)


def test_train_aug_derived_from_segmentation_class_aug(voc: Path) -> None:
    ds = build_dataset("voc", voc, "train_aug")
    # Aug holds train + val + SBD extras; val is removed
    assert ds.ids == ["2007_000001", "2007_000002", "2008_100001", "2008_100002"]
    s = ds[2]
    assert s.labels == (6,) and s.mask is not None and set(np.unique(s.mask)) == {0, 7}


def test_train_aug_list_file_wins(voc: Path) -> None:
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("2008_100002\n")
    assert build_dataset("voc", voc, "train_aug").ids == ["2008_100002"]


def test_train_aug_without_files_explains(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, {"val": {"a": [1]}}, VOC_CLASSES)
    import shutil

    shutil.rmtree(voc / "SegmentationClassAug")
    with pytest.raises(BadInputError, match="SegmentationClassAug"):
        build_dataset("voc", voc, "train_aug")


def test_missing_root_names_folder(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="JPEGImages"):
        build_dataset("voc", tmp_path / "nowhere", "train")


def _skipped(ds) -> dict[str, str]:  # type: ignore[no-untyped-def]
    log = SkipLog()
    list(iter_valid(ds, log))
    return dict(log.skipped)


def test_bad_inputs_are_skipped_with_clear_messages(voc: Path, tmp_path: Path) -> None:
    seg = voc / "ImageSets" / "Segmentation"
    ids = [
        "2007_000001",  # fine
        "2007_000002",  # tags name an unknown class
        "untagged",  # XML with no objects
        "badmask",  # mask size differs
        "missing",  # no image file
        "../../etc/passwd",  # leaves the root
        "tiny",  # smaller than one patch
        "truncated",  # truncated PNG
    ]
    seg.joinpath("bad.txt").write_text("\n".join(ids) + "\n")
    voc_xml(voc / "Annotations" / "2007_000002.xml", ["unicorn"])
    for image_id in ("untagged", "badmask", "tiny", "truncated"):
        h, w = (4, 5) if image_id == "tiny" else (H, W)
        image, mask = scene([1], h, w)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.png")
        voc_xml(voc / "Annotations" / f"{image_id}.xml", [] if image_id == "untagged" else ["bus"])
        Image.fromarray(mask).save(voc / "SegmentationClass" / f"{image_id}.png")
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(voc / "SegmentationClass" / "badmask.png")
    raw = (voc / "JPEGImages" / "truncated.png").read_bytes()
    (voc / "JPEGImages" / "truncated.png").write_bytes(raw[: len(raw) // 2])
    voc_xml(voc / "Annotations" / "missing.xml", ["bus"])

    ds = build_dataset("voc", voc, "bad", min_size=8)
    log = SkipLog()
    good = [s.image_id for s in iter_valid(ds, log)]
    assert good == ["2007_000001"]
    skipped = dict(log.skipped)
    assert set(skipped) == set(ids[1:])
    assert "unknown class" in skipped["2007_000002"] and "unicorn" in skipped["2007_000002"]
    assert "2007_000002.xml" in skipped["2007_000002"]
    assert "no (foreground) tags" in skipped["untagged"] and "untagged.xml" in skipped["untagged"]
    assert "badmask.png" in skipped["badmask"] and "32x25" in skipped["badmask"]
    assert "missing.jpg" in skipped["missing"] and "not found" in skipped["missing"]
    assert "bad.txt" in skipped["../../etc/passwd"] and "leave" in skipped["../../etc/passwd"]
    assert "tiny.png" in skipped["tiny"] and "smaller than one patch" in skipped["tiny"]
    assert "truncated.png" in skipped["truncated"] and "cannot read image" in skipped["truncated"]
    text = log.report(stream=io.StringIO())
    assert "7 item(s) were SKIPPED" in text and "tiny.png" in text
    assert log.exit_code(allow_skipped=False) == EXIT_SKIPPED
    assert log.exit_code(allow_skipped=True) == 0


def test_image_without_xml_is_untagged(voc: Path) -> None:
    (voc / "Annotations" / "2007_000002.xml").unlink()
    skipped = _skipped(build_dataset("voc", voc, "train"))
    assert "annotation XML not found" in skipped["2007_000002"]  # issue 22: said "no entry"
    # evaluation does not need tags
    ds = build_dataset("voc", voc, "train", require_labels=False)
    assert ds[1].labels == ()


def test_toy_dataset(tmp_path: Path) -> None:
    names = ["circle", "square", "ring"]
    make_toy(tmp_path, {"t0": [0, 2], "t1": [1]}, names)
    ds = build_dataset("toy", tmp_path, "train")
    assert ds.class_names == tuple(names) and ds.num_classes == 4
    assert [s.labels for s in iter_valid(ds, SkipLog())] == [(0, 2), (1,)]
    np.testing.assert_array_equal(ds[1].mask, scene([1])[1])


def test_toy_dataset_without_tags_for_evaluation(tmp_path: Path) -> None:
    make_toy(tmp_path, {"t0": [0]}, ["circle"])
    (tmp_path / "tags.json").unlink()
    ds = build_dataset("toy", tmp_path, "train", require_labels=False, with_masks=True)
    assert ds[0].labels == () and ds[0].mask is not None
    with pytest.raises(BadInputError, match="tag file not found"):
        build_dataset("toy", tmp_path, "train")


def test_rendered_toy_world_loads_and_evaluates(tmp_path: Path) -> None:
    # the real toy renderer's folder is read by build_dataset("toy") and scored by evaluate
    from ssrseg.commands.evaluate import evaluate_predictions
    from ssrseg.data.toy import CLASS_NAMES, write_toy_dataset
    from ssrseg.viz import save_label_png

    ids = write_toy_dataset(tmp_path / "toy", 3, split="val", image_size=64)
    ds = build_dataset("toy", tmp_path / "toy", "val")
    assert ds.ids == ids and ds.class_names == tuple(CLASS_NAMES)
    log = SkipLog()
    samples = list(iter_valid(ds, log))
    assert len(samples) == 3 and not log.skipped
    for s in samples:
        assert s.image.shape == (64, 64, 3) and s.mask is not None and s.labels
        present = {int(v) - 1 for v in np.unique(s.mask) if 0 < v < 255}
        assert present <= set(s.labels)  # every drawn class is tagged
        save_label_png(tmp_path / "pred" / f"{s.image_id}.png", s.mask, "toy")
    ev = build_dataset("toy", tmp_path / "toy", "val", with_masks=True, require_labels=False)
    result = evaluate_predictions(tmp_path / "pred", ev, SkipLog(), progress=False)
    assert result["miou"] == 1.0 and result["images"] == 3


def test_missing_image_is_reported_as_missing_not_as_untagged(tmp_path: Path) -> None:
    """Issue 12 defect 10: an id in the list whose image (and XML) is gone."""
    voc = make_voc(tmp_path, {"train": {"a1": [0], "a2": [1]}}, VOC_CLASSES)
    (voc / "JPEGImages" / "a2.png").unlink()
    (voc / "Annotations" / "a2.xml").unlink()
    ds = build_dataset("voc", voc, "train")
    with pytest.raises(BadInputError) as err:
        ds[1]
    assert err.value.reason == "image file not found" and err.value.image_id == "a2"
    assert err.value.path.endswith("a2.jpg") and "tags" not in str(err.value)
