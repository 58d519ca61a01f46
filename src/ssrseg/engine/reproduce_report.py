"""The ``report`` stage of ``ssrseg reproduce``: the stages' results as tables beside the
paper's numbers (:mod:`ssrseg.engine.report`), figures and example panels.

Only stages whose outputs are current (finished with the run's configuration) contribute
numbers; the stage table says which ran, which were reused and which are missing or stale.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ssrseg.config import atomic_write_text, config_to_dict
from ssrseg.engine import report as R

STATUS_TEXT = {
    "reuse": "reused (finished earlier with this configuration)",
    "missing": "not run",
    "stale": "not current: made with another configuration (add it to --stages)",
    "n/a": "does not apply",
}


def _result(run: Any, stage: str) -> dict[str, Any] | None:
    """A current stage's result dict (None when it did not run or is stale)."""
    if run.status.get(stage) not in ("reuse",) and not str(run.status.get(stage, "")).startswith(
        "ran"
    ):
        return None
    state = run.states.get(stage)
    if not state or state.get("status") != "done":
        return None
    result = state.get("result")
    if not isinstance(result, dict) or "skipped" in result:
        return None
    return result


def _tables(run: Any, report: dict[str, Any]) -> None:
    cfg = run.cfg
    dataset = cfg.data.dataset
    seeds, cmpa = _result(run, "seeds"), _result(run, "cmpa")
    ev, fs = _result(run, "eval"), _result(run, "fully_supervised")
    t3_set, t3_paper = R.paper_rows("table3")
    t4_set, t4_paper = R.paper_rows("table4")

    if seeds and "baselines" in seeds:
        rows = [R.make_row(k, v) for k, v in seeds["baselines"].items()]
        R.add_table(
            report,
            R.make_table("baselines", f"Trivial baselines ({seeds['split']} images)", rows),
        )
    if seeds:
        rows = []
        for name, values in seeds["rows"].items():
            paper = t4_paper["raw CLIP CAM"] if name == "initial CAM" else None
            rows.append(R.make_row(name, values, paper, t4_set, dataset))
        tab = R.make_table(
            "table3_raw",
            f"Table 3, raw CLIP space ({seeds['split']} split, {seeds['images']:,} images)",
            rows,
            note="CAM-seed rows are scored before PAR with the background score (1 - max CAM), "
            "the 'after PAR' rows and '+ PAR (pseudo labels)' after it. The paper's Table 3 is "
            "in the CMPA space (next tables); its raw initial CAM is Table 4's 58.6.",
        )
        tab["short"] = "T3 raw"
        R.add_table(report, tab)
    if seeds or cmpa:
        raw = seeds["rows"].get("initial CAM") if seeds else None
        proj = cmpa["rows"].get("initial CAM") if cmpa else None
        rows = [
            R.make_row("raw CLIP CAM", raw, t4_paper["raw CLIP CAM"], t4_set, dataset),
            R.make_row(
                "direct feature fine-tuning",
                None,
                t4_paper["direct feature fine-tuning"],
                t4_set,
                dataset,
                "paper only",
            ),
            R.make_row(
                "intra-modal contrastive",
                None,
                t4_paper["intra-modal contrastive"],
                t4_set,
                dataset,
                "paper only",
            ),
            R.make_row("CMPA CAM", proj, t4_paper["CMPA CAM"], t4_set, dataset),
        ]
        tab = R.make_table("table4", "Table 4: initial CAM", rows)
        tab["short"] = "T4"
        R.add_table(report, tab)
    if cmpa:
        rows = [
            R.make_row(name, values, t3_paper.get(name), t3_set, dataset)
            for name, values in cmpa["rows"].items()
        ]
        tab = R.make_table(
            "table3_cmpa",
            f"Table 3, CMPA-projected space ({cmpa['split']} split, {cmpa['images']:,} images)",
            rows,
            note="The paper's Table 3 rows; its last row (+ SGC mask) is the paper's "
            "'CAM seeds' figure 78.7.",
        )
        tab["short"] = "T3 CMPA"
        R.add_table(report, tab)
    if seeds and seeds.get("context_leak"):
        rows = [R.make_row(k, v) for k, v in seeds["context_leak"].items()]
        R.add_table(
            report,
            R.make_table(
                "context_leak",
                "Background over-activation",
                rows,
                columns=("home", "elsewhere"),
                note="Share (%) of a class's predicted pixels on ground-truth background, for "
                "images showing the class's home context vs elsewhere.",
            ),
        )
    if ev or fs:
        paper_val = R.PAPER["val"].get(dataset)
        val_set = dataset if paper_val else "voc"
        paper_val = paper_val or R.PAPER["val"]["voc"]
        rows = []
        split = (ev or fs or {}).get("split", cfg.data.val_split)
        for key, label in (("no_crf", "without CRF"), ("crf", "with CRF")):
            if ev and key in ev["rows"]:
                rows.append(
                    R.make_row(f"SSR {label}", ev["rows"][key], paper_val[label], val_set, dataset)
                )
        for key, label in (("no_crf", "without CRF"), ("crf", "with CRF")):
            if fs and key in fs["rows"]:
                rows.append(R.make_row(f"fully supervised {label}", fs["rows"][key]))
        note = ""
        if ev and fs:
            shares = _shares(ev, fs)
            note = "; ".join(f"SSR / fully supervised ({k}): {v:.1f}%" for k, v in shares.items())
            note += " (denominator: the same decoder trained on ground-truth masks)."
        n = (ev or fs or {}).get("images", 0)
        tab = R.make_table(
            "segmentation", f"Segmentation, {split} split ({n:,} images)", rows, note=note
        )
        tab["short"] = "seg"
        R.add_table(report, tab)


