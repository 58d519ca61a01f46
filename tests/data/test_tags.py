"""Tag files (JSON, CSV, one-hot .npy with a safe reader), XML and COCO instances tags."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from data_fakes import make_coco, voc_xml

from ssrseg.data import BadInputError
from ssrseg.data.base import resolve_labels
from ssrseg.data.classes import COCO_CLASSES, VOC_CLASSES
from ssrseg.data.tags import (
    coco_instances_tags,
    read_tag_file,
    voc_xml_tags,
    write_tag_file,
)

TAGS = {"2007_000032": ["aeroplane", "person"], "2007_000039": ["tvmonitor"]}


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"tags{suffix}"
    write_tag_file(path, TAGS)
    assert read_tag_file(path) == TAGS


def test_csv_variants(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('a,cat,dog\nb,"cat;person"\nc,bus|car\n# comment\n')
    assert read_tag_file(path) == {"a": ["cat", "dog"], "b": ["cat", "person"], "c": ["bus", "car"]}
    path.write_text("a,cat\na,dog\n")
    with pytest.raises(BadInputError, match="listed twice"):
        read_tag_file(path)


def test_json_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text("{not json")
    with pytest.raises(BadInputError, match=r"t\.json: not valid JSON"):
        read_tag_file(path)
    path.write_text(json.dumps({"a": [1, 2]}))
    with pytest.raises(BadInputError, match="expected a list of class names"):
        read_tag_file(path)
    path.write_text(json.dumps({"a": "cat; dog"}))
    assert read_tag_file(path) == {"a": ["cat", "dog"]}
    with pytest.raises(BadInputError, match="tag file not found"):
        read_tag_file(tmp_path / "missing.json")
    (tmp_path / "t.yaml").write_text("")
    with pytest.raises(BadInputError, match="unknown tag file type"):
        read_tag_file(tmp_path / "t.yaml")


def test_onehot_npy_community_format(tmp_path: Path) -> None:
    onehot = {}
    for key, names in TAGS.items():
        vec = np.zeros(20, np.float32)
        vec[[VOC_CLASSES.index(n) for n in names]] = 1
        onehot[key] = vec
    path = tmp_path / "cls_labels_onehot.npy"
    np.save(path, onehot, allow_pickle=True)
    assert read_tag_file(path, VOC_CLASSES) == TAGS
    with pytest.raises(BadInputError, match="has 20 values, the dataset has 80"):
        read_tag_file(path, COCO_CLASSES)
    with pytest.raises(BadInputError, match="needs the dataset's class names"):
        read_tag_file(path)


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("pwned",))


def test_onehot_npy_refuses_code(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "evil.npy"
    arr = np.empty((), dtype=object)
    arr[()] = {"a": _Evil()}
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(BadInputError, match=r"refusing to load builtins\.print"):
        read_tag_file(path, VOC_CLASSES)
    assert "pwned" not in capsys.readouterr().out
    assert pickle  # the stdlib pickle module is what the safe reader restricts


def test_voc_xml(tmp_path: Path) -> None:
    voc_xml(tmp_path / "a.xml", ["dog", "person", "dog"], difficult=[False, True, False])
    assert voc_xml_tags(tmp_path / "a.xml") == ["dog", "person"]
    assert voc_xml_tags(tmp_path / "a.xml", include_difficult=False) == ["dog"]
    (tmp_path / "b.xml").write_text("<annotation><object>")
    with pytest.raises(BadInputError, match=r"b\.xml: cannot parse"):
        voc_xml_tags(tmp_path / "b.xml")


def test_coco_instances(tmp_path: Path) -> None:
    make_coco(tmp_path, {"5": [0, 79, 0], "6": []}, layout="split")
    tags = coco_instances_tags(tmp_path / "annotations" / "instances_val2014.json")
    assert tags == {
        "COCO_val2014_000000000005": ["person", "toothbrush"],
        "COCO_val2014_000000000006": [],
    }
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "x.jpg"}],
                "annotations": [{"image_id": 1, "category_id": 12}],
            }
        )
    )
    with pytest.raises(BadInputError, match="unknown COCO category id 12"):
        coco_instances_tags(bad)


def test_resolve_labels_normalises_and_rejects() -> None:
    names = ("potted plant", "tv")
    assert resolve_labels(["Potted_Plant", "tv", "background"], names, "f", "i") == (0, 1)
    with pytest.raises(BadInputError, match=r"f: image 'i' is tagged with unknown class"):
        resolve_labels(["sofa"], names, "f", "i")
    with pytest.raises(BadInputError, match="no entry"):
        resolve_labels(None, names, "f", "i")
