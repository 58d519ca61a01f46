"""What made an output folder: the effective configuration plus the command-line options.

Every command that writes into an output folder records, in ``OUT/run.json``, the resolved
config (as a plain dict) together with the options that shape its outputs (``--long-side``,
``--crf``, the checkpoint it read ...). Before resuming into an existing folder the command
compares the new record with the stored one and refuses when they differ, naming the keys, so a
``config.yaml`` beside an output always describes that output.

Pure helpers (:func:`make_record`, :func:`record_hash`, :func:`diff_records`) and one function
that touches the disk (:func:`prepare_output`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ssrseg.config import SSRConfig, atomic_write_text, config_to_dict, save_config

RECORD_NAME = "run.json"
RECORD_VERSION = 1
# Recorded but not compared: settings that change how a job runs, not what it writes.
NOT_COMPARED: tuple[str, ...] = (
    "config.data.num_workers",
    "config.data.allow_skipped",
    "config.train.output_dir",
    "config.train.tensorboard",
    "config.train.log_every",
    "options.max_steps",
    "options.device",
)
DEFAULT_HINT = (
    "Use another --out, rerun with the same settings to resume, or pass --overwrite to redo "
    "everything with the new settings."
)


STAMP_KEY = "ssrseg-job"  # PNG text chunk / npz entry naming the job that wrote a file


def job_stamp(record: dict[str, Any]) -> str:
    """The identity of a job: the hash of its record's compared keys (what shapes outputs)."""
    flat = {k: v for k, v in _flatten(record).items() if k not in NOT_COMPARED}
    return record_hash(flat)


def file_stamp(path: str | os.PathLike[str]) -> str | None:
    """The job stamp a PNG (text chunk) or ``.npz`` (entry) output carries; None when the file
    has none or cannot be read (so it is not taken as done)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path) as data:
                return str(data[STAMP_KEY]) if STAMP_KEY in data.files else None
        with Image.open(path) as img:
            value = img.info.get(STAMP_KEY)
            return value if isinstance(value, str) else None
    except (OSError, ValueError, KeyError, EOFError):
        return None


def written_by(path: str | os.PathLike[str], stamp: str | None) -> bool:
    """Is ``path`` an output that the job ``stamp`` wrote? "Already done" means this, never
    "a file of that name exists" (it may be a user's image or mask)."""
    return stamp is not None and Path(path).is_file() and file_stamp(path) == stamp


def output_stamp(out_dir: str | os.PathLike[str]) -> str | None:
    """The stamp of the job recorded in ``out_dir/run.json`` (None: no record)."""
    record = read_record(out_dir)
    return job_stamp(record) if record is not None else None


class RunMismatchError(RuntimeError):
    """An output folder was made with a different configuration than the one asked for now."""


def make_record(cfg: SSRConfig | None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-able description of what shapes a job's outputs.

    ``cfg`` is the *effective* config (after any adjustment the command made, e.g. turning
    ``cam.projected`` off when no checkpoint gives CMPA heads); ``options`` holds command-line
    values that are not config fields (paths as strings, numbers, booleans).
    """
    return {
        "version": RECORD_VERSION,
        "config": config_to_dict(cfg) if cfg is not None else {},
        "options": {k: _plain(v) for k, v in sorted((options or {}).items())},
    }


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def record_hash(record: dict[str, Any]) -> str:
    """Short, stable hash of a record (sorted JSON, sha256, first 12 hex digits)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def diff_records(
    old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = ()
) -> list[str]:
    """Lines ``key: old -> new`` for every leaf that differs (``config.`` / ``options.`` keys),
    leaving out the keys in ``ignore``."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(flat_old) | set(flat_new)):
        if key in ignore:
            continue
        a, b = flat_old.get(key, "<absent>"), flat_new.get(key, "<absent>")
        if a == "<absent>" and b is None:
            continue  # a field added since, at its default (None keeps the old behaviour)
        if a != b:
            lines.append(f"{key}: {a!r} -> {b!r}")
    return lines


def read_record(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The stored record of ``out_dir``, or None when the folder has none."""
    path = Path(out_dir) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunMismatchError(f"{path}: unreadable run record ({exc})") from None
    problem = record_problem(data)
    if problem:
        raise RunMismatchError(
            f"{path}: {problem}; the file was damaged or edited: restore it, or pass "
            "--overwrite to redo the folder"
        )
    return data


def record_problem(data: Any) -> str | None:
    """What is wrong with a parsed run record (None when nothing is)."""
    if not isinstance(data, dict):
        return "not a run record (expected a JSON object)"
    unknown = sorted(set(data) - {"version", "config", "options"})
    if unknown:
        return f"unknown field(s) {unknown}"
    version = data.get("version")
    if version != RECORD_VERSION:
        return f"version must be {RECORD_VERSION}, got {version!r}"
    for name in ("config", "options"):
        if not isinstance(data.get(name), dict):
            return f"field {name!r} must be an object, got {data.get(name)!r:.60}"
    return None


def check_output(
    out_dir: str | os.PathLike[str],
    cfg: SSRConfig | None,
    options: dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
    command: str = "this command",
    hint: str = DEFAULT_HINT,
) -> dict[str, Any]:
    """The read-only half of :func:`prepare_output`: build the record and compare it with the
    one stored in ``out_dir`` (raises :class:`RunMismatchError`); writes nothing."""
    out = Path(out_dir)
    record = make_record(cfg, options)
    old = read_record(out)
    if old is not None and not overwrite:
        changes = diff_records(old, record, NOT_COMPARED)
        if changes:
            shown = "\n  ".join(changes[:20])
            more = f"\n  ... and {len(changes) - 20} more" if len(changes) > 20 else ""
            raise RunMismatchError(
                f"{out} was made by {command} with a different configuration:\n  {shown}{more}\n"
                + hint
            )
    return record


def prepare_output(
    out_dir: str | os.PathLike[str],
    cfg: SSRConfig | None,
    options: dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
    command: str = "this command",
    hint: str = DEFAULT_HINT,
) -> dict[str, Any]:
    """Check ``out_dir`` against the new record, then write ``run.json`` and ``config.yaml``.

    A folder without a record (new, or made by an older ssrseg) is adopted. A folder whose
    record differs raises :class:`RunMismatchError` listing the differing keys and ``hint``
    (how to proceed), unless ``overwrite`` (the caller then redoes every output). Returns the
    new record.
    """
    out = Path(out_dir)
    record = check_output(out, cfg, options, overwrite=overwrite, command=command, hint=hint)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RECORD_NAME, json.dumps(record, indent=1, sort_keys=True) + "\n")
    if cfg is not None:
        save_config(cfg, out)
    return record
