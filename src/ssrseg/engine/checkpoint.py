"""Checkpoints: a folder holding only what training changes, written atomically.

Layout of ``<run>/ckpt_<step>/``:
- ``model.safetensors``: trainable weights and buffers (decoder, CMPA) only;
- ``optimizer.pt``: optimiser (and fp16 grad-scaler) state, read with ``weights_only=True``;
- ``state.json``: step, the resolved config, number of classes, rng states as lists.
``<run>/last`` is a one-line text file naming the newest complete checkpoint folder.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ssrseg.atomic import atomic_dir, atomic_write_text
from ssrseg.backbones.weights import content_digest, local_file
from ssrseg.config import SSRConfig, config_from_dict, config_to_dict
from ssrseg.pickles import refusal_message
from ssrseg.pseudo.labeler import build_ssr_model
from ssrseg.rectify.cmpa import CMPA

MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.pt"
STATE_FILE = "state.json"
LAST_FILE = "last"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated or inconsistent; the message names the file."""


@dataclass
class TrainState:
    """Everything in ``state.json``."""

    step: int
    config: dict[str, Any]
    num_classes: int
    rng: list[dict[str, Any]] = field(default_factory=list)  # one entry per rank
    extra: dict[str, Any] = field(default_factory=dict)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states as JSON-able lists."""
    py = random.getstate()
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: TrainState,
    keep_last: int | None = None,
) -> Path:
    """Write ``run_dir/ckpt_<step>/`` via a temporary folder and a rename, then point ``last``
    at it; delete older checkpoints beyond ``keep_last``. Returns the folder."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    final = run / f"ckpt_{step}"
    writing = final
    try:
        # a temporary folder renamed into place, with the permissions of a plain mkdir
        with atomic_dir(final) as tmp:
            writing = final / MODEL_FILE
            blob = save(
                {k: v.detach().contiguous().cpu() for k, v in weights.items()},
                metadata={"format": "ssrseg-trainable", "step": str(step)},
            )
            (tmp / MODEL_FILE).write_bytes(canonical_safetensors(blob))
            writing = final / OPTIM_FILE
            torch.save(optimizer_state, tmp / OPTIM_FILE)
            writing = final / STATE_FILE
            (tmp / STATE_FILE).write_text(json.dumps(state.__dict__))
            writing = final
    except (OSError, RuntimeError, SafetensorError) as exc:
        # a full disk shows as "unexpected pos ..." from torch.save: say which file and that
        # nothing was lost
        kept = run / LAST_FILE
        previous = kept.read_text().strip() if kept.is_file() else None
        state_of = (
            f"the last complete checkpoint, {run / previous}, is kept"
            if previous
            else "no earlier checkpoint exists"
        )
        raise CheckpointError(
            f"{writing}: cannot write checkpoint step {step} ({_one_line(exc)}; is the disk "
            f"full?); {state_of}"
        ) from None
    atomic_write_text(run / LAST_FILE, final.name + "\n")
    if keep_last is not None and keep_last > 0:
        ckpts = sorted(list_checkpoints(run), key=lambda p: int(p.name.split("_")[1]))
        for old_ckpt in ckpts[:-keep_last]:
            if old_ckpt != final:
                shutil.rmtree(old_ckpt)
    return final


