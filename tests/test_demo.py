"""The toy-world demo end to end (shortened plan): every stage runs, the report is coherent."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ssrseg.cli import main
from ssrseg.data import build_dataset
from ssrseg.engine.demo import QUICK_PLAN, TABLE3_ROWS, run_demo
from ssrseg.metrics import ConfusionMatrix


@pytest.mark.slow
def test_quick_demo_runs_every_stage(tmp_path: Path) -> None:
    plan = dataclasses.replace(QUICK_PLAN, crf=False)
    report = run_demo(tmp_path, plan)

    # Every Table 3 row was scored in both spaces, and Table 4 reuses the initial-CAM rows.
    names = [name for name, _ in TABLE3_ROWS]
    assert list(report["table3_raw"])[: len(names)] == names
    assert list(report["table3_cmpa"]) == names
    assert report["table4"]["raw CLIP CAM"] == report["table3_raw"]["initial CAM"]
    assert report["table4"]["CMPA CAM"] == report["table3_cmpa"]["initial CAM"]
    for row in (*report["table3_raw"].values(), *report["table3_cmpa"].values()):
        assert all(0.0 <= row[k] <= 100.0 for k in ("precision", "recall", "miou"))

    # The all-background baseline recomputed independently from the rendered masks.
    data = build_dataset("toy", str(tmp_path / "data"), "train")
    conf = ConfusionMatrix(data.num_classes)
    for i in range(plan.n_score):
        mask = data[i].mask
        conf.update(np.zeros_like(mask), mask)
    expected = 100 * conf.compute()["miou"]
    assert report["baselines"]["all background"]["miou"] == pytest.approx(expected)

    # SSR's share of the fully supervised decoder is the ratio of the two mIoUs.
    seg = report["segmentation"]
    ssr, gt = seg["ssr"]["without CRF"]["miou"], seg["fully_supervised"]["without CRF"]["miou"]
    assert seg["share_percent"]["without CRF"] == pytest.approx(100 * ssr / gt)

    # Report folder: JSON, Markdown with the tables, config and one panel per requested image.
    assert json.loads((tmp_path / "report.json").read_text())["plan"]["n_score"] == plan.n_score
    md = (tmp_path / "report.md").read_text()
    for title in ("Table 3, raw CLIP space", "Table 4", "fully supervised"):
        assert title in md
    assert (tmp_path / "config.yaml").is_file()
    assert len(list((tmp_path / "panels").glob("*.png"))) == plan.panels
    assert (tmp_path / "ssr" / "last").exists()


def test_demo_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quick", "--n-train", "--iterations", "--no-crf", "--out"):
        assert flag in out


def test_context_leak_splits_home_and_elsewhere(tmp_path: Path) -> None:
    """Hand-made case: one boat on water (its home), one on road; predictions spill 2 pixels
    onto background at home and none elsewhere."""
    from ssrseg.data.toy import CLASS_NAMES
    from ssrseg.engine.demo import context_leak

    boat = CLASS_NAMES.index("boat")
    (tmp_path / "captions.json").write_text(
        json.dumps({"a": "a photo of a boat on water.", "b": "a photo of a boat on road."})
    )
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = boat + 1

    class Sample:
        def __init__(self, image_id: str) -> None:
            self.image_id, self.labels, self.mask = image_id, (boat,), mask

    class Data:
        root, class_names = str(tmp_path), CLASS_NAMES

        def __getitem__(self, i: int) -> Sample:
            return Sample("ab"[i])

    pred_home = mask.copy()
    pred_home[3, :2] = boat + 1  # 2 of 6 predicted pixels on background
    leak = context_leak(Data(), [0, 1], {"a": pred_home, "b": mask.copy()})
    assert leak["home"] == pytest.approx(100 * 2 / 6)
    assert leak["elsewhere"] == 0.0
