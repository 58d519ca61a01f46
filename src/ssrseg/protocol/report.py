"""The reproduction report: measured rows beside the paper's numbers, as data, Markdown and
figures (``report.json``, ``report.md``, ``figures/*.png``).

The paper's numbers live here as data (:data:`PAPER`, :data:`PAPER_SPLIT_SIZES`), each with the
dataset it was measured on. A report is a plain dict (see :func:`new_report`) holding tables of
rows; a row has ``measured`` and ``paper`` values per metric column and the difference
``measured - paper``, which is only computed when the row's paper number was measured on the
same dataset as ours (the toy world shows the VOC numbers for reference, without differences).

Hooks: other modules (e.g. the toy diagnostics) add tables, rows or figures with
:func:`register_hook`; every hook runs on the finished report dict before it is written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ssrseg.config import atomic_write_text
from ssrseg.metrics import json_safe

# ----------------------------------------------------------------------------------------------
# The paper's numbers [paper], SSR_SPEC top and section 11. Percent; P / R / mIoU class means.

PAPER_SOURCE = "Bi et al., SSR, AAAI 2026 (arXiv 2512.01701)"

PAPER: dict[str, Any] = {
    # Table 3: CAM quality on VOC train, in the CMPA-projected space (its first row is the
    # "CMPA initial CAM"; the last row is the paper's "CAM seeds" figure 78.7).
    "table3": {
        "dataset": "voc",
        "rows": {
            "initial CAM": {"precision": 72.8, "recall": 84.6, "miou": 63.3},
            "+ CLIP attention (box mask)": {"precision": 85.2, "recall": 88.9, "miou": 74.6},
            "+ DINO attention (box mask)": {"precision": 84.3, "recall": 86.2, "miou": 76.3},
            "+ SGC mask": {"precision": 87.9, "recall": 89.1, "miou": 78.7},
        },
    },
    # Table 4: initial CAM mIoU on VOC train. Only two rows are methods this project runs.
    "table4": {
        "dataset": "voc",
        "rows": {
            "raw CLIP CAM": {"miou": 58.6},
            "direct feature fine-tuning": {"miou": 53.5},
            "intra-modal contrastive": {"miou": 57.8},
            "CMPA CAM": {"miou": 63.3},
        },
    },
    "seeds_miou": {"dataset": "voc", "value": 78.7},
    # Segmentation mIoU; Table 5 adds SSR's VOC val precision / recall (with CRF, as its mIoU).
    "val": {
        "voc": {
            "with CRF": {"miou": 79.5, "precision": 87.9, "recall": 89.1},
            "without CRF": {"miou": 78.2},
        },
        "coco": {"with CRF": {"miou": 50.6}, "without CRF": {"miou": 49.2}},
    },
    "test": {"voc": {"with CRF": {"miou": 79.6}, "without CRF": {"miou": 78.1}}},
    # Table 6: share of fully supervised; the paper divides by a fully supervised CLIP ViT-B
    # figure of about 81.6 mIoU (VOC val).
    "share_fully_supervised": {"dataset": "voc", "value": 97.4, "denominator": 81.6},
}

# Split sizes the paper uses [paper] (VOC train_aug and train: the field's convention).
PAPER_SPLIT_SIZES: dict[tuple[str, str], int] = {
    ("voc", "train_aug"): 10582,
    ("voc", "train"): 1464,
    ("voc", "val"): 1449,
    ("voc", "test"): 1456,
    ("coco", "train"): 82081,
    ("coco", "val"): 40137,
}

METRIC_LABELS: dict[str, str] = {
    "precision": "P",
    "recall": "R",
    "miou": "mIoU",
    "home": "home context",
    "elsewhere": "elsewhere",
    "value": "value",
    "clip": "CLIP",
    "dino": "DINO",
    "clip_transition": "CLIP after transition",
    "dino_transition": "DINO after transition",
}
PRF = ("precision", "recall", "miou")

DATASET_NAMES = {"voc": "VOC 2012", "coco": "COCO 2014", "toy": "toy world"}


# ----------------------------------------------------------------------------------------------
# Rows and tables (plain dicts, JSON-ready)


def row_summary(result: dict[str, Any]) -> dict[str, float]:
    """P / R / mIoU of a :meth:`ConfusionMatrix.compute` dict (class means), in percent."""
    return {
        "precision": 100 * float(result["precision"]),
        "recall": 100 * float(result["recall"]),
        "miou": 100 * float(result["miou"]),
    }


def make_row(
    name: str,
    measured: dict[str, float] | None,
    paper: dict[str, float] | None = None,
    paper_dataset: str | None = None,
    dataset: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One table row; ``diff = measured - paper`` per metric both have, only when the paper's
    number was measured on ``dataset`` (otherwise it is shown for reference only)."""
    diff: dict[str, float] | None = None
    if measured is not None and paper and paper_dataset is not None and paper_dataset == dataset:
        diff = {
            k: measured[k] - v
            for k, v in paper.items()
            if k in measured and _finite(measured[k]) and _finite(v)
        }
    return {
        "name": name,
        "measured": measured,
        "paper": paper,
        "paper_dataset": paper_dataset if paper else None,
        "diff": diff,
        "note": note,
    }


