"""What an output folder holds, learnt from the files its command writes.

- a ``reproduce`` / ``demo`` run (``report.json`` or ``seeds/stage.json`` / ``eval/stage.json``
  beside ``config.yaml``): the seed split's pseudo labels (``seeds/labels/<id>.png``) and the
  val split's predictions (``eval/pred/{no_crf,crf}/<id>.png``, the fully supervised bound's in
  ``fully_supervised/pred/``), the report's tables;
- a ``pseudo-labels`` folder (``run.json`` command ``pseudo-labels``: ``<id>.png``);
- a ``cams`` folder (command ``cams``: ``<id>.npz`` with ``cams`` K x H x W and ``classes``);
- a ``predict`` folder (command ``predict``: ``<name>.png``; the source images are not
  recorded, ``--images`` names them);
- an ``evaluate`` result (a metrics JSON whose ``record`` says ``evaluate``, or a folder holding
  one as ``metrics.json``; a ``--save-pred`` folder's ``run.json``).

Images, ground truth and tags come from the dataset in the folder's recorded configuration.
Anything else raises :class:`ViewInputError` (one line naming the folder).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ssrseg.atomic import read_json_object
from ssrseg.data import BadInputError, build_dataset
from ssrseg.data.base import IMAGE_EXTENSIONS
from ssrseg.data.classes import COCO_CLASSES, VOC_CLASSES, read_class_file
from ssrseg.viz import palette

# Layer names (the page shows them as they are).
IMAGE = "image"
GT = "ground truth"
PSEUDO = "pseudo label"
PRED = "prediction"
PRED_CRF = "prediction (CRF)"
FULLY = "fully supervised"
CAM_LABELS = "CAM labels"
ERRORS = "errors"
SUPERPIXELS = "superpixels"
# Label layers scored against the ground truth, first found is the image's score.
SCORED = (PRED, PRED_CRF, PSEUDO, CAM_LABELS, FULLY)


def cam_layer(kind: str) -> str:
    """Name of a CAM file layer (``ssrseg cams --kind``): ``CAM (refined)``; the page shows
    one ``CAM (refined): <class>`` layer per class in the file."""
    return f"CAM ({kind})"


def is_cam_file(path: Path) -> bool:
    """A layer file holding CAMs (``.npz``) rather than labels (a PNG)."""
    return path.suffix == ".npz"


class ViewInputError(ValueError):
    """The path is not an output folder ssrseg can show (the message says what it expected)."""


@dataclass(frozen=True)
class Item:
    """One image of the gallery: its files (any may be missing; the tile then says so)."""

    key: str  # unique in the site: "<split>/<id>"
    image_id: str
    split: str
    image: Path | None  # None: the source image is not known (predict without --images)
    layers: dict[str, Path]  # layer name -> source file (label PNG, or the CAM npz)
    tags: tuple[int, ...] = ()
    # the dataset reads the ground truth (COCO masks may hold category ids to map)
    dataset: Any = field(default=None, compare=False, repr=False)
    index: int = -1


@dataclass
class Source:
    """Everything the page shows about one output folder."""

    kind: str  # run | pseudo-labels | cams | predict | evaluate
    path: Path
    class_names: tuple[str, ...]  # foreground classes (label c + 1 is class_names[c])
    palette: np.ndarray  # 256 x 3 uint8
    items: list[Item]
    config: dict[str, Any] = field(default_factory=dict)  # the effective configuration
    cam_pseudo: dict[str, Any] | None = None  # pseudo.* of the CAM files' run (CAM labels)
    tables: list[dict[str, Any]] = field(default_factory=list)  # report tables
    recorded: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> metrics dict
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names) + 1


def discover(
    path: str | Path, images: str | Path | None = None, add: Sequence[str | Path] = ()
) -> Source:
    """The :class:`Source` of ``path`` (``images``: the source images of a predict folder),
    with the layers of the output folders ``add`` (:func:`merge`)."""
    source = _discover(path, images)
    for extra in add:
        merge(source, _discover(extra, images))
    return source


def merge(source: Source, extra: Source) -> None:
    """Add ``extra``'s layers to the images of ``source`` with the same id (e.g. the initial and
    the refined CAMs of a pseudo-label folder's split); a layer name both have gets the extra
    folder's name (``pseudo label [pl_crf]``). Images only ``extra`` has are left out."""
    by_id: dict[str, Item] = {}
    for item in extra.items:
        by_id.setdefault(item.image_id, item)
    matched = 0
    for index, item in enumerate(source.items):
        other = by_id.get(item.image_id)
        if other is None:
            continue
        matched += 1
        layers = dict(item.layers)
        for name, file in other.layers.items():
            if name == GT and GT in layers:
                continue
            layers[name if name not in layers else f"{name} [{extra.path.name}]"] = file
        source.items[index] = dataclasses.replace(item, layers=layers)
    if not matched:
        raise ViewInputError(f"{extra.path}: none of its images is in {source.path}")
    if source.cam_pseudo is None:
        source.cam_pseudo = extra.cam_pseudo
    source.notes.append(f"layers added from {extra.path} ({matched} images)")


