"""The reproduction report: the paper's numbers as data, differences, Markdown, hooks; and
``ssrseg reproduce`` end to end on a tiny fake COCO (split-folder layout, instances JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reproduce_fakes import REPO, make_fake_coco, tiny_overrides, write_weights
from ssrseg.config import load_config
from ssrseg.protocol import report as R
from ssrseg.protocol.cam_rows import TABLE3_ROWS, slug


def test_paper_rows_name_our_rows() -> None:
    """The paper's Table 3 numbers attach to our rows by name, in the paper's order."""
    _, rows = R.paper_rows("table3")
    assert list(rows) == [name for name, _ in TABLE3_ROWS[:4]]
    assert rows["+ SGC mask"]["miou"] == R.PAPER["seeds_miou"]["value"] == 78.7
    assert R.PAPER["val"]["voc"]["with CRF"]["miou"] == 79.5
    assert R.PAPER["val"]["coco"]["without CRF"]["miou"] == 49.2
    assert R.PAPER_SPLIT_SIZES[("voc", "train_aug")] == 10582


def test_difference_only_on_the_papers_dataset() -> None:
    ours = {"precision": 80.0, "recall": 90.5, "miou": 70.25}
    paper = {"precision": 87.9, "recall": 89.1, "miou": 78.7}
    voc = R.make_row("+ SGC mask", ours, paper, "voc", "voc")
    assert voc["diff"] == pytest.approx({"precision": -7.9, "recall": 1.4, "miou": -8.45})
    toy = R.make_row("+ SGC mask", ours, paper, "voc", "toy")
    assert toy["diff"] is None and toy["paper"] == paper
    missing = R.make_row("paper only", None, {"miou": 53.5}, "voc", "voc")
    assert missing["diff"] is None


def test_markdown_table_columns() -> None:
    rows = [
        R.make_row(
            "a", {"precision": 1.0, "recall": 2.0, "miou": 3.0}, {"miou": 4.0}, "voc", "voc"
        ),
        R.make_row("b", {"precision": 5.0, "recall": 6.0, "miou": 7.26}),
    ]
    md = R.table_markdown(R.make_table("t", "Title", rows), "voc")
    lines = md.splitlines()
    assert lines[2] == "| row | P | R | mIoU | paper mIoU | diff mIoU |"
    assert lines[4] == "| a | 1.0 | 2.0 | 3.0 | 4.0 | -1.0 |"
    assert lines[5] == "| b | 5.0 | 6.0 | 7.3 | - | - |"
    toy = R.table_markdown(R.make_table("t", "Title", rows[:1]), "toy")
    assert "paper (VOC 2012) mIoU" in toy.splitlines()[2]


def test_hook_adds_a_row_and_a_table(tmp_path: Path) -> None:
    report = R.new_report("T", "toy", "abc")
    R.add_table(report, R.make_table("table4", "Table 4", []))

    def hook(rep: dict[str, Any], out: Path) -> None:
        R.add_row(rep, "table4", R.make_row("K-means CMPA", {"miou": 12.5}))
        R.add_table(rep, R.make_table("extra", "Attention mass", [], columns=("value",)))

    R.register_hook(hook)
    try:
        R.write_report(report, tmp_path)
    finally:
        R._HOOKS.remove(hook)
    md = (tmp_path / "report.md").read_text()
    assert "| K-means CMPA | - | - | 12.5 |" in md and "### Attention mass" in md


def test_slug() -> None:
    assert slug("+ CLIP attention (box mask), after PAR") == "clip_attention_box_mask_after_par"


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from ssrseg.protocol import plan as rplan
    from ssrseg.protocol import reproduce as rp

    base = tmp_path_factory.mktemp("coco")
    make_fake_coco(base / "coco")
    clip, dino = write_weights(base)
    cfg = load_config(
        REPO / "configs" / "coco.yaml",
        [*tiny_overrides(clip, dino, base / "coco"), "cmpa.enabled=false", "cam.projected=false"],
    )
    plan = rplan.ReproducePlan(device="cpu", progress=False, panels=0, crf="off")
    return {"out": base / "run", "report": rp.run_reproduce(cfg, base / "run", plan)}


def test_coco_end_to_end(coco_run: dict[str, Any]) -> None:
    report = coco_run["report"]
    assert report["dataset"] == "coco"
    summary = {r["name"]: r for r in report["summary"]}
    val = summary["val mIoU, without CRF"]
    assert val["paper"] == 49.2 and val["diff"] == pytest.approx(val["measured"] - 49.2)
    assert "test mIoU, with CRF" not in summary  # no VOC test server for COCO
    assert report["check"]["splits"]["training"]["size"] == 3
    assert report["check"]["splits"]["training"]["tags"] == "COCO instances JSON " + (
        "instances_train2014.json"
    )
    assert any(
        "coco train has 3 images where the paper uses 82,081" in w for w in report["warnings"]
    )
    # cmpa.enabled=false: the CMPA stage says why it has no rows; Table 4 keeps the raw row
    assert "cmpa.enabled is false" in report["stages"]["cmpa"]["note"]
    t4 = R.measured(report, "table4")
    assert t4["raw CLIP CAM"] is not None and t4["CMPA CAM"] is None
    assert "export" not in report["stages"]


def _seg(no_crf: float, crf: float, images: int = 10) -> dict[str, Any]:
    rows = {"no_crf": {"miou": no_crf}, "crf": {"miou": crf}}
    return {"split": "debiased", "images": images, "rows": rows}


def test_variant_rows_and_reading_with_a_shorter_reference() -> None:
    """Variants shorter than `train`: their rows carry the length and the DINO branch is read
    against the plain run of that length, not against the (longer) main SSR run."""
    from ssrseg.protocol import report_tables as RR

    var = {
        "iterations": 100,
        "variants": {
            "dino_branch": {"segmentation": _seg(41.25, 43.0)},
            "kmeans": {"cmpa_cam": {"precision": 50.0, "recall": 60.0, "miou": 30.0}},
            "plain": {
                "segmentation": _seg(40.0, 44.5),
                "cmpa_cam": {"precision": 40.0, "recall": 70.0, "miou": 28.0},
            },
        },
    }
    rows = RR._kmeans_rows(var, 240, {"miou": 63.3}, "voc", "toy")
    assert [r["name"] for r in rows] == [
        "CMPA CAM, K-means prototypes, 100 iterations",
        "CMPA CAM, class-mean prototypes, 100 iterations",
    ]
    assert rows[0]["measured"]["miou"] == 30.0 and rows[0]["diff"] is None  # toy vs VOC
    seg = RR._branch_rows(var, None)
    assert [r["name"] for r in seg] == [
        "SSR, 100 iterations (reference) without CRF",
        "SSR, 100 iterations (reference) with CRF",
        "SSR + DINO branch (WeCLIP+) without CRF",
        "SSR + DINO branch (WeCLIP+) with CRF",
    ]
    main_ev = _seg(90.0, 90.0)  # must not be the reference: another length
    reading = RR._branch_reading(var, main_ev, 240)
    assert "+1.2 mIoU without CRF, -1.5 mIoU with CRF" in reading
    with_pr = {k: {"precision": 50.0, "recall": 20.0, "miou": 15.0} for k in ("no_crf", "crf")}
    ref_pr = {k: {"precision": 40.0, "recall": 30.0, "miou": 20.0} for k in ("no_crf", "crf")}
    pr = {
        "iterations": 100,
        "variants": {
            "dino_branch": {"segmentation": {"images": 5, "rows": with_pr}},
            "plain": {"segmentation": {"images": 5, "rows": ref_pr}},
        },
    }
    assert "-5.0 mIoU without CRF (P 40.0 -> 50.0, R 30.0 -> 20.0)" in RR._branch_reading(
        pr, None, 240
    )
    assert "100 iterations each, 10 images" in reading
    # same length as train and no plain variant: the main eval run is the reference
    same = {"iterations": 240, "variants": {"dino_branch": var["variants"]["dino_branch"]}}
    assert "-48.8 mIoU without CRF" in RR._branch_reading(same, main_ev, 240)
    assert RR._kmeans_rows(same, 240, {"miou": 63.3}, "voc", "toy") == []
    assert RR._branch_reading(None, main_ev, 240) == ""


def test_toy_chart_panels_from_report_tables() -> None:
    """Raw Table 3 keeps the seed rows (not the after-PAR ones) with the paper numbers its
    table gives; Table 4 keeps measured rows with the paper's and drops the paper-only ones."""
    from ssrseg.protocol import report_stage as RS

    report = R.new_report("T", "toy", "abc")
    m = {"precision": 1.0, "recall": 2.0}
    raw = [
        R.make_row("initial CAM", {**m, "miou": 33.0}, {"miou": 58.6}, "voc", "toy"),
        R.make_row("initial CAM, after PAR", {**m, "miou": 35.0}),
        R.make_row("+ SGC mask", {**m, "miou": 36.0}),
    ]
    t4 = [
        R.make_row("raw CLIP CAM", {"miou": 33.0}, {"miou": 58.6}, "voc", "toy"),
        R.make_row("intra-modal contrastive", None, {"miou": 57.8}, "voc", "toy"),
        R.make_row("CMPA CAM, K-means prototypes", {"miou": 20.0}, {"miou": 63.3}, "voc", "toy"),
    ]
    R.add_table(report, R.make_table("table3_raw", "raw", raw))
    R.add_table(report, R.make_table("table4", "t4", t4))
    panels = RS.toy_chart_tables(report)
    assert panels == [
        ("Table 3, raw CLIP space", [("initial CAM", 33.0, 58.6), ("+ SGC mask", 36.0, None)]),
        (
            "Table 4, initial CAM",
            [("raw CLIP CAM", 33.0, 58.6), ("CMPA CAM, K-means prototypes", 20.0, 63.3)],
        ),
    ]