def make_table(
    key: str,
    title: str,
    rows: list[dict[str, Any]],
    columns: Sequence[str] = PRF,
    note: str = "",
) -> dict[str, Any]:
    return {"key": key, "title": title, "columns": list(columns), "rows": rows, "note": note}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def table(report: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The table ``key`` of a report, or None."""
    for t in report["tables"]:
        if t["key"] == key:
            return t
    return None


def measured(report: dict[str, Any], key: str) -> dict[str, dict[str, float] | None]:
    """``{row name: measured values}`` of table ``key`` (empty when absent)."""
    t = table(report, key)
    return {} if t is None else {r["name"]: r["measured"] for r in t["rows"]}


def add_table(report: dict[str, Any], tab: dict[str, Any], after: str | None = None) -> None:
    """Insert ``tab`` (from :func:`make_table`) after table ``after`` (default: at the end)."""
    tables = report["tables"]
    index = len(tables)
    if after is not None:
        for i, t in enumerate(tables):
            if t["key"] == after:
                index = i + 1
    tables.insert(index, tab)


def add_row(report: dict[str, Any], key: str, row: dict[str, Any]) -> None:
    """Append ``row`` (from :func:`make_row`) to table ``key`` (which must exist)."""
    t = table(report, key)
    if t is None:
        raise KeyError(f"report has no table {key!r}")
    t["rows"].append(row)


def paper_rows(key: str) -> tuple[str, dict[str, dict[str, float]]]:
    """(dataset, {row name: paper values}) of ``PAPER[key]`` (Table 3 / Table 4)."""
    entry = PAPER[key]
    return entry["dataset"], entry["rows"]


# ----------------------------------------------------------------------------------------------
# Hooks


ReportHook = Callable[[dict[str, Any], Path], None]
_HOOKS: list[ReportHook] = []


def register_hook(hook: ReportHook) -> ReportHook:
    """Register ``hook(report, out_dir)``: it may add tables / rows (:func:`add_table`,
    :func:`add_row`) and figures (write under ``out_dir / "figures"`` and append the relative
    path to ``report["figures"]``). Returns the hook (usable as a decorator)."""
    if hook not in _HOOKS:
        _HOOKS.append(hook)
    return hook


def run_hooks(report: dict[str, Any], out_dir: Path) -> None:
    for hook in list(_HOOKS):
        hook(report, out_dir)


# ----------------------------------------------------------------------------------------------
# Markdown


def _fmt(value: Any, digits: int = 1) -> str:
    if not _finite(value):
        return "-"
    return f"{value:.{digits}f}"


def _signed(value: Any) -> str:
    if not _finite(value):
        return "-"
    return f"{value:+.1f}"


def table_markdown(tab: dict[str, Any], dataset: str | None = None) -> str:
    """A table as Markdown: measured columns, then paper columns and differences when any
    row has them."""
    cols = tab["columns"]
    rows = tab["rows"]
    digits = int(tab.get("digits", 1))  # measured values' decimals (ratios need 2)
    with_paper = [c for c in cols if any(r["paper"] and c in r["paper"] for r in rows)]
    with_diff = [c for c in with_paper if any(r["diff"] and c in r["diff"] for r in rows)]
    paper_sets = {r["paper_dataset"] for r in rows if r["paper"]}
    tag = ""
    if paper_sets and paper_sets != {dataset}:
        tag = " (" + ", ".join(DATASET_NAMES.get(d, d) for d in sorted(paper_sets)) + ")"
    head = ["row", *(METRIC_LABELS.get(c, c) for c in cols)]
    head += [f"paper{tag} {METRIC_LABELS.get(c, c)}" for c in with_paper]
    head += [f"diff {METRIC_LABELS.get(c, c)}" for c in with_diff]
    lines = [f"### {tab['title']}", "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "---|" * len(head))
    for r in rows:
        m = r["measured"] or {}
        p = r["paper"] or {}
        d = r["diff"] or {}
        cells = [r["name"] + (f" ({r['note']})" if r.get("note") else "")]
        cells += [_fmt(m.get(c), digits) for c in cols]
        cells += [_fmt(p.get(c)) for c in with_paper]
        cells += [_signed(d.get(c)) for c in with_diff]
        lines.append("| " + " | ".join(cells) + " |")
    if tab.get("note"):
        lines += ["", tab["note"]]
    return "\n".join(lines) + "\n"


def summary_markdown(report: dict[str, Any]) -> str:
    rows = report.get("summary", [])
    if not rows:
        return ""
    lines = [
        "## Headline numbers",
        "",
        "| result | ours | paper | diff | note |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        paper = _fmt(r.get("paper"))
        if r.get("paper") is not None and r.get("paper_dataset") != report["dataset"]:
            paper += f" ({DATASET_NAMES.get(r.get('paper_dataset'), r.get('paper_dataset'))})"
        lines.append(
            f"| {r['name']} | {_fmt(r.get('measured'))} | {paper} | {_signed(r.get('diff'))} | "
            f"{r.get('note', '')} |"
        )
    return "\n".join(lines) + "\n"


def _mb(value: Any) -> str:
    return "-" if not _finite(value) else f"{value:,.0f} MB"


def _seconds(value: Any) -> str:
    if not _finite(value):
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def stages_markdown(report: dict[str, Any]) -> str:
    lines = [
        "## Stages",
        "",
        "| stage | status | wall time | peak CPU RSS | peak GPU memory | record hash |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in report["stages"].items():
        peak = s.get("peak_memory") or {}
        lines.append(
            f"| {name} | {s.get('status', '-')} | {_seconds(s.get('wall_s'))} | "
            f"{_mb(peak.get('cpu_rss_mb'))} | {_mb(peak.get('gpu_mb'))} | "
            f"{s.get('hash') or '-'} |"
        )
    notes = [f"- {n}: {s['note']}" for n, s in report["stages"].items() if s.get("note")]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def check_markdown(report: dict[str, Any]) -> str:
    check = report.get("check") or {}
    splits = check.get("splits") or {}
    if not splits:
        return ""
    lines = [
        "## Data",
        "",
        "| role | split | images | paper | tags from |",
        "|---|---|---|---|---|",
    ]
    for role, s in splits.items():
        paper = s.get("paper_size")
        lines.append(
            f"| {role} | {s['split']} | {s['size']:,} | "
            f"{f'{paper:,}' if paper else '-'} | {s.get('tags', '-')} |"
        )
    return "\n".join(lines) + "\n"


def environment_markdown(report: dict[str, Any]) -> str:
    env = report.get("environment") or {}
    lines = ["## Environment", ""]
    for key, value in env.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        lines.append(f"- {key}: {value}")
    return "\n".join(lines) + "\n"


def report_markdown(report: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    dataset = report["dataset"]
    parts = [f"# {report['title']}\n"]
    head = [
        f"Dataset: {DATASET_NAMES.get(dataset, dataset)}; configuration hash "
        f"`{report['config_hash']}` (the effective configuration is in report.json and "
        "config.yaml). Paper: " + PAPER_SOURCE + ".",
    ]
    if dataset not in ("voc", "coco"):
        head.append(
            "The paper's numbers are VOC 2012's and are shown for reference only: this dataset "
            "is not the paper's, so no differences are computed."
        )
    parts.append(" ".join(head) + "\n")
    if report.get("warnings"):
        parts.append("**Warnings**\n\n" + "\n".join(f"- {w}" for w in report["warnings"]) + "\n")
    summary = summary_markdown(report)
    if summary:
        parts.append(summary)
    for tab in report["tables"]:
        parts.append(table_markdown(tab, dataset))
    if report.get("figures"):
        links = "\n".join(f"![{Path(f).stem}]({f})" for f in report["figures"])
        parts.append("## Figures\n\n" + links + "\n")
    for section in (check_markdown, stages_markdown, environment_markdown):
        text = section(report)
        if text:
            parts.append(text)
    return "\n".join(parts)


def print_table(tab: dict[str, Any]) -> None:
    """A compact console rendering of a table (measured values, then the paper's)."""
    cols = tab["columns"]
    print(f"\n{tab['title']}")
    print(
        f"  {'row':<38} " + " ".join(f"{METRIC_LABELS.get(c, c)[:6]:>6}" for c in cols) + "  paper"
    )
    for r in tab["rows"]:
        m = r["measured"] or {}
        p = r["paper"] or {}
        paper = " / ".join(_fmt(p.get(c)) for c in cols if c in p)
        print(f"  {r['name']:<38} " + " ".join(f"{_fmt(m.get(c)):>6}" for c in cols) + f"  {paper}")


# ----------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bars_vs_paper(report: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars: our mIoU beside the paper's for every row that has a paper mIoU."""
    labels, ours, paper = [], [], []
    for tab in report["tables"]:
        for r in tab["rows"]:
            p = (r["paper"] or {}).get("miou")
            if p is None:
                continue
            m = (r["measured"] or {}).get("miou")
            labels.append(f"{tab.get('short', tab['title'])}: {r['name']}")
            ours.append(m if _finite(m) else 0.0)
            paper.append(p)
    if not labels:
        return None
    plt = _pyplot()
    height = max(3.0, 0.45 * len(labels) + 1.0)
    fig, ax = plt.subplots(figsize=(9, height))
    ys = list(range(len(labels)))
    ax.barh([y - 0.2 for y in ys], ours, height=0.4, label="ours", color="#3a7bd5")
    paper_label = "paper"
    if report["dataset"] not in ("voc", "coco"):
        paper_label = "paper (VOC 2012, reference)"
    ax.barh([y + 0.2 for y in ys], paper, height=0.4, label=paper_label, color="#bbbbbb")
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("mIoU (%)")
    ax.set_xlim(0, 100)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8)
    ax.set_title(f"{report['title']}: ours vs the paper")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def per_class_bars(
    results: dict[str, dict[str, Any]], class_names: Sequence[str], title: str, path: Path
) -> Path | None:
    """Per-class IoU bars for each result (e.g. ``{"without CRF": ..., "with CRF": ...}``).

    The paper gives no per-class IoU, so there is nothing to set beside them."""
    if not results:
        return None
    plt = _pyplot()
    names = ["background", *class_names]
    n = len(names)
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * n + 2), 4))
    for k, (label, res) in enumerate(results.items()):
        ious = [100 * v if _finite(v) else 0.0 for v in res["iou"]]
        offset = (k - (len(results) - 1) / 2) * width
        ax.bar([i + offset for i in range(n)], ious, width, label=label)
    ax.set_xticks(range(n))
    ax.set_xticklabels(names, rotation=70, fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(title + " (the paper gives no per-class IoU)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# Writing


def new_report(title: str, dataset: str, config_hash: str) -> dict[str, Any]:
    """An empty report dict (the keys every writer may rely on)."""
    return {
        "title": title,
        "dataset": dataset,
        "paper": PAPER_SOURCE,
        "config_hash": config_hash,
        "warnings": [],
        "summary": [],
        "tables": [],
        "figures": [],
        "stages": {},
        "check": {},
        "environment": {},
        "config": {},
        "options": {},
    }


def summary_row(
    name: str,
    value: float | None,
    paper: float | None,
    paper_dataset: str | None,
    dataset: str,
    note: str = "",
) -> dict[str, Any]:
    """A headline row: one number beside the paper's, difference when comparable."""
    diff = None
    if _finite(value) and _finite(paper) and paper_dataset == dataset:
        assert value is not None and paper is not None
        diff = value - paper
    return {
        "name": name,
        "measured": value,
        "paper": paper,
        "paper_dataset": paper_dataset if paper is not None else None,
        "diff": diff,
        "note": note,
    }


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Run the hooks, then write ``report.json`` (strict JSON) and ``report.md``."""
    run_hooks(report, out_dir)
    json_path = out_dir / "report.json"
    md_path = out_dir / "report.md"
    atomic_write_text(json_path, json.dumps(json_safe(report), indent=1) + "\n")
    atomic_write_text(md_path, report_markdown(report))
    return json_path, md_path
