"""Checkpoint folder format, atomic `last` pointer, round trip and clear errors."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
from tests_model_fakes import tiny_config, tiny_ssr_model

from ssrseg.engine import checkpoint as ckpt_mod
from ssrseg.engine.checkpoint import (
    CheckpointError,
    load_model,
    read_optimizer,
    read_state,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    state_from,
)
from ssrseg.model.ssr import SSRModel


def _model(seed: int) -> SSRModel:
    return tiny_ssr_model(tiny_config(), seed)


def _save(run: Path, model: SSRModel, step: int, keep: int | None = None) -> Path:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    state = state_from(step, model.cfg, 4, [rng_state()])
    return save_checkpoint(run, step, model.trainable_state_dict(), opt.state_dict(), state, keep)


def test_round_trip_restores_identical_outputs(tmp_path: Path, monkeypatch) -> None:
    model = _model(1).eval()
    folder = _save(tmp_path, model, 7)
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.safetensors",
        "optimizer.pt",
        "state.json",
    ]
    assert (tmp_path / "last").read_text().strip() == "ckpt_7"
    state = read_state(folder)
    assert state.step == 7 and state.num_classes == 4
    assert state.config["cmpa"]["out_dim"] == 8
    # load_model rebuilds from the saved config; the frozen backbone comes from its builder
    monkeypatch.setattr(
        "ssrseg.engine.checkpoint.build_ssr_model", lambda cfg, n, device: _model(99)
    )
    loaded, cfg = load_model(tmp_path)
    assert cfg == model.cfg and not loaded.training
    images = torch.rand(2, 3, 32, 24)
    assert torch.equal(loaded.segment(images), model.segment(images))
    assert isinstance(read_optimizer(folder)["state"], dict)


def test_last_pointer_and_keep_last(tmp_path: Path) -> None:
    model = _model(1)
    for step in (1, 2, 3, 4):
        _save(tmp_path, model, step, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "ckpt_3",
        "ckpt_4",
        "last",
    ]
    assert resolve_checkpoint(tmp_path).name == "ckpt_4"
    _save(tmp_path, model, 4, keep=2)  # re-saving a step replaces it
    assert not any(p.name.endswith((".tmp", ".old")) for p in tmp_path.iterdir())


def test_bad_checkpoints_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        resolve_checkpoint(tmp_path)
    folder = _save(tmp_path, _model(1), 1)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        ckpt_mod.read_weights(folder)
    (folder / "state.json").write_text("{truncated")
    with pytest.raises(CheckpointError, match=r"state\.json"):
        read_state(folder)


def test_rng_state_round_trip_through_json() -> None:
    state = json.loads(json.dumps(rng_state()))
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