def test_markdown_digits_per_table() -> None:
    tab = R.make_table("g", "Grouping", [R.make_row("block 1", {"dino": 0.774})], ("dino",))
    tab["digits"] = 2
    assert "| block 1 | 0.77 |" in R.table_markdown(tab, "toy")
    assert "| row | DINO |" in R.table_markdown(tab, "toy")


def _seg_split(split: str, rows: dict[str, float], images: int = 150) -> dict[str, Any]:
    """A segmentation result of ``split``: mIoU per CRF mode (P / R fixed)."""
    return {
        "split": split,
        "images": images,
        "rows": {k: {"precision": 50.0, "recall": 50.0, "miou": v} for k, v in rows.items()},
    }


def test_table6_share_on_both_splits_and_their_gap() -> None:
    """A report built from hand-written stage results: the Table 6 share on each split,
    labelled by what it measures, and the gap between the two, by hand."""
    from types import SimpleNamespace

    from ssrseg.protocol import report_tables as RR

    cfg = load_config(REPO / "configs" / "toy.yaml")
    deb = {"ev": _seg_split("debiased", {"no_crf": 18.0, "crf": 20.0}),
           "fs": _seg_split("debiased", {"no_crf": 27.0, "crf": 32.0})}  # fmt: skip
    ind = {
        "split": "in_distribution",
        "images": 120,
        "models": {
            "ssr": _seg_split("in_distribution", {"no_crf": 30.0, "crf": 33.0}, 120),
            "fully_supervised": _seg_split("in_distribution", {"no_crf": 40.0, "crf": 44.0}, 120),
            "dino_branch": _seg_split("in_distribution", {"no_crf": 28.5, "crf": 31.0}, 120),
        },
    }
    var = {
        "iterations": cfg.train.iterations,
        "variants": {
            "dino_branch": {"trained_as": "dino_branch", "segmentation": deb["ev"]},
        },
    }
    results = {"eval": deb["ev"], "fully_supervised": deb["fs"], "variants": var,
               "eval_in_distribution": ind}  # fmt: skip
    run = SimpleNamespace(
        cfg=cfg,
        status={stage: "reuse" for stage in results},
        states={s: {"status": "done", "result": r} for s, r in results.items()},
    )
    report = R.new_report("T", "toy", "abc")
    RR._tables(run, report)
    RR._summary(run, report)
    summary = {r["name"]: r for r in report["summary"]}
    # by hand: 30 / 40 = 75.0 %, 33 / 44 = 75.0 %; 18 / 27 = 66.67 %, 20 / 32 = 62.5 %
    protocol = "share of fully supervised, in_distribution split: the paper's protocol"
    robust = "share of fully supervised, debiased split: robustness to context"
    expected = {
        f"{protocol} (without CRF)": 75.0,
        f"{robust} (without CRF)": 66.666667,
        "share gap, in_distribution - debiased (without CRF)": 8.333333,
        f"{protocol} (with CRF)": 75.0,
        f"{robust} (with CRF)": 62.5,
        "share gap, in_distribution - debiased (with CRF)": 12.5,
    }
    shares = [r for r in report["summary"] if "share" in r["name"]]
    assert [r["name"] for r in shares] == list(expected)  # per CRF mode: both splits, gap
    for name, value in expected.items():
        assert summary[name]["measured"] == pytest.approx(value, abs=1e-6), name
        assert summary[name]["diff"] is None  # the paper's 97.4 is VOC's: shown, not subtracted
    assert summary[f"{protocol} (with CRF)"]["paper"] == 97.4
    assert summary["share gap, in_distribution - debiased (with CRF)"]["paper"] is None
    ind_miou = summary["in_distribution mIoU, without CRF"]
    assert ind_miou["measured"] == 30.0 and "the paper's protocol" in ind_miou["note"]
    assert "robustness to context" in summary["debiased mIoU, with CRF"]["note"]
    # one segmentation table per split, each with the three models and its own share
    seg, seg_id = (
        R.measured(report, "segmentation"),
        R.measured(report, "segmentation_in_distribution"),
    )
    assert seg["SSR + DINO branch (WeCLIP+) with CRF"]["miou"] == 20.0  # the debiased result
    assert [k for k in seg_id] == [
        "SSR without CRF",
        "SSR with CRF",
        "SSR + DINO branch (WeCLIP+) without CRF",
        "SSR + DINO branch (WeCLIP+) with CRF",
        "fully supervised without CRF",
        "fully supervised with CRF",
    ]
    assert seg_id["SSR + DINO branch (WeCLIP+) without CRF"]["miou"] == 28.5
    tab = R.table(report, "segmentation_in_distribution")
    assert tab is not None
    assert tab["title"] == "Segmentation, in_distribution split (120 images): the paper's protocol"
    assert "SSR / fully supervised (without CRF): 75.0%" in tab["note"]
    assert "-1.5 mIoU without CRF" in tab["note"]  # the DINO branch read against SSR there
    md = R.report_markdown(report)
    assert f"| {protocol} (without CRF) | 75.0 | 97.4 (VOC 2012) | - |" in md
    assert "| share gap, in_distribution - debiased (with CRF) | 12.5 | - | - |" in md


def test_share_rows_without_the_in_distribution_split_keep_their_names() -> None:
    """A VOC-style run (no role for its val split, no in-distribution split): plain names, no
    gap row."""
    from ssrseg.protocol.in_distribution import share_gaps, share_rows

    ev, fs = _seg_split("val", {"no_crf": 40.0}), _seg_split("val", {"no_crf": 50.0})
    rows = share_rows([("val", ev, fs)], "voc")
    assert [r["name"] for r in rows] == ["share of fully supervised (without CRF)"]
    assert rows[0]["measured"] == pytest.approx(80.0)
    assert rows[0]["diff"] == pytest.approx(80.0 - 97.4)  # VOC: the paper's own dataset
    assert share_gaps({"with CRF": 70.0, "without CRF": 60.0}, {"with CRF": 65.5}) == {
        "with CRF": 4.5
    }
