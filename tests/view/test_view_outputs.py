"""``ssrseg view`` on every output kind (a demo-like run, ``pseudo-labels``, ``cams``,
``predict``, ``evaluate``) on the toy world and a fake VOC; per-image scores recomputed by hand
from the masks."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from view_fakes import (
    IN_DIST,
    REPO,
    TRAIN,
    VAL,
    degrade,
    iou_by_hand,
    make_run,
    read_labels,
    render_toy,
)

from ssrseg.cli import main
from ssrseg.config import load_config
from ssrseg.data.classes import VOC_CLASSES
from ssrseg.metrics import ConfusionMatrix
from ssrseg.runrecord import prepare_output
from ssrseg.viz import palette, save_label_png

sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "data"))
from data_fakes import make_voc

from cli_fakes import SIZES, write_cli_world


def page(site: Path) -> dict[str, Any]:
    """The ``window.SSRSEG_VIEW`` object of a built site."""
    text = (site / "data.js").read_text()
    prefix = "window.SSRSEG_VIEW = "
    assert text.startswith(prefix) and text.endswith(";\n")
    data: dict[str, Any] = json.loads(text[len(prefix) : -2])
    return data


def by_key(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["k"]: item for item in data["items"]}


def layers_of(data: dict[str, Any], item: dict[str, Any]) -> list[str]:
    return [data["layers"][i] for i in item["L"]]


def test_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    ids = make_run(run, n_id=2)
    assert main(["view", str(run), "--no-progress"]) == 0
    assert f"page: {(run / 'view' / 'index.html').resolve()}" in capsys.readouterr().out
    data = page(run / "view")
    assert data["kind"] == "run" and data["splits"] == sorted([TRAIN, VAL, IN_DIST])
    classes = (run / "data" / "classes.txt").read_text().split()
    assert data["classes"] == ["background", *classes]
    items = by_key(data)
    assert set(items) == {f"{s}/{i}" for s, group in ids.items() for i in group}
    conf = ConfusionMatrix(len(classes) + 1)
    for split, folder, scored in ((TRAIN, "seeds/labels", "pseudo label"),
                                  (VAL, "eval/pred/no_crf", "prediction")):  # fmt: skip
        for image_id in ids[split]:
            item = items[f"{split}/{image_id}"]
            gt = read_labels(run / "data" / "SegmentationClass" / f"{image_id}.png")
            pred = read_labels(run / folder / f"{image_id}.png")
            assert item["ml"] == scored
            assert item["m"] == pytest.approx(iou_by_hand(pred, gt))
            assert item["c"] == sorted(int(v) - 1 for v in np.unique(gt) if 0 < v < 255)
            shown = layers_of(data, item)
            assert {"image", "ground truth", scored, "errors", "superpixels"} <= set(shown)
            if split == VAL:
                assert "prediction (CRF)" in shown
                conf.update(pred, gt)
            files = run / "view" / item["d"]
            assert (files / "image.jpg").is_file() and (files / "errors.t.png").is_file()
    # the in-distribution stage: SSR's predictions scored, the fully supervised ones beside
    for image_id in ids[IN_DIST]:
        item = items[f"{IN_DIST}/{image_id}"]
        gt = read_labels(run / "data" / "SegmentationClass" / f"{image_id}.png")
        pred = read_labels(run / "eval_in_distribution/ssr/pred/no_crf" / f"{image_id}.png")
        assert item["ml"] == "prediction" and item["m"] == pytest.approx(iou_by_hand(pred, gt))
        assert "fully supervised" in layers_of(data, item)
    # the page's per-class table is the val split's matrix, as ssrseg.metrics computes it
    computed = data["computed"][f"prediction ({VAL})"]
    expected = conf.compute()
    assert computed["miou"] == pytest.approx(expected["miou"])
    assert np.array_equal(np.array(computed["hist"]), conf.hist)
    assert computed["images"] == len(ids[VAL])
    # one table per layer and split: the in-distribution split is never mixed in
    assert set(data["computed"]) == {
        f"pseudo label ({TRAIN})",
        *(f"{layer} ({VAL})" for layer in ("prediction", "prediction (CRF)")),
        *(f"{layer} ({IN_DIST})" for layer in ("prediction", "fully supervised")),
    }
    # the report's table with the paper's numbers beside it, and the effective config
    (table,) = data["tables"]
    assert table["rows"][0]["paper"]["miou"] == 63.3
    assert "n_segments" in data["config"] and str(run / "data") in data["config"]
    # a 128 px image is its own 128 px thumbnail: one file, two names
    files = run / "view" / items[f"{TRAIN}/{ids[TRAIN][0]}"]["d"]
    assert (files / "image.t.jpg").stat().st_ino == (files / "image.jpg").stat().st_ino
    assert Image.open(files / "ground-truth.t.png").size == (128, 128)
    # smaller thumbnails are their own files; label layers keep their colours (nearest)
    assert main(["view", str(run), "--thumb", "32", "--out", str(tmp_path / "small")]) == 0
    files = tmp_path / "small" / items[f"{TRAIN}/{ids[TRAIN][0]}"]["d"]
    with Image.open(files / "pseudo-label.t.png") as small:
        assert small.size == (32, 32)
        colours = {tuple(c) for c in np.asarray(small)[..., :3].reshape(-1, 3)}
    allowed = {tuple(c) for c in palette("voc")[: len(classes) + 1]}
    assert colours <= allowed


def test_labeller_folders(tmp_path: Path) -> None:
    """Real ``ssrseg pseudo-labels`` and ``ssrseg cams`` outputs (random-weight backbones),
    alone and together (``--add``)."""
    from ssrseg.commands.cams import cam_labels, read_cams

    overrides = write_cli_world(tmp_path / "world", fast=True)
    root = tmp_path / "world" / "toy"
    runs = {"pseudo-labels": [], "cams": [], "initial": ["--kind", "initial"]}
    for run, extra in runs.items():
        command = "cams" if run == "initial" else run
        out = tmp_path / run
        args = [command, "--split", "train", "--out", str(out), "--no-progress", "--no-prefetch"]
        assert main([*args, *extra, *overrides]) == 0
        if run == "initial":
            continue
        assert main(["view", str(out), "--no-progress"]) == 0
        data = page(out / "view")
        assert data["kind"] == command and data["classes"] == ["background", "square", "disk"]
        items = by_key(data)
        assert set(items) == {f"train/{name}" for name in SIZES}
        for name, (h, w) in SIZES.items():
            item = items[f"train/{name}"]
            assert (item["w"], item["h"]) == (w, h)
            gt = read_labels(root / "SegmentationClass" / f"{name}.png")
            if command == "pseudo-labels":
                labels = read_labels(out / f"{name}.png")
            else:
                cams, classes = read_cams(out / f"{name}.npz")
                cfg = load_config(None, overrides)
                labels = cam_labels(cams, classes, cfg)
                names = [("square", "disk")[c] for c in classes]
                assert {f"CAM (refined): {n}" for n in names} <= set(layers_of(data, item))
                assert "CAM labels" in layers_of(data, item)
            assert item["m"] == pytest.approx(iou_by_hand(labels, gt))
    # one page: the pseudo labels with both kinds of CAM of the same images
    pl = tmp_path / "pseudo-labels"
    extra = ["--add", str(tmp_path / "cams"), "--add", str(tmp_path / "initial")]
    assert main(["view", str(pl), *extra, "--no-progress", "--no-superpixels"]) == 0
    data = page(pl / "view")
    item = by_key(data)["train/img2"]  # tagged square and disk
    shown = set(layers_of(data, item))
    for kind in ("initial", "refined"):
        assert {f"CAM ({kind}): square", f"CAM ({kind}): disk"} <= shown
    assert {"pseudo label", "CAM labels", "ground truth"} <= shown
    assert item["ml"] == "pseudo label"
    assert set(data["computed"]) == {"pseudo label (train)", "CAM labels (train)"}
    files = pl / "view" / item["d"]
    assert (files / "cam-initial-disk.jpg").is_file() and (files / "cam-labels.t.png").is_file()
    # `evaluate --pred` of the pseudo labels: the folder stays a pseudo-label folder, with the
    # recorded numbers beside the ones summed from its images
    root_args = ["--dataset", "toy", "--root", str(root), "--split", "train", "--quiet"]
    assert main(["evaluate", "--pred", str(pl), *root_args]) == 0
    assert main(["view", str(pl), "--no-progress", "--no-superpixels"]) == 0
    data = page(pl / "view")
    assert data["kind"] == "pseudo-labels"
    recorded, computed = data["recorded"]["result"], data["computed"]["pseudo label (train)"]
    assert computed["miou"] == pytest.approx(recorded["miou"])
    # a folder of other images adds nothing: one line
    other = tmp_path / "elsewhere"
    make_voc(other, {"train": {"2007_000009": [0]}}, VOC_CLASSES)
    cfg = load_config(None, ["data.dataset=voc", f"data.root={other / 'VOCdevkit/VOC2012'}"])
    prepare_output(other / "pl", cfg, {"command": "pseudo-labels", "split": "train"})
    save_label_png(other / "pl" / "2007_000009.png", np.zeros((8, 8), np.uint8))
    assert main(["view", str(pl), "--add", str(other / "pl")]) == 2


def test_predict_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, out = tmp_path / "photos", tmp_path / "pred"
    sizes = {"a": (20, 30), "sub/b": (16, 16)}
    for name, (h, w) in sizes.items():
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        ramp = np.linspace(0, 255, w, dtype=np.uint8)  # smooth: JPEG keeps it close
        Image.fromarray(np.stack([np.tile(ramp, (h, 1))] * 3, axis=-1)).save(images / f"{name}.png")
        mask = np.zeros((h, w), np.uint8)
        mask[: h // 2] = 15  # VOC class 15: person
        save_label_png(out / f"{name}.png", mask)
    save_label_png(out / "panels" / "a.png", np.zeros((4, 4), np.uint8))  # not a prediction
    cfg = load_config(None, ["data.dataset=voc"])
    prepare_output(out, cfg, {"command": "predict", "checkpoint": {"path": "ckpt"}})

    assert main(["view", str(out), "--no-progress", "--no-superpixels"]) == 0
    assert "pass --images" in capsys.readouterr().err
    data = page(out / "view")
    assert data["kind"] == "predict" and data["classes"][15] == "person"
    items = by_key(data)
    assert set(items) == {"predict/a", "predict/sub/b"}
    grey = np.asarray(Image.open(out / "view" / items["predict/a"]["d"] / "image.jpg"))
    assert grey.shape == (20, 30, 3) and abs(int(grey.mean()) - 128) <= 1
    assert items["predict/a"]["c"] == [14]  # no ground truth: the prediction's classes

    # a checkpoint of a dataset this machine does not know: labels shown without names
    prepare_output(
        tmp_path / "unknown",
        load_config(None, ["data.dataset=folder", f"data.root={tmp_path / 'absent'}"]),
        {"command": "predict"},
    )
    save_label_png(tmp_path / "unknown" / "x.png", np.full((6, 6), 7, np.uint8))
    assert main(["view", str(tmp_path / "unknown"), "--no-progress"]) == 0
    (unknown,) = page(tmp_path / "unknown" / "view")["items"]
    assert "e" not in unknown and unknown["c"] == [6]

    assert main(["view", str(out), "--images", str(images), "--no-progress"]) == 0
    items = by_key(page(out / "view"))
    shown = np.asarray(Image.open(out / "view" / items["predict/sub/b"]["d"] / "image.jpg"))
    source = np.asarray(Image.open(images / "sub" / "b.png")).astype(int)
    assert np.abs(shown.astype(int) - source).mean() < 8  # the photo (JPEG), not grey


def test_evaluate_result(tmp_path: Path) -> None:
    root, pred = tmp_path / "toy", tmp_path / "pred"
    ids = render_toy(root, "train", 4)
    for i, image_id in enumerate(ids):
        gt = read_labels(root / "SegmentationClass" / f"{image_id}.png")
        save_label_png(pred / f"{image_id}.png", degrade(gt, i, len(ids)))
    args = ["evaluate", "--pred", str(pred), "--dataset", "toy", "--root", str(root)]
    assert main([*args, "--split", "train", "--quiet"]) == 0
    for target in (pred, pred / "metrics.json"):  # the folder or the JSON itself
        assert main(["view", str(target), "--no-progress", "--out", str(tmp_path / "v")]) == 0
        data = page(tmp_path / "v")
        assert data["kind"] == "evaluate" and len(data["items"]) == len(ids)
        # the page's matrix, summed from the images, scores as evaluate did
        recorded, computed = data["recorded"]["result"], data["computed"]["prediction (train)"]
        assert computed["miou"] == pytest.approx(recorded["miou"])
        assert computed["iou"] == pytest.approx(recorded["iou"], nan_ok=True)
        # no configuration recorded: superpixels with the SGC defaults
        assert "superpixels" in data["layers"]
        worst = min(data["items"], key=lambda it: it["m"])
        assert worst["k"] == f"train/{ids[-1]}"  # the widest band erased


def test_fake_voc_labels(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, {"train": {"2007_000001": [0, 14], "2007_000002": [6]}}, VOC_CLASSES)
    out = tmp_path / "pl"
    cfg = load_config(None, ["data.dataset=voc", f"data.root={voc}"])
    prepare_output(out, cfg, {"command": "pseudo-labels", "split": "train", "classes": None})
    for image_id in ("2007_000001", "2007_000002"):
        gt = read_labels(voc / "SegmentationClass" / f"{image_id}.png")
        save_label_png(out / f"{image_id}.png", gt)
    assert main(["view", str(out), "--no-progress"]) == 0
    data = page(out / "view")
    assert data["classes"] == ["background", *VOC_CLASSES]
    items = by_key(data)
    assert items["train/2007_000001"]["c"] == [0, 14]
    assert all(item["m"] == pytest.approx(1.0) for item in items.values())
    assert data["palette"][15] == [192, 128, 128]  # the VOC colour map's person


def test_checkpoint_evaluation_json_shows_its_metrics(tmp_path: Path) -> None:
    """``evaluate --checkpoint`` without ``--save-pred``: the JSON's numbers, no gallery."""
    from ssrseg.runrecord import make_record

    gt = np.zeros((4, 4), np.uint8)
    gt[:2] = 1
    pred = np.zeros_like(gt)
    pred[:1] = 1
    conf = ConfusionMatrix(3)
    conf.update(pred, gt)
    options = {"command": "evaluate", "dataset": "toy", "root": str(tmp_path / "absent")}
    result = {"record": make_record(None, options), "no_crf": conf.compute()}
    path = tmp_path / "metrics_toy_val.json"
    path.write_text(json.dumps(result))
    assert main(["view", str(path), "--no-progress"]) == 0
    data = page(tmp_path / "view")
    assert data["items"] == [] and "metrics only" in " ".join(data["notes"])
    recorded = data["recorded"]["without CRF"]
    # background: 8 right of 12 predicted or true; class 1: 4 right of 8
    assert recorded["iou"][:2] == pytest.approx([8 / 12, 4 / 8])