def _shares(ev: dict[str, Any], fs: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, label in (("no_crf", "without CRF"), ("crf", "with CRF")):
        if key in ev["rows"] and key in fs["rows"]:
            den = fs["rows"][key]["miou"]
            out[label] = 100 * ev["rows"][key]["miou"] / den if den > 0 else float("nan")
    return out


def _summary(run: Any, report: dict[str, Any]) -> None:
    dataset = run.cfg.data.dataset
    add = report["summary"].append
    seeds, cmpa = _result(run, "seeds"), _result(run, "cmpa")
    ev, fs, ex = _result(run, "eval"), _result(run, "fully_supervised"), _result(run, "export")
    p = R.PAPER
    if cmpa and "+ SGC mask" in cmpa["rows"]:
        add(
            R.summary_row(
                "CAM seeds (CMPA CAM + CLIP / DINO attention + SGC mask), mIoU",
                cmpa["rows"]["+ SGC mask"]["miou"],
                p["seeds_miou"]["value"],
                p["seeds_miou"]["dataset"],
                dataset,
                f"{cmpa['split']} split, {cmpa['images']:,} images",
            )
        )
    if seeds and "+ PAR (pseudo labels)" in seeds["rows"]:
        add(
            R.summary_row(
                "pseudo labels (raw space, + PAR), mIoU",
                seeds["rows"]["+ PAR (pseudo labels)"]["miou"],
                None,
                None,
                dataset,
                "the paper gives none",
            )
        )
    t4_set, t4 = R.paper_rows("table4")
    if seeds and "initial CAM" in seeds["rows"]:
        add(
            R.summary_row(
                "Table 4: raw CLIP initial CAM, mIoU",
                seeds["rows"]["initial CAM"]["miou"],
                t4["raw CLIP CAM"]["miou"],
                t4_set,
                dataset,
            )
        )
    if cmpa and "initial CAM" in cmpa["rows"]:
        add(
            R.summary_row(
                "Table 4: CMPA initial CAM, mIoU",
                cmpa["rows"]["initial CAM"]["miou"],
                t4["CMPA CAM"]["miou"],
                t4_set,
                dataset,
            )
        )
    paper_val = p["val"].get(dataset)
    val_set = dataset if paper_val else "voc"
    paper_val = paper_val or p["val"]["voc"]
    if ev:
        for key, label in (("crf", "with CRF"), ("no_crf", "without CRF")):
            if key in ev["rows"]:
                add(
                    R.summary_row(
                        f"{ev['split']} mIoU, {label}",
                        ev["rows"][key]["miou"],
                        paper_val[label]["miou"],
                        val_set,
                        dataset,
                        f"{ev['images']:,} images, multi-scale + flip",
                    )
                )
    if dataset == "voc":
        for key, label in (("crf", "with CRF"), ("no_crf", "without CRF")):
            archive = (ex or {}).get("archives", {}).get(key)
            note = (
                f"upload {archive} to the evaluation server"
                if archive
                else "needs the test split (export stage)"
            )
            add(
                R.summary_row(
                    f"test mIoU, {label}",
                    None,
                    p["test"]["voc"][label]["miou"],
                    "voc",
                    dataset,
                    note,
                )
            )
    share = p["share_fully_supervised"]
    if ev and fs:
        for label, value in _shares(ev, fs).items():
            add(
                R.summary_row(
                    f"share of fully supervised ({label})",
                    value,
                    share["value"],
                    share["dataset"],
                    dataset,
                    "denominator: the same decoder trained on ground-truth masks (the paper: "
                    f"a fully supervised CLIP ViT-B, {share['denominator']})",
                )
            )
    elif ev and dataset == "voc" and "crf" in ev["rows"]:
        add(
            R.summary_row(
                "share of fully supervised (with CRF)",
                100 * ev["rows"]["crf"]["miou"] / share["denominator"],
                share["value"],
                share["dataset"],
                dataset,
                f"denominator: the paper's fully supervised {share['denominator']} mIoU",
            )
        )


def _figures(run: Any, report: dict[str, Any]) -> None:
    figures = run.out / "figures"
    made = []
    path = R.bars_vs_paper(report, figures / "rows_vs_paper.png")
    if path:
        made.append(path)
    ev = _result(run, "eval")
    if ev:
        labels = {"no_crf": "without CRF", "crf": "with CRF"}
        results = {labels[k]: {"iou": v} for k, v in ev["iou"].items()}
        path = R.per_class_bars(
            results,
            ev["class_names"],
            f"Per-class IoU, {ev['split']} split",
            figures / "per_class_iou.png",
        )
        if path:
            made.append(path)
    made += _panels(run)
    report["figures"] = [str(p.relative_to(run.out)) for p in made]


def _panels(run: Any) -> list[Path]:
    """Example panels of the first images of the seed split (cached per trained model)."""
    from ssrseg.engine.cam_rows import row_labeler, write_panels
    from ssrseg.engine.checkpoint import load_model
    from ssrseg.engine.infer import Segmenter
    from ssrseg.engine.reproduce import open_dataset, resolve_seed_split

    plan, cfg = run.plan, run.cfg
    if plan.panels <= 0 or _result(run, "train") is None:
        return []
    folder = run.out / "panels"
    split, _ = resolve_seed_split(cfg, plan)
    key = {"train": run.tokens.get("train"), "split": split, "n": plan.panels}
    stamp = folder / "panels.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == key:
        return sorted(folder.glob("*.png"))
    model, _ = load_model(run.folder("train"), run.device)
    dataset = open_dataset(cfg, split, labels=True)
    labeler = row_labeler(model.labeler, cfg, {})
    cmpa = model.cmpa if cfg.cam.projected and model.cmpa is not None else None
    seg = Segmenter(
        model.segment,
        dataset.num_classes,
        model.patch_size,
        cfg.infer,
        class_names=dataset.class_names,
        crf=cfg.crf,
        device=run.device,
    )
    for old in folder.glob("*.png"):
        old.unlink()
    n = min(plan.panels, len(dataset))
    written = write_panels(folder, dataset, range(n), labeler, seg, cmpa, plan.long_side)
    atomic_write_text(stamp, json.dumps(key))
    return written


def _stages(run: Any, report: dict[str, Any], total_s: float) -> None:
    from ssrseg.engine.reproduce import STAGES

    for stage in STAGES:
        status = run.status.get(stage, "n/a")
        if stage in ("check", "report"):
            status = "ran"
        if status == "n/a" and stage not in run.notes:
            continue
        state = run.states.get(stage) or {}
        entry: dict[str, Any] = {"status": STATUS_TEXT.get(status, status)}
        if state.get("status") == "done" and status not in ("stale", "missing"):
            entry.update(
                hash=state.get("hash"),
                wall_s=state.get("wall_s"),
                peak_memory=state.get("peak_memory"),
            )
            result = state.get("result") or {}
            if "skipped" in result:
                entry["note"] = result["skipped"]
        if stage in run.notes:
            entry["note"] = run.notes[stage]
        report["stages"][stage] = entry
    report["stages"]["report"]["wall_s"] = None
    report["total_wall_s"] = round(total_s, 1)


def build_report(run: Any, elapsed_s: float) -> dict[str, Any]:
    """Assemble, print and write the report of ``run`` (a :class:`~ssrseg.engine.reproduce.Run`)."""
    from ssrseg.engine.reproduce_check import environment
    from ssrseg.runrecord import make_record, record_hash

    t0 = time.perf_counter()
    cfg, plan = run.cfg, run.plan
    import dataclasses

    options = {
        k: v
        for k, v in dataclasses.asdict(plan).items()
        if k not in ("progress", "stages", "redo", "title")
    }
    record = make_record(cfg, options)
    dataset = cfg.data.dataset
    title = plan.title or f"SSR reproduction on {R.DATASET_NAMES.get(dataset, dataset)}"
    report = R.new_report(title, dataset, record_hash(record))
    report["config"] = config_to_dict(cfg)
    report["options"] = record["options"]
    report["check"] = run.check
    report["warnings"] = list(run.check.get("warnings", []))
    report["environment"] = environment(run.device)
    _tables(run, report)
    _summary(run, report)
    for tab in report["tables"]:
        R.print_table(tab)
    _figures(run, report)
    _stages(run, report, elapsed_s + time.perf_counter() - t0)
    report["stages"]["report"]["wall_s"] = round(time.perf_counter() - t0, 1)
    _, md_path = R.write_report(report, run.out)
    print(f"\nreport: {md_path} (total {report['total_wall_s']:.0f} s)")
    return report