def canonical_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted (safetensors writes them in
    hash-map order, so two saves of equal tensors differ in bytes); tensor data is untouched.

    Layout: 8-byte little-endian header length, the JSON header (space-padded to 8 bytes), data.
    """
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob[8 + length :]


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (torch's enforce messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders ``ckpt_<int>`` of a run."""
    out = []
    for p in run_dir.glob("ckpt_*"):
        suffix = p.name[len("ckpt_") :]
        if p.is_dir() and suffix.isdigit() and (p / STATE_FILE).is_file():
            out.append(p)
    return out


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint folder, or a run folder whose ``last`` names one."""
    p = Path(path)
    if (p / STATE_FILE).is_file():
        return p
    last = p / LAST_FILE
    if last.is_file():
        name = last.read_text(errors="replace").strip()
        suffix = name[len("ckpt_") :]
        if not (name.startswith("ckpt_") and suffix.isdigit()):
            # only a checkpoint folder of this run: the file could name any path
            raise CheckpointError(
                f"{last}: names {name[:60]!r}, not a ckpt_<step> folder of this run; write the "
                "newest ckpt_<step> folder's name into it"
            )
        target = p / name
        if not (target / STATE_FILE).is_file():
            raise CheckpointError(f"{last}: points to {target}, which is not a checkpoint")
        return target
    raise CheckpointError(
        f"{p}: not a checkpoint (no {STATE_FILE}) and not a run folder (no '{LAST_FILE}' file)"
    )


def read_state(ckpt: Path) -> TrainState:
    """``state.json`` with every field checked (type and range), so a damaged or hand-edited
    file is one line naming the field, never a traceback later in a resume."""
    path = ckpt / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated state file ({exc})") from None
    problem = state_problem(data)
    if problem:
        raise CheckpointError(
            f"{path}: {problem}; the file was damaged or edited: resume from another checkpoint "
            "of the run (or retrain)"
        )
    return TrainState(**data)


RNG_KEYS = ("python", "numpy", "torch")


def state_problem(data: Any) -> str | None:
    """What is wrong with a parsed ``state.json`` (None when nothing is)."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    fields = {"step", "config", "num_classes", "rng", "extra"}
    unknown = sorted(set(data) - fields)
    if unknown:
        return f"unknown field(s) {unknown}"
    missing = sorted({"step", "config", "num_classes"} - set(data))
    if missing:
        return f"missing field(s) {missing}"
    checks: list[tuple[str, bool, str]] = [
        ("step", _is_int(data["step"]) and data["step"] >= 0, "an integer >= 0"),
        ("config", isinstance(data["config"], dict), "an object (the resolved config)"),
        (
            "num_classes",
            _is_int(data["num_classes"]) and data["num_classes"] >= 2,
            "an integer >= 2",
        ),
        ("rng", isinstance(data.get("rng", []), list), "a list (one entry per rank)"),
        ("extra", isinstance(data.get("extra", {}), dict), "an object"),
    ]
    for name, ok, want in checks:
        if not ok:
            return f"field {name!r} must be {want}, got {data[name]!r:.60}"
    for rank, entry in enumerate(data.get("rng", [])):
        if not isinstance(entry, dict) or any(not isinstance(entry.get(k), list) for k in RNG_KEYS):
            return f"rng[{rank}] must hold the lists {list(RNG_KEYS)}"
    extra = data.get("extra", {})
    for rank, entry in (
        enumerate(extra.get("log", [])) if isinstance(extra.get("log"), list) else []
    ):
        sums = entry.get("sums") if isinstance(entry, dict) else None
        if not (
            isinstance(sums, dict)
            and all(isinstance(v, int | float) for v in sums.values())
            and _is_int(entry.get("count"))
            and entry["count"] >= 0
        ):
            return f"extra.log[{rank}] must be {{'sums': {{name: number}}, 'count': int >= 0}}"
    if "log" in extra and not isinstance(extra["log"], list):
        return "extra.log must be a list (one entry per rank)"
    backbones = extra.get("backbones", {})
    if not isinstance(backbones, dict) or any(
        not isinstance(v, dict)
        or not isinstance(v.get("spec"), str)
        or not (v.get("sha256") is None or isinstance(v.get("sha256"), str))
        for v in backbones.values()
    ):
        return "extra.backbones must map a backbone to {'spec': str, 'sha256': str | null}"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_weights(ckpt: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = ckpt / MODEL_FILE
    try:
        return load_file(str(path), device=str(device))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated weights ({exc})") from None


def read_optimizer(ckpt: Path) -> dict[str, Any]:
    path = ckpt / OPTIM_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            refusal_message(
                path,
                exc,
                "Optimizer states written by ssrseg hold only tensors and numbers, so this file "
                "was replaced or crafted: restore it from a trusted copy, or resume from "
                "another checkpoint of the run.",
            )
        ) from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated optimizer state ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(state).__name__}")
    return state


def read_config(ckpt: Path, state: TrainState | None = None) -> SSRConfig:
    """The resolved config stored in a checkpoint's ``state.json``."""
    state = state if state is not None else read_state(ckpt)
    try:
        return config_from_dict(state.config)
    except ValueError as exc:
        raise CheckpointError(f"{ckpt / STATE_FILE}: bad config ({exc})") from None


