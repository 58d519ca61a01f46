"""``ssrseg evaluate`` and ``ssrseg tags`` end to end on tiny on-the-fly datasets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "data"))
from data_fakes import make_coco, make_folder, make_voc, scene

from ssrseg.cli import main
from ssrseg.data.base import EXIT_SKIPPED
from ssrseg.data.classes import VOC_CLASSES
from ssrseg.viz import save_label_png

VAL = {"a1": [0], "a2": [14], "a3": [0, 14]}


@pytest.fixture()
def voc(tmp_path: Path) -> Path:
    return make_voc(tmp_path / "data", {"val": VAL}, VOC_CLASSES)


def _write_preds(folder: Path, masks: dict[str, np.ndarray], pal: str | None) -> None:
    for image_id, mask in masks.items():
        save_label_png(folder / f"{image_id}.png", mask, pal)


def test_perfect_predictions_score_one(voc: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    pred = tmp_path / "pred"
    _write_preds(pred, {i: scene(c)[1] for i, c in VAL.items()}, "voc")  # palette PNGs
    out = tmp_path / "m.json"
    rc = main(
        [
            "evaluate",
            "--pred",
            str(pred),
            "--dataset",
            "voc",
            "--root",
            str(voc),
            "--split",
            "val",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "aeroplane" in text and "mIoU 100.00" in text
    result = json.loads(out.read_text())
    assert result["miou"] == 1.0 and result["images"] == 3 and result["skipped"] == []
    assert result["iou"][2] is None  # bicycle absent everywhere: null in strict JSON
    assert len(result["class_names"]) == 21 and result["class_names"][0] == "background"
    assert "not comparable" in result["confusion_ratio_definition"]


def test_hand_computed_scores_with_index_pngs(voc: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    preds = {i: scene(c)[1] for i, c in VAL.items()}
    preds["a1"] = np.zeros_like(preds["a1"])  # misses its 48 aeroplane pixels
    _write_preds(pred, preds, None)  # plain index PNGs
    rc = main(["evaluate", "--pred", str(pred), "--root", str(voc), "--quiet"])
    assert rc == 0
    r = json.loads((pred / "metrics.json").read_text())
    # gt (24 x 32 = 768 px per image): aeroplane 48 px in a1 + 48 in a3; person 48 + 48;
    # background 3 * 768 - 192 = 2112; the a1 prediction adds 48 aeroplane px to background
    assert r["iou"][1] == pytest.approx(48 / 96)
    assert r["iou"][15] == pytest.approx(1.0)
    assert r["iou"][0] == pytest.approx(2112 / (2112 + 48))
    assert r["miou"] == pytest.approx((0.5 + 1.0 + 2112 / 2160) / 3)
    assert r["pixel_acc"] == pytest.approx((3 * 768 - 48) / (3 * 768))
    assert r["recall"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert r["precision"] == pytest.approx((2112 / 2160 + 1.0 + 1.0) / 3)


def test_bad_predictions_are_skipped_and_fail(voc: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    pred = tmp_path / "pred"
    _write_preds(pred, {"a1": scene([0])[1], "a2": np.zeros((5, 5), np.uint8)}, "voc")
    # a3 missing
    rc = main(["evaluate", "--pred", str(pred), "--root", str(voc), "--quiet"])
    assert rc == EXIT_SKIPPED
    err = capsys.readouterr().err
    assert "a2.png: prediction is 5x5 but the ground truth" in err and "32x24" in err
    assert "a3.png: prediction file not found" in err
    assert "2 item(s) were SKIPPED" in err
    r = json.loads((pred / "metrics.json").read_text())
    assert r["images"] == 1 and {s["id"] for s in r["skipped"]} == {"a2", "a3"}
    rc = main(["evaluate", "--pred", str(pred), "--root", str(voc), "--quiet", "--allow-skipped"])
    assert rc == 0


def test_prediction_with_unknown_class_value(voc: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    pred = tmp_path / "pred"
    bad = scene([0])[1].copy()
    bad[0, 0] = 42
    _write_preds(pred, {i: scene(c)[1] for i, c in VAL.items()} | {"a1": bad}, None)
    assert main(["evaluate", "--pred", str(pred), "--root", str(voc), "--quiet"]) == EXIT_SKIPPED
    assert "a1.png: mask holds values [42]" in capsys.readouterr().err


def test_scoring_nothing_removes_an_older_result(voc: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Issue 12 defect 10: an older metrics.json must not stand for a run that scored nothing."""
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "metrics.json").write_text('{"miou": 0.9}')
    assert main(["evaluate", "--pred", str(pred), "--root", str(voc), "--quiet"]) == 2
    assert not (pred / "metrics.json").exists()
    assert "no image could be scored; removed the older" in capsys.readouterr().err


