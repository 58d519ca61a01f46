"""The ``report`` stage of ``ssrseg reproduce``: the stages' results as tables beside the
paper's numbers (:mod:`ssrseg.protocol.report`), figures and example panels.

Only stages whose outputs are current (finished with the run's configuration) contribute
numbers; the stage table says which ran, which were reused and which are missing or stale.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ssrseg.config import atomic_write_text, config_to_dict
from ssrseg.engine.checkpoint import load_model
from ssrseg.engine.infer import Segmenter
from ssrseg.protocol import report as R
from ssrseg.protocol.cam_rows import TABLE3_ROWS, row_labeler, write_panels
from ssrseg.protocol.check import environment
from ssrseg.protocol.plan import STAGES, open_dataset, resolve_seed_split
from ssrseg.protocol.report_tables import _result, _summary, _tables
from ssrseg.runrecord import make_record, record_hash
from ssrseg.toy.diagnostics import bar_chart

STATUS_TEXT = {
    "reuse": "reused (finished earlier with this configuration)",
    "missing": "not run",
    "stale": "not current: made with another configuration (add it to --stages)",
    "n/a": "does not apply",
}


def _figures(run: Any, report: dict[str, Any]) -> None:
    figures = run.out / "figures"
    made = []
    path = R.bars_vs_paper(report, figures / "rows_vs_paper.png")
    if path:
        made.append(path)
    if run.plan.toy_rows:
        path = _toy_tables_figure(report, figures / "tables_3_4.png")
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


def toy_chart_tables(
    report: dict[str, Any],
) -> list[tuple[str, list[tuple[str, float, float | None]]]]:
    """Panels of the toy Table 3 / 4 chart from a report's tables: (title, rows of (name,
    measured mIoU, paper mIoU or None)), with the paper numbers the tables give (in the raw
    space only the initial CAM has one, Table 4's raw 58.6: the paper's Table 3 is in the
    CMPA space); paper-only rows are left out."""
    seed_rows = {name for name, _ in TABLE3_ROWS}
    panels = []
    for key, title in (
        ("table3_raw", "Table 3, raw CLIP space"),
        ("table3_cmpa", "Table 3, CMPA space"),
        ("table4", "Table 4, initial CAM"),
    ):
        tab = R.table(report, key)
        if tab is None:
            continue
        rows = []
        for r in tab["rows"]:
            m = (r["measured"] or {}).get("miou")
            if m is None:
                continue  # paper-only rows
            if key == "table3_raw" and r["name"] not in seed_rows:
                continue  # the chart keeps the Table 3 rows (not the after-PAR diagnostics)
            rows.append((r["name"], float(m), (r["paper"] or {}).get("miou")))
        if rows:
            panels.append((title, rows))
    return panels


def _toy_tables_figure(report: dict[str, Any], path: Path) -> Path | None:
    panels = toy_chart_tables(report)
    if not panels:
        return None
    bar_chart(panels, path)
    return path


def _panels(run: Any) -> list[Path]:
    """Example panels of the first images of the seed split (cached per trained model)."""
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
    """Assemble, print and write the report of ``run`` (a :class:`~ssrseg.protocol.plan.Run`)."""
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