def checkpoint_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a run record stores about a checkpoint a job reads: its resolved folder and step
    (a run folder that trained on since points at another checkpoint, so it differs)."""
    ckpt = resolve_checkpoint(path)
    return {"path": str(ckpt.resolve()), "step": read_state(ckpt).step}


BACKBONES = ("clip", "dino")


def backbone_identity(cfg: SSRConfig) -> dict[str, dict[str, str | None]]:
    """What identifies each frozen backbone a run uses: its spec and the sha256 of its weight
    file (None where the file is not on this machine, e.g. a hub id not yet downloaded)."""
    out: dict[str, dict[str, str | None]] = {}
    for name in BACKBONES:
        spec = getattr(cfg.backbone, name)
        path = local_file(spec)
        out[name] = {"spec": spec, "sha256": content_digest(path) if path else None}
    return out


def _backbone_problem(name: str, saved_spec: str, saved_hash: str | None, spec: str) -> str | None:
    """Why the job's ``backbone.<name>=spec`` is not the backbone a checkpoint was trained on, or
    None when it is: the files' contents decide (the checkpoint's recorded hash, else the file
    its spec names here); names decide only where no file is at hand."""
    path = local_file(spec)
    digest = content_digest(path) if path else None
    if saved_hash is None:
        saved_path = local_file(saved_spec)
        saved_hash = content_digest(saved_path) if saved_path else None
    if digest is not None and saved_hash is not None:
        if digest == saved_hash:
            return None
        return (
            f"backbone.{name} differs: it was trained on {saved_spec!r} (sha256 "
            f"{saved_hash[:12]}) but this job's backbone.{name}={spec!r} is {path} (sha256 "
            f"{digest[:12]})"
        )
    if saved_spec == spec:
        return None
    return (
        f"backbone.{name} differs: it was trained on {saved_spec!r} but this job uses "
        f"backbone.{name}={spec!r}"
    )


def check_compatible(
    path: str | os.PathLike[str],
    cfg: SSRConfig | None = None,
    num_classes: int | None = None,
    *,
    need_cmpa: bool = False,
) -> Path:
    """Cheap checks (``state.json`` only, nothing is built) that a checkpoint fits a job.

    cfg: the job's config; its CLIP must be the one the checkpoint was trained on (the heads
    read that CLIP's features). num_classes: the job's classes, background included.
    need_cmpa: the job needs the checkpoint's CMPA heads. Raises :class:`CheckpointError`
    listing every mismatch; returns the checkpoint folder.
    """
    ckpt = resolve_checkpoint(path)
    state = read_state(ckpt)
    saved = read_config(ckpt, state)
    problems = []
    if cfg is not None:
        recorded = state.extra.get("backbones") or {}
        # the CLIP decides (the heads read its features); a swapped DINO only refines labels
        clip = recorded.get("clip") or {}
        problem = _backbone_problem(
            "clip", saved.backbone.clip, clip.get("sha256"), cfg.backbone.clip
        )
        if problem:
            problems.append(problem)
    if num_classes is not None and state.num_classes != num_classes:
        problems.append(
            f"it has {state.num_classes} classes (background included) but the dataset has "
            f"{num_classes}"
        )
    if need_cmpa and not saved.cmpa.enabled:
        problems.append("it has no CMPA heads (trained with cmpa.enabled=false)")
    if problems:
        raise CheckpointError(f"{ckpt}: checkpoint does not fit this job: " + "; ".join(problems))
    return ckpt


def load_cmpa_heads(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """The CMPA heads of a checkpoint alone (no backbones are loaded), eval mode."""
    ckpt = check_compatible(path, need_cmpa=True)
    state = read_state(ckpt)
    cfg = read_config(ckpt, state)
    heads = CMPA(cfg.cmpa, state.num_classes - 1)
    prefix = "cmpa."
    weights = {k[len(prefix) :]: v for k, v in read_weights(ckpt).items() if k.startswith(prefix)}
    try:
        heads.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt / MODEL_FILE}: CMPA heads do not fit ({exc})") from None
    return heads.to(device).eval()


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[Any, SSRConfig]:
    """Rebuild the :class:`~ssrseg.model.ssr.SSRModel` of a checkpoint (frozen backbones by
    name from its config, trainable weights from ``model.safetensors``); eval mode.

    path: a checkpoint folder or a run folder (its ``last`` checkpoint).
    """
    ckpt = resolve_checkpoint(path)
    state = read_state(ckpt)
    cfg = read_config(ckpt, state)
    model = build_ssr_model(cfg, state.num_classes, device)
    try:
        model.load_trainable_state_dict(read_weights(ckpt, device))
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{ckpt / MODEL_FILE}: does not fit the model ({exc})") from None
    model.eval()
    return model, cfg


def state_from(
    step: int, cfg: SSRConfig, num_classes: int, rng: list[dict[str, Any]]
) -> TrainState:
    return TrainState(step=step, config=config_to_dict(cfg), num_classes=num_classes, rng=rng)
