"""Image-level tags: read tag files, derive tags from annotations (never from masks), write them.

Tag files map ``image_id -> class names``:

- JSON: ``{"2007_000032": ["aeroplane", "person"], ...}`` (a ``;``-separated string also works);
- CSV: one row per image, ``image_id,name[,name...]`` (a cell may hold several names separated by
  ``;`` or ``|``); an optional header row starting with ``image_id`` is skipped;
- ``.npy``: the community's ``cls_labels_onehot.npy`` (a pickled dict ``{id: one-hot}``). It is
  parsed with a restricted unpickler that only accepts numpy arrays, so a crafted file cannot
  run code; the JSON/CSV formats are still the recommended, plain-text path.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssrseg.config import atomic_write_text
from ssrseg.data.classes import COCO_CATEGORY_TO_INDEX, COCO_CLASSES
from ssrseg.errors import BadInputError

Tags = dict[str, list[str]]


def read_tag_file(path: str | os.PathLike[str], class_names: Sequence[str] | None = None) -> Tags:
    """Read a tag file (JSON, CSV or one-hot ``.npy``) into ``{image_id: [class names]}``.

    ``class_names`` (foreground, in index order) is needed only for one-hot ``.npy`` files.
    Names are not validated here: an unknown name makes only its image bad input (see
    :func:`ssrseg.data.base.resolve_labels`), not the whole file.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "tag file not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if class_names is None:
            raise BadInputError(path, "a one-hot .npy tag file needs the dataset's class names")
        return _read_onehot_npy(path, class_names)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(path, f"cannot read tag file ({exc})") from None
    if suffix == ".json":
        tags = _parse_json_tags(text, path)
    elif suffix in (".csv", ".txt", ".tsv"):
        tags = _parse_csv_tags(text, path)
    else:
        raise BadInputError(path, f"unknown tag file type {suffix!r} (use .json, .csv or .npy)")
    return _check_not_empty(tags, path)


TAG_FORMATS = (
    'JSON {"image_id": ["class", ...]} or CSV lines "image_id,class;class" '
    "(`ssrseg tags` writes either)"
)


def _check_not_empty(tags: Tags, path: Path) -> Tags:
    """A file read into no tags at all would skip (or mislabel) every image: refuse it."""
    if not tags:
        raise BadInputError(path, f"holds no tags; a tag file is {TAG_FORMATS}")
    if not any(tags.values()):
        raise BadInputError(
            path,
            f"no entry of its {len(tags)} names a class (first: {next(iter(tags))!r}); a tag "
            f"file is {TAG_FORMATS}",
        )
    return tags


def _split_names(cell: str) -> list[str]:
    parts = cell.replace("|", ";").split(";")
    return [p.strip() for p in parts if p.strip()]


def _parse_json_tags(text: str, path: Path) -> Tags:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadInputError(path, "tag JSON must be an object {image_id: [class names]}")
    tags: Tags = {}
    for key, value in data.items():
        if isinstance(value, str):
            tags[str(key)] = _split_names(value)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            tags[str(key)] = [v.strip() for v in value]
        else:
            raise BadInputError(
                path, f"entry {key!r}: expected a list of class names, got {value!r}"
            )
    return tags


def _parse_csv_tags(text: str, path: Path) -> Tags:
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    tags: Tags = {}
    for row_no, row in enumerate(csv.reader(io.StringIO(text), dialect=dialect), start=1):
        cells = [c.strip() for c in row]
        if not cells or not cells[0] or cells[0].startswith("#"):
            continue
        if row_no == 1 and cells[0].lower() in ("image_id", "id", "image"):
            continue
        names: list[str] = []
        for cell in cells[1:]:
            names += _split_names(cell)
        if cells[0] in tags:
            raise BadInputError(path, f"line {row_no}: image id {cells[0]!r} listed twice")
        tags[cells[0]] = names
    return tags


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for ``np.save(dict)`` files: allows only numpy's array reconstruction."""

    ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("collections", "OrderedDict"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_onehot_npy(path: Path, class_names: Sequence[str]) -> Tags:
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                _, _, dtype = np.lib.format.read_array_header_2_0(handle)
            if dtype.hasobject:
                obj = _NumpyOnlyUnpickler(handle).load()
            else:
                raise BadInputError(path, "expected a pickled dict {image_id: one-hot}")
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise BadInputError(path, f"cannot read one-hot tag file ({exc})") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise BadInputError(path, f"expected a dict {{image_id: one-hot}}, got {type(obj)}")
    tags: Tags = {}
    for key, onehot in obj.items():
        vec = np.asarray(onehot).reshape(-1)
        if vec.shape[0] != len(class_names):
            raise BadInputError(
                path,
                f"entry {key!r} has {vec.shape[0]} values, the dataset has "
                f"{len(class_names)} classes",
            )
        tags[str(key)] = [class_names[int(i)] for i in np.flatnonzero(vec > 0.5)]
    return tags


def write_tag_file(path: str | os.PathLike[str], tags: Mapping[str, Sequence[str]]) -> None:
    """Write tags as JSON (``.json``) or CSV (``.csv``, names joined with ``;``), atomically."""
    path = Path(path)
    ordered = {k: list(tags[k]) for k in sorted(tags)}
    if path.suffix.lower() == ".csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image_id", "classes"])
        for key, names in ordered.items():
            writer.writerow([key, ";".join(names)])
        atomic_write_text(path, buf.getvalue())
    else:
        atomic_write_text(path, json.dumps(ordered, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------
# Tags from annotations


def voc_xml_tags(path: str | os.PathLike[str], include_difficult: bool = True) -> list[str]:
    """Class names of the ``<object>`` entries of a VOC XML annotation (sorted, unique)."""
    if not os.path.isfile(path):
        raise BadInputError(path, "annotation XML not found")
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as exc:
        raise BadInputError(path, f"cannot parse annotation XML ({exc})") from None
    names: set[str] = set()
    for obj in tree.getroot().iter("object"):
        name = obj.findtext("name")
        if name is None or not name.strip():
            continue
        if not include_difficult and (obj.findtext("difficult") or "0").strip() == "1":
            continue
        names.add(name.strip())
    return sorted(names)


def coco_instances_tags(path: str | os.PathLike[str]) -> Tags:
    """``{file stem: [class names]}`` from a COCO instances JSON (images without any
    annotation get an empty list). Category ids map to :data:`COCO_CLASSES` by id order."""
    if not os.path.isfile(path):
        raise BadInputError(path, "COCO instances JSON not found")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        images = {int(im["id"]): Path(str(im["file_name"])).stem for im in data["images"]}
        annotations = data["annotations"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BadInputError(path, f"not a COCO instances file ({exc})") from None
    found: dict[int, set[int]] = {image_id: set() for image_id in images}
    for ann in annotations:
        cid = int(ann["category_id"])
        if cid not in COCO_CATEGORY_TO_INDEX:
            raise BadInputError(path, f"unknown COCO category id {cid}")
        found.setdefault(int(ann["image_id"]), set()).add(COCO_CATEGORY_TO_INDEX[cid])
    return {
        images[i]: [COCO_CLASSES[c] for c in sorted(classes)]
        for i, classes in found.items()
        if i in images
    }
