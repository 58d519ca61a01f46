"""The toy-world demo end to end (shortened plan): every stage runs, the report is coherent,
and a second run reuses every stage."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ssrseg.cli import main
from ssrseg.data import build_dataset
from ssrseg.engine.cam_rows import TABLE3_ROWS
from ssrseg.engine.demo import QUICK_PLAN, run_demo
from ssrseg.engine.report import measured
from ssrseg.metrics import ConfusionMatrix


@pytest.mark.slow
def test_quick_demo_runs_every_stage(tmp_path: Path) -> None:
    plan = dataclasses.replace(QUICK_PLAN, crf=False)
    report = run_demo(tmp_path, plan)

    # Every Table 3 row was scored in both spaces, and Table 4 reuses the initial-CAM rows.
    names = [name for name, _ in TABLE3_ROWS]
    raw, cmpa = measured(report, "table3_raw"), measured(report, "table3_cmpa")
    assert list(raw)[: len(names)] == names
    assert list(cmpa) == names
    table4 = measured(report, "table4")
    assert table4["raw CLIP CAM"] == raw["initial CAM"]
    assert table4["CMPA CAM"] == cmpa["initial CAM"]
    for row in (*raw.values(), *cmpa.values()):
        assert row is not None
        assert all(0.0 <= row[k] <= 100.0 for k in ("precision", "recall", "miou"))

    # The all-background baseline recomputed independently from the rendered masks.
    data = build_dataset("toy", str(tmp_path / "data"), "train")
    conf = ConfusionMatrix(data.num_classes)
    for i in range(plan.n_score):
        mask = data[i].mask
        conf.update(np.zeros_like(mask), mask)
    expected = 100 * conf.compute()["miou"]
    assert measured(report, "baselines")["all background"]["miou"] == pytest.approx(expected)

    # SSR's share of the fully supervised decoder is the ratio of the two mIoUs.
    seg = measured(report, "segmentation")
    ssr, gt = seg["SSR without CRF"]["miou"], seg["fully supervised without CRF"]["miou"]
    share = {r["name"]: r for r in report["summary"]}["share of fully supervised (without CRF)"]
    assert share["measured"] == pytest.approx(100 * ssr / gt)
    assert share["diff"] is None  # the paper's 97.4 is VOC's: shown, not subtracted

    # Report folder: JSON, Markdown with the tables, config and one panel per requested image.
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["options"]["seed_images"] == plan.n_score
    md = (tmp_path / "report.md").read_text()
    for title in ("Table 3, raw CLIP space", "Table 4", "fully supervised", "home context"):
        assert title in md
    assert (tmp_path / "config.yaml").is_file()
    assert len(list((tmp_path / "panels").glob("*.png"))) == plan.panels
    assert (tmp_path / "train" / "last").exists()

    # A second run reuses every stage and gives the same report.
    again = run_demo(tmp_path, plan)
    assert again["summary"] == report["summary"]
    assert all(s["status"].startswith(("reused", "ran")) for s in again["stages"].values())
    assert again["stages"]["train"]["status"].startswith("reused")


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
