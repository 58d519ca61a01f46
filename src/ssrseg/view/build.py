"""The incremental, resumable build of a site.

``SITE/manifest.json`` keeps, per image, a signature of its sources (path, size and
modification time of the image and of each layer file, its tags, the render settings) and the
entry :func:`~ssrseg.view.render.render_item` returned. A build renders only the images whose
signature changed or whose files are gone, reuses the others, and saves the manifest every
:data:`SAVE_EVERY` rendered images (every file is written atomically), so a killed build
resumes where it stopped. The page files (``index.html``, ``data.js``) are written last.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssrseg.atomic import atomic_write_text
from ssrseg.config import ConfigError, SGCConfig, config_from_dict
from ssrseg.metrics import json_safe, scores_from_hist
from ssrseg.rectify.labels import stored_cam_labels
from ssrseg.rectify.sgc import slic_superpixels
from ssrseg.view.discover import SCORED, Item, Source, is_cam_file
from ssrseg.view.layers import dense_hist
from ssrseg.view.render import CamLabeller, RenderSettings, Segmenter, render_item
from ssrseg.view.site import write_site

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SAVE_EVERY = 500


@dataclass(frozen=True)
class BuildResult:
    """What a build did."""

    site: Path  # the site folder
    rendered: int  # images whose files were written now
    reused: int  # images taken from the manifest
    placeholders: int  # images shown as a placeholder tile
    seconds: float

    @property
    def index(self) -> Path:
        return self.site / "index.html"


def _stat(path: Path | None) -> list[Any]:
    if path is None:
        return [None]
    try:
        st = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path), st.st_size, st.st_mtime_ns]


def signature(item: Item, settings: dict[str, Any]) -> str:
    """Hash of what an item's files are made from: its sources' paths, sizes and modification
    times, its tags and the build settings."""
    parts = [
        settings,
        _stat(item.image),
        sorted([name, *_stat(p)] for name, p in item.layers.items()),
        list(item.tags),
    ]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def load_manifest(site: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """``{key: {"sig", "entry"}}`` of an earlier build with the same settings (else empty)."""
    path = site / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged manifest only costs a rebuild
    if data.get("version") != MANIFEST_VERSION or data.get("settings") != settings:
        return {}
    items = data.get("items")
    return items if isinstance(items, dict) else {}


def save_manifest(site: Path, settings: dict[str, Any], items: dict[str, Any]) -> None:
    text = json.dumps(
        {"version": MANIFEST_VERSION, "settings": settings, "items": json_safe(items)},
        separators=(",", ":"),
    )
    atomic_write_text(site / MANIFEST, text)


def _files_present(site: Path, entry: dict[str, Any]) -> bool:
    """Are the files of a finished entry still there (its image and first thumbnail)?"""
    if entry.get("error"):
        return True
    folder = site / entry["dir"]
    return (folder / "image.jpg").is_file() and (folder / "image.t.jpg").is_file()


def aggregate(entries: Iterable[dict[str, Any]], num_classes: int) -> dict[str, Any]:
    """Per scored layer and split, the metrics of its images together (one confusion matrix
    summed from the images' cells; splits are never mixed): ``{"<layer> (<split>)":
    scores_from_hist dict + hist + images}``, the layers in :data:`SCORED` order."""
    hists: dict[tuple[str, str], np.ndarray] = {}
    counts: dict[tuple[str, str], int] = {}
    for entry in entries:
        for name, cells in (entry.get("hists") or {}).items():
            key = (name, entry["split"])
            hist = hists.setdefault(key, np.zeros((num_classes, num_classes), np.int64))
            hist += dense_hist(cells, num_classes)
            counts[key] = counts.get(key, 0) + 1
    rank = {name: i for i, name in enumerate(SCORED)}
    out = {}
    for name, split in sorted(hists, key=lambda k: (rank.get(k[0], len(rank)), k[0], k[1])):
        scores = scores_from_hist(hists[name, split])
        entry = {**scores, "hist": hists[name, split].tolist(), "images": counts[name, split]}
        out[f"{name} ({split})"] = entry
    return out


def cam_labeller(source: Source) -> CamLabeller | None:
    """The labels ``ssrseg cams --eval`` scores (:func:`~ssrseg.rectify.labels.
    stored_cam_labels`), with the pseudo-label settings of the CAM files' run."""
    if source.cam_pseudo is None:
        return None
    try:
        pseudo = config_from_dict({"pseudo": source.cam_pseudo}).pseudo
    except (ConfigError, TypeError, ValueError):
        return None

    def label(maps: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
        return stored_cam_labels(maps, classes, pseudo)

    return label


def slic_settings(source: Source) -> tuple[int, float]:
    """(n_segments, compactness) of the folder's ``sgc`` section; a folder without one (an
    ``evaluate`` result) gets the defaults of :class:`~ssrseg.config.SGCConfig`."""
    default = SGCConfig()
    sgc = source.config.get("sgc")
    sgc = sgc if isinstance(sgc, dict) else {}
    n = int(sgc.get("n_segments", default.n_segments))
    return n, float(sgc.get("compactness", default.compactness))


def superpixel_segmenter(settings: tuple[int, float]) -> Segmenter:
    """SLIC as the SGC mask runs it, with ``settings`` from :func:`slic_settings`."""
    n, compactness = settings

    def segment(image: np.ndarray) -> np.ndarray:
        return slic_superpixels(image, n, compactness).numpy()

    return segment


def build_site(
    source: Source,
    site: Path,
    settings: RenderSettings | None = None,
    superpixels: bool = True,
    progress: Callable[[Iterable[Item]], Iterable[Item]] | None = None,
) -> BuildResult:
    """Render what changed, then write the page (see the module docstring); ``settings``
    None: the default sizes."""
    settings = settings or RenderSettings()
    t0 = time.perf_counter()
    slic = slic_settings(source) if superpixels else None
    segmenter = superpixel_segmenter(slic) if slic else None
    has_cams = any(is_cam_file(f) for i in source.items for f in i.layers.values())
    labeller = cam_labeller(source) if has_cams else None
    build_settings = {
        **settings.as_dict(),
        "classes": list(source.class_names),
        "superpixels": list(slic) if slic else None,
        "cam_labels": source.cam_pseudo if labeller else None,
    }
    site.mkdir(parents=True, exist_ok=True)
    old = load_manifest(site, build_settings)
    done: dict[str, Any] = {}
    rendered = reused = 0
    items: Iterable[Item] = source.items if progress is None else progress(source.items)
    for item in items:
        sig = signature(item, build_settings)
        prior = old.get(item.key)
        if prior and prior.get("sig") == sig and _files_present(site, prior["entry"]):
            done[item.key] = prior
            reused += 1
            continue
        entry = render_item(item, source, site, settings, labeller, segmenter)
        done[item.key] = {"sig": sig, "entry": entry}
        rendered += 1
        if rendered % SAVE_EVERY == 0:  # a killed build resumes from here
            save_manifest(site, build_settings, {**old, **done})
    save_manifest(site, build_settings, done)
    entries = [v["entry"] for v in done.values()]
    write_site(site, source, entries, aggregate(entries, source.num_classes))
    placeholders = sum(1 for e in entries if e.get("error"))
    return BuildResult(site, rendered, reused, placeholders, time.perf_counter() - t0)