def _discover(path: str | Path, images: str | Path | None) -> Source:
    p = Path(path)
    if not p.exists():
        raise ViewInputError(f"{p}: no such file or folder")
    if p.is_file():
        if p.suffix == ".json":
            data = _read_json(p)
            if _command(data.get("record")) == "evaluate":
                return _evaluate_source(p, data)
        raise ViewInputError(f"{p}: not an ssrseg output (expected an output folder)")
    if (p / "report.json").is_file() or any(
        (p / s / "stage.json").is_file() for s in ("seeds", "eval")
    ):
        return _run_source(p)
    metrics = p / "metrics.json"
    scores = _read_json(metrics) if metrics.is_file() else {}
    if _command(scores.get("record")) != "evaluate":
        scores = {}
    record = _read_json(p / "run.json") if (p / "run.json").is_file() else {}
    command = _command(record)
    if command in ("pseudo-labels", "cams", "predict"):
        # an `evaluate --pred` of this folder leaves its numbers in metrics.json: shown too
        if command == "predict":
            source = _predict_source(p, record, images)
        else:
            source = _labeller_source(p, record, command)
        source.recorded = _recorded(scores)
        return source
    if scores:
        return _evaluate_source(metrics, scores)
    if command == "evaluate":
        return _evaluate_source(p / "run.json", {"record": record}, pred_dir=p)
    raise ViewInputError(
        f"{p}: not an ssrseg output (no report.json, run.json or metrics.json written by "
        "reproduce, demo, pseudo-labels, cams, predict or evaluate)"
    )


# ----------------------------------------------------------------------------------------------
# helpers


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return read_json_object(path)
    except ValueError as exc:
        raise ViewInputError(f"{exc} (not an ssrseg record)") from None


