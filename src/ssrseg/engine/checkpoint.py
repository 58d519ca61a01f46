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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ssrseg.atomic import atomic_dir, atomic_write_text
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
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in weights.items()},
                str(tmp / MODEL_FILE),
                metadata={"format": "ssrseg-trainable", "step": str(step)},
            )
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
        target = p / last.read_text().strip()
        if not (target / STATE_FILE).is_file():
            raise CheckpointError(f"{last}: points to {target}, which is not a checkpoint")
        return target
    raise CheckpointError(
        f"{p}: not a checkpoint (no {STATE_FILE}) and not a run folder (no '{LAST_FILE}' file)"
    )


def read_state(ckpt: Path) -> TrainState:
    path = ckpt / STATE_FILE
    try:
        data = json.loads(path.read_text())
        return TrainState(**data)
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated state file ({exc})") from None


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


def _same_backbone(a: str, b: str) -> bool:
    """Registry names compare as text; two paths to one file are the same backbone."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


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
    if cfg is not None and not _same_backbone(saved.backbone.clip, cfg.backbone.clip):
        problems.append(
            f"it was trained on CLIP {saved.backbone.clip!r} but this job uses "
            f"backbone.clip={cfg.backbone.clip!r}"
        )
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
