"""The toy-world demo end to end (shortened plan): every stage runs (the variants stage
included), the report is coherent, a run folder without the in-distribution split gains it
without redoing another stage, and a second run reuses every stage."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssrseg.cli import main
from ssrseg.data import build_dataset
from ssrseg.data.toy import IN_DISTRIBUTION_SPLIT, ToyWorld
from ssrseg.metrics import ConfusionMatrix
from ssrseg.protocol import reproduce as rp
from ssrseg.protocol.cam_rows import TABLE3_ROWS
from ssrseg.protocol.demo import QUICK_PLAN, run_demo
from ssrseg.protocol.report import measured


def _tokens(out: Path) -> dict[str, str]:
    return {
        p.parent.name: json.loads(p.read_text()).get("token", "")
        for p in out.glob("*/stage.json")
        if p.parent.name != "check"
    }


@pytest.mark.slow
def test_quick_demo_runs_every_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the variants train as long as `train`, so the plain run is their reference (the shorter
    # case with its own reference is covered by tests/test_reproduce_report.py)
    plan = dataclasses.replace(QUICK_PLAN, crf=False)

    # A run folder as the demo wrote it before the in-distribution split existed (the other
    # stages' records do not depend on it) ...
    old = run_demo(tmp_path, dataclasses.replace(plan, n_val_id=0))
    assert "eval_in_distribution" not in old["stages"]
    assert not (tmp_path / "data" / "ImageSets" / "Segmentation" / "in_distribution.txt").exists()
    before = _tokens(tmp_path)
    # ... gains the new stage and nothing else runs again.
    ran = []
    for stage, fn in list(rp.STAGE_FUNCTIONS.items()):
        if stage == "eval_in_distribution":
            monkeypatch.setitem(rp.STAGE_FUNCTIONS, stage, fn)
        else:
            monkeypatch.setitem(
                rp.STAGE_FUNCTIONS, stage, lambda run, resumed, s=stage: ran.append(s)
            )
    report = run_demo(tmp_path, plan)
    monkeypatch.undo()
    assert ran == []
    after = _tokens(tmp_path)
    assert {k: v for k, v in after.items() if k != "eval_in_distribution"} == before
    assert report["stages"]["eval_in_distribution"]["status"] == "ran"
    old_seg = measured(old, "segmentation")
    assert measured(report, "segmentation") == old_seg  # the debiased rows are the same

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

    # The toy preset trains CMPA with its background term (our decision): its loss is logged.
    logged = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").open()]
    bg_terms = [row["proto_bg"] for row in logged if "proto_bg" in row]
    assert bg_terms and all(np.isfinite(v) and v > 0 for v in bg_terms)

    # The all-background baseline recomputed independently from the rendered masks.
    data = build_dataset("toy", str(tmp_path / "data"), "train")
    conf = ConfusionMatrix(data.num_classes)
    for i in range(plan.n_score):
        mask = data[i].mask
        conf.update(np.zeros_like(mask), mask)
    expected = 100 * conf.compute()["miou"]
    assert measured(report, "baselines")["all background"]["miou"] == pytest.approx(expected)

    # SSR's share of the fully supervised decoder is the ratio of the two mIoUs, on each split,
    # and the gap is the difference of the two shares.
    summary = {r["name"]: r for r in report["summary"]}
    shares = {}
    for key, split, role in (
        ("segmentation", "debiased", "robustness to context"),
        ("segmentation_in_distribution", IN_DISTRIBUTION_SPLIT, "the paper's protocol"),
    ):
        seg = measured(report, key)
        ssr, gt = seg["SSR without CRF"]["miou"], seg["fully supervised without CRF"]["miou"]
        share = summary[f"share of fully supervised, {split} split: {role} (without CRF)"]
        assert share["measured"] == pytest.approx(100 * ssr / gt)
        assert share["diff"] is None  # the paper's 97.4 is VOC's: shown, not subtracted
        shares[split] = share["measured"]
    gap = summary["share gap, in_distribution - debiased (without CRF)"]["measured"]
    assert gap == pytest.approx(shares[IN_DISTRIBUTION_SPLIT] - shares["debiased"])
    seg = measured(report, "segmentation")

    # The in-distribution split: rendered like train (its own stream) and scored with the three
    # models; each model's mIoU recomputed from its predictions and the split's masks.
    held = build_dataset("toy", str(tmp_path / "data"), IN_DISTRIBUTION_SPLIT)
    assert len(held) == plan.n_val_id
    world = ToyWorld(IN_DISTRIBUTION_SPLIT, seed=plan.seed)
    for i in range(plan.n_val_id):
        assert np.array_equal(held[i].mask, world[i].mask)
    seg_id = measured(report, "segmentation_in_distribution")
    folder = tmp_path / "eval_in_distribution"
    for model, row in (
        ("ssr", "SSR without CRF"),
        ("dino_branch", "SSR + DINO branch (WeCLIP+) without CRF"),
        ("fully_supervised", "fully supervised without CRF"),
    ):
        conf = ConfusionMatrix(held.num_classes)
        for i in range(len(held)):
            png = folder / model / "pred" / "no_crf" / f"{held[i].image_id}.png"
            conf.update(np.asarray(Image.open(png)), held[i].mask)
        assert seg_id[row]["miou"] == pytest.approx(100 * conf.compute()["miou"]), model

    # Variants: one run with both switches (the default), same seed and length as `train`;
    # its rows stand beside the plain run's.
    from ssrseg.engine.checkpoint import load_model

    assert plan.variants == ("dino_branch+kmeans",)
    _, vcfg = load_model(tmp_path / "variants" / "dino_branch+kmeans" / "train", "cpu")
    assert vcfg.decoder.dino_branch and vcfg.cmpa.prototypes == "kmeans"
    assert vcfg.train.iterations == plan.iterations and vcfg.train.seed == plan.seed
    runs = sorted(p.name for p in (tmp_path / "variants").iterdir() if p.is_dir())
    assert runs == ["dino_branch+kmeans"]
    table4 = measured(report, "table4")
    kmeans = table4["CMPA CAM, K-means prototypes"]
    assert kmeans is not None and 0.0 <= kmeans["miou"] <= 100.0
    seg_tab = next(t for t in report["tables"] if t["key"] == "segmentation")
    branch = seg["SSR + DINO branch (WeCLIP+) without CRF"]["miou"]
    ref = seg["SSR without CRF"]["miou"]
    assert f"{branch - ref:+.1f} mIoU without CRF" in seg_tab["note"]
    assert "trained in one run" in seg_tab["note"]

    # Attention grouping on the unscored val scenes: every block of both backbones; the DINO
    # column recomputed independently from the toy DINO on the same scenes.
    from ssrseg.backbones.weights import load_dino
    from ssrseg.config import load_config
    from ssrseg.protocol.demo import default_config_path
    from ssrseg.toy.diagnostics import attention_grouping_by_layer, toy_scenes

    grouping = measured(report, "attention_grouping")
    dino = load_dino(load_config(default_config_path()).backbone.dino)
    by_block = attention_grouping_by_layer(dino, *toy_scenes("val", plan.grouping_images, 0))
    assert list(grouping)[: len(by_block)] == [f"block {i + 1}" for i in by_block]
    for i, value in by_block.items():
        row = grouping[f"block {i + 1}"]
        assert row is not None and row["dino"] == pytest.approx(value, rel=1e-4)
        assert row["clip"] > 0 and row["clip_transition"] > 0

    # Report folder: JSON, Markdown with the tables, config and one panel per requested image.
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["options"]["seed_images"] == plan.n_score
    md = (tmp_path / "report.md").read_text()
    for title in (
        "Table 3, raw CLIP space",
        "Table 4",
        "fully supervised",
        "home context",
        "Attention grouping (val split",
        "DINO branch",
        "](figures/tables_3_4.png)",
    ):
        assert title in md
    assert (tmp_path / "figures" / "tables_3_4.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "config.yaml").is_file()
    assert len(list((tmp_path / "panels").glob("*.png"))) == plan.panels
    assert (tmp_path / "train" / "last").exists()

    # A second run reuses every stage and gives the same report.
    again = run_demo(tmp_path, plan)
    assert again["summary"] == report["summary"]
    assert all(s["status"].startswith(("reused", "ran")) for s in again["stages"].values())
    for stage in ("train", "variants"):
        assert again["stages"][stage]["status"].startswith("reused")


def test_demo_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quick", "--n-train", "--n-val-id", "--iterations", "--no-crf", "--out"):
        assert flag in out