def test_missing_prediction_folder(voc: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["evaluate", "--pred", str(tmp_path / "nope"), "--root", str(voc)]) == 2
    assert "prediction folder not found" in capsys.readouterr().err


def _evaluate(pred: Path, dataset: str, root: Path, split: str) -> int:
    """``ssrseg evaluate`` of ``pred`` against ``dataset`` at ``root`` (quiet): the exit code."""
    args = ["--pred", str(pred), "--dataset", dataset, "--root", str(root), "--split", split]
    return main(["evaluate", *args, "--quiet"])


def test_evaluate_coco_and_folder(tmp_path: Path) -> None:
    coco = make_coco(tmp_path / "coco", {"42": [0, 79], "7": [2]}, layout="flat")
    pred = tmp_path / "pc"
    _write_preds(
        pred, {f"COCO_val2014_{n:012d}": scene(c)[1] for n, c in ((42, [0, 79]), (7, [2]))}, "coco"
    )
    assert _evaluate(pred, "coco", coco, "val") == 0
    r = json.loads((pred / "metrics.json").read_text())
    assert r["num_classes"] == 81 and r["miou"] == 1.0 and r["images"] == 2
    names = ["thing", "stuff"]
    folder = make_folder(tmp_path / "mine", {"p": [1], "q": [0]}, names)
    pred = tmp_path / "pf"
    _write_preds(pred, {"p": scene([1])[1], "q": np.zeros((24, 32), np.uint8)}, None)
    assert _evaluate(pred, "folder", folder, "all") == 0
    r = json.loads((pred / "metrics.json").read_text())
    assert r["class_names"] == ["background", "thing", "stuff"]
    assert r["iou"][1] == 0.0 and r["iou"][2] == 1.0  # "thing" only predicted as background


def test_tags_command_voc_and_coco(voc: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "tags.json"
    assert (
        main(["tags", "--dataset", "voc", "--root", str(voc), "--split", "val", "--out", str(out)])
        == 0
    )
    assert json.loads(out.read_text()) == {
        "a1": ["aeroplane"],
        "a2": ["person"],
        "a3": ["aeroplane", "person"],
    }
    coco = make_coco(tmp_path / "coco", {"42": [0, 79], "7": [2], "9": []}, layout="split")
    out = tmp_path / "coco.csv"
    rc = main(
        ["tags", "--dataset", "coco", "--root", str(coco), "--split", "val", "--out", str(out)]
    )
    assert rc == EXIT_SKIPPED  # image 9 has no annotation
    assert "COCO_val2014_000000000009" in capsys.readouterr().err
    lines = out.read_text().splitlines()
    assert lines == [
        "image_id,classes",
        "COCO_val2014_000000000007,car",
        "COCO_val2014_000000000042,person;toothbrush",
    ]


def test_tag_file_written_is_read_back(voc: Path, tmp_path: Path) -> None:
    from ssrseg.data import build_dataset

    out = tmp_path / "tags.csv"
    assert main(["tags", "--root", str(voc), "--split", "val", "--out", str(out)]) == 0
    ds = build_dataset("voc", voc, "val", tag_file=out)
    assert [ds.labels(i) for i in range(3)] == [(0,), (14,), (0, 14)]
    Image.open(voc / "JPEGImages" / "a1.png").close()
