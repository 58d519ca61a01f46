"""The page: ``index.html``, ``style.css`` and ``app.js`` (copied from ``view/static``) and
``data.js``, which sets ``window.SSRSEG_VIEW`` to everything the page shows. Data travels as a
script, not as JSON fetched at run time, because browsers refuse ``fetch()`` of ``file://``
URLs while they run ``<script src>`` from them: the page opens offline from the disk."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ssrseg.atomic import atomic_write_text
from ssrseg.metrics import json_safe
from ssrseg.view.discover import ERRORS, GT, IMAGE, SCORED, SUPERPIXELS, Source

STATIC = ("index.html", "style.css", "app.js")
DATA = "data.js"
# Fixed layer order on the page; the others (CAM layers "CAM (refined): <class>", layers of
# added folders) follow in first-seen order.
ORDER = (IMAGE, GT, *SCORED, ERRORS, SUPERPIXELS)
METRIC_KEYS = (
    "iou",
    "class_precision",
    "class_recall",
    "miou",
    "precision",
    "recall",
    "pixel_acc",
    "hist",
    "images",
)


def layer_order(entries: list[dict[str, Any]]) -> list[str]:
    """Every layer any image has: the fixed ones first, then the others in first-seen order."""
    seen: dict[str, None] = {}
    for entry in entries:
        for name in entry.get("layers", ()):
            seen.setdefault(name, None)
    fixed = [n for n in ORDER if n in seen]
    return fixed + [n for n in seen if n not in ORDER]


def compact_entry(entry: dict[str, Any], layers: list[str]) -> dict[str, Any]:
    """An entry as the page reads it (short keys: 10,000 of them make the data file)."""
    out: dict[str, Any] = {"k": entry["key"], "id": entry["id"], "s": entry["split"]}
    out["c"] = entry.get("classes", [])
    if entry.get("error"):
        out["e"] = entry["error"]
        return out
    out.update(
        {
            "d": entry["dir"],
            "w": entry["size"][0],
            "h": entry["size"][1],
            "L": [layers.index(n) for n in entry["layers"]],
        }
    )
    if entry.get("scored"):
        out["m"] = entry["miou"]
        out["ml"] = entry["scored"]
    return out


def _metrics(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in METRIC_KEYS if k in result}


def page_data(
    source: Source, entries: list[dict[str, Any]], computed: dict[str, Any]
) -> dict[str, Any]:
    """The ``window.SSRSEG_VIEW`` object."""
    layers = layer_order(entries)
    names = ["background", *source.class_names]
    colours = [source.palette[i].tolist() for i in range(len(names))]
    return json_safe(
        {
            "title": f"{source.kind}: {source.path.resolve().name}",
            "kind": source.kind,
            "path": str(source.path.resolve()),
            "classes": names,
            "palette": colours,
            "layers": layers,
            "splits": sorted({e["split"] for e in entries}),
            "notes": source.notes,
            "tables": source.tables,
            "computed": {k: _metrics(v) for k, v in computed.items()},
            "recorded": {k: _metrics(v) for k, v in source.recorded.items()},
            "config": yaml.safe_dump(source.config, sort_keys=False) if source.config else "",
            "items": [compact_entry(e, layers) for e in entries],
        }
    )


def write_site(
    site: Path, source: Source, entries: list[dict[str, Any]], computed: dict[str, Any]
) -> Path:
    """Write the page files into ``site``; returns ``site/index.html``."""
    static = resources.files("ssrseg.view") / "static"
    data = page_data(source, entries, computed)
    text = "window.SSRSEG_VIEW = " + json.dumps(data, separators=(",", ":")) + ";\n"
    atomic_write_text(site / DATA, text)
    for name in STATIC:  # index.html last: its presence means the site is whole
        if name != "index.html":
            atomic_write_text(site / name, (static / name).read_text())
    atomic_write_text(site / "index.html", (static / "index.html").read_text())
    return site / "index.html"
