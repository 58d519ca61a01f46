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