def _command(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    options = record.get("options")
    return options.get("command") if isinstance(options, dict) else None


def resolve_root(root: str | None, folder: Path) -> Path | None:
    """The dataset root a record names: as written (absolute or relative to the working
    folder where the command ran), else the folder of that name inside the output folder (a
    demo run's ``data``), else None."""
    if not root:
        return None
    for candidate in (Path(root), folder / Path(root).name):
        if candidate.is_dir():
            return candidate
    return None


def _open_dataset(cfg: dict[str, Any], split: str, folder: Path, classes: Any = None) -> Any:
    """The recorded dataset split with its masks where present (None if it cannot be found)."""
    data = cfg.get("data") or {}
    root = resolve_root(data.get("root"), folder)
    if root is None or not data.get("dataset"):
        return None
    try:
        return build_dataset(
            data["dataset"],
            root,
            split,
            data.get("tag_file"),
            class_names=classes,
            require_labels=False,
        )
    except (BadInputError, OSError, ValueError):
        return None


def _class_names(cfg: dict[str, Any], folder: Path, dataset: Any) -> tuple[str, ...]:
    """Foreground class names: the dataset's, else the named dataset's standard list, else the
    root's ``classes.txt``; empty when none is known."""
    if dataset is not None:
        return tuple(dataset.class_names)
    data = cfg.get("data") or {}
    name = data.get("dataset")
    if name == "voc":
        return tuple(VOC_CLASSES)
    if name == "coco":
        return tuple(COCO_CLASSES)
    root = resolve_root(data.get("root"), folder)
    if root is not None and (root / "classes.txt").is_file():
        return tuple(read_class_file(str(root / "classes.txt")))
    return ()


def _palette(dataset: Any) -> np.ndarray:
    return palette(dataset.palette_name if dataset is not None else "voc")


def _dataset_items(
    dataset: Any,
    split: str,
    layers_of: dict[str, Path],
    suffix: str,
    only_with: str | None,
) -> list[Item]:
    """Items of ``dataset``'s ids, each with ``<folder>/<id><suffix>`` for every layer folder of
    ``layers_of`` that has it; ``only_with``: keep only ids whose file of that layer exists."""
    items = []
    for index, image_id in enumerate(dataset.ids):
        layers = {n: f / f"{image_id}{suffix}" for n, f in layers_of.items()}
        if only_with is not None and not layers[only_with].is_file():
            continue
        layers = {n: f for n, f in layers.items() if f.is_file() or n == only_with}
        mask = _safe(lambda i=image_id: dataset.mask_path(i))
        if mask is not None:
            layers[GT] = mask
        items.append(
            Item(
                key=f"{split}/{image_id}",
                image_id=image_id,
                split=split,
                image=_safe(lambda i=image_id: dataset.image_path(i)),
                layers=layers,
                tags=_tags(dataset, index),
                dataset=dataset,
                index=index,
            )
        )
    return items


def _safe(fn: Any) -> Any:
    """``fn()``, or None when the dataset cannot name the file (bad id, missing folder)."""
    try:
        return fn()
    except (BadInputError, OSError, ValueError):
        return None


def _tags(dataset: Any, index: int) -> tuple[int, ...]:
    try:
        return tuple(dataset.labels(index))
    except (BadInputError, OSError, ValueError, KeyError):
        return ()


def _folder_items(folder: Path, suffix: str, split: str, layer: str) -> list[Item]:
    """Items for the ``<id><suffix>`` files of a folder whose dataset cannot be opened."""
    files = sorted(f for f in folder.glob(f"*{suffix}") if f.is_file())
    return [Item(f"{split}/{f.stem}", f.stem, split, None, {layer: f}) for f in files]


# ----------------------------------------------------------------------------------------------
# the output kinds


# A run's prediction stages: (stage folder, SSR's predictions, the fully supervised decoder's
# predictions without CRF), relative to the run folder. `eval` scores the val split (the toy
# world's debiased one); the toy world's `eval_in_distribution` its in-distribution split.
RUN_PREDICTIONS = (
    ("eval", "eval/pred", "fully_supervised/pred/no_crf"),
    ("eval_in_distribution", "eval_in_distribution/ssr/pred",
     "eval_in_distribution/fully_supervised/pred/no_crf"),
)  # fmt: skip


def _run_source(folder: Path) -> Source:
    """A reproduce / demo run folder: the seed split's pseudo labels, each prediction stage's
    split with its predictions."""
    report = _read_json(folder / "report.json") if (folder / "report.json").is_file() else {}
    cfg = report.get("config") or _config_file(folder)
    notes = [] if report else ["no report.json yet: the run has not finished its report stage"]
    data = cfg.get("data") or {}
    items: list[Item] = []
    datasets = []
    seeds = _stage_result(folder / "seeds")
    if seeds is not None:
        split = seeds.get("split") or data.get("train_split", "train")
        found, dataset = _split_items(folder, cfg, split, {PSEUDO: folder / "seeds" / "labels"})
        items += found
        datasets.append(dataset)
    for stage, ssr, fully in RUN_PREDICTIONS:
        result = _stage_result(folder / stage)
        if result is None:
            continue
        split = result.get("split") or data.get("val_split", "val")
        layers = {
            PRED: folder / ssr / "no_crf",
            PRED_CRF: folder / ssr / "crf",
            FULLY: folder / fully,
        }
        found, dataset = _split_items(folder, cfg, split, layers)
        items += found
        datasets.append(dataset)
    if not items and not report:
        raise ViewInputError(f"{folder}: a run folder without pseudo labels or predictions yet")
    dataset = next((d for d in datasets if d is not None), None)
    tables = list(report.get("tables") or [])
    return _source("run", folder, cfg, dataset, items, tables=tables, notes=notes)


def _split_items(
    folder: Path, cfg: dict[str, Any], split: str, layers: dict[str, Path]
) -> tuple[list[Item], Any]:
    """(items, dataset) of one split of a run: the ids with a file in the first of ``layers``'
    folders that exists, each with its files in all of them."""
    present = {name: f for name, f in layers.items() if f.is_dir()}
    if not present:
        return [], None
    first = next(iter(present))
    dataset = _open_dataset(cfg, split, folder)
    if dataset is None:
        return _folder_items(present[first], ".png", split, first), None
    return _dataset_items(dataset, split, present, ".png", first), dataset


def _recorded(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The metrics an ``evaluate`` JSON holds: ``result`` (``--pred``), ``without CRF`` /
    ``with CRF`` (``--checkpoint``)."""
    found = (("result", data), ("without CRF", data.get("no_crf")), ("with CRF", data.get("crf")))
    return {name: value for name, value in found if isinstance(value, dict) and "iou" in value}


def _source(
    kind: str, folder: Path, cfg: dict[str, Any], dataset: Any, items: list[Item], **rest: Any
) -> Source:
    """A :class:`Source` with the class names and palette of ``dataset`` (None: of ``cfg``)."""
    return Source(
        kind=kind,
        path=folder,
        class_names=_class_names(cfg, folder, dataset),
        palette=_palette(dataset),  # every dataset's palette is the VOC colour map
        items=items,
        config=cfg,
        **rest,
    )


def _stage_result(stage: Path) -> dict[str, Any] | None:
    path = stage / "stage.json"
    if not path.is_file():
        return None
    result = _read_json(path).get("result")
    return result if isinstance(result, dict) else {}


def _config_file(folder: Path) -> dict[str, Any]:
    """The folder's ``config.yaml`` as a plain dict (empty when absent or unreadable)."""
    path = folder / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _labeller_source(folder: Path, record: dict[str, Any], command: str) -> Source:
    """A ``pseudo-labels`` or ``cams`` folder."""
    cfg = record.get("config") or {}
    options = record.get("options") or {}
    split = options.get("split") or "train"
    dataset = _open_dataset(cfg, split, folder, options.get("classes"))
    if command == "pseudo-labels":
        suffix, layer = ".png", PSEUDO
    else:
        suffix, layer = ".npz", cam_layer(str(options.get("kind") or "refined"))
    if dataset is None:
        items = _folder_items(folder, suffix, split, layer)
        notes = [f"the dataset of {folder / 'run.json'} was not found: no images or ground truth"]
    else:
        items, notes = _dataset_items(dataset, split, {layer: folder}, suffix, layer), []
    return _source(
        command,
        folder,
        cfg,
        dataset,
        items,
        cam_pseudo=cfg.get("pseudo", {}) if command == "cams" else None,
        notes=notes,
    )


def image_files(folder: Path) -> dict[str, Path]:
    """``{name: file}`` of the images under ``folder``, named as ``ssrseg predict`` names its
    outputs (path below the folder without the extension)."""
    exts = {e.lower() for e in IMAGE_EXTENSIONS}
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in found}


def _predict_source(folder: Path, record: dict[str, Any], images: str | Path | None) -> Source:
    """A ``predict`` folder; its source images only with ``images`` (they are not recorded)."""
    cfg = record.get("config") or {}
    skip = {"overlays", "panels", "view"}
    masks = {
        p.relative_to(folder).with_suffix("").as_posix(): p
        for p in sorted(folder.rglob("*.png"))
        if p.is_file() and p.relative_to(folder).parts[0] not in skip
    }
    sources = image_files(Path(images)) if images is not None else {}
    notes = [] if images else ["source images not recorded by predict: pass --images DIR"]
    items = [
        Item(f"predict/{name}", name, "predict", sources.get(name), {PRED: path})
        for name, path in masks.items()
    ]
    return _source("predict", folder, cfg, None, items, notes=notes)


def _evaluate_source(path: Path, data: dict[str, Any], pred_dir: Path | None = None) -> Source:
    """An ``evaluate`` result: its dataset split with the scored predictions beside it."""
    record = data["record"]
    options = record.get("options") or {}
    cfg = dict(record.get("config") or {})
    data_cfg = {**(cfg.get("data") or {}), "dataset": options.get("dataset")}
    data_cfg["root"] = options.get("root")
    data_cfg["tag_file"] = options.get("tag_file")
    cfg["data"] = data_cfg
    split = options.get("split") or "val"
    folder = path.parent
    dataset = _open_dataset(cfg, split, folder, options.get("classes"))
    pred = pred_dir or (Path(options["pred"]) if options.get("pred") else None)
    recorded = _recorded(data)
    items: list[Item] = []
    notes = []
    if pred is None or not pred.is_dir():
        notes.append("the scored predictions were not saved: metrics only")
    elif dataset is None:
        items = _folder_items(pred, ".png", split, PRED)
        notes.append(f"dataset {options.get('dataset')} at {options.get('root')} not found")
    else:
        items = _dataset_items(dataset, split, {PRED: pred}, ".png", None)
    return _source("evaluate", folder, cfg, dataset, items, recorded=recorded, notes=notes)
