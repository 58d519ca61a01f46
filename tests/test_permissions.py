"""Issue 12 defect 8: atomically written outputs get the permissions a plain write gives
(0644 files / 0755 folders under umask 022), not mkstemp's 0600 / mkdtemp's 0700."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ssrseg.atomic import atomic_dir, atomic_path, atomic_write_text


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_helpers_follow_the_umask(tmp_path: Path, umask022: None) -> None:
    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"y")
        assert mode(tmp) == 0o600  # private while it is being written
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "inner.bin").write_bytes(b"z")
        os.chmod(tmp / "inner.bin", 0o600)  # as safetensors creates its files
    assert mode(tmp_path / "a.txt") == 0o644 and mode(tmp_path / "b.bin") == 0o644
    assert mode(tmp_path / "folder") == 0o755 and mode(tmp_path / "folder" / "inner.bin") == 0o644
    os.umask(0o077)
    atomic_write_text(tmp_path / "private.txt", "x")
    assert mode(tmp_path / "private.txt") == 0o600


def test_outputs_of_every_writer(tmp_path: Path, umask022: None) -> None:
    from ssrseg.backbones.native import save_native
    from ssrseg.backbones.vit import VisionTransformer, ViTConfig
    from ssrseg.commands.evaluate import write_result_json
    from ssrseg.commands.predict import save_rgb
    from ssrseg.commands.pseudo_labels import atomic_save_npz
    from ssrseg.config import SSRConfig, save_config
    from ssrseg.engine.checkpoint import rng_state, save_checkpoint, state_from
    from ssrseg.viz import save_label_png

    save_config(SSRConfig(), tmp_path)
    write_result_json(tmp_path / "metrics.json", {"miou": 0.5})
    save_label_png(tmp_path / "label.png", np.zeros((4, 4), np.uint8))
    save_rgb(tmp_path / "overlay.jpg", np.zeros((4, 4, 3), np.uint8))
    atomic_save_npz(tmp_path / "cams.npz", cams=np.zeros((1, 2, 2), np.float16))
    vit = ViTConfig(image_size=16, patch_size=8, width=8, layers=1, heads=2, output_dim=None)
    save_native(tmp_path / "dino.safetensors", VisionTransformer(vit), "dino", vit)
    state = state_from(1, SSRConfig(), 3, [rng_state()])
    ckpt = save_checkpoint(tmp_path / "run", 1, {"w": torch.zeros(2)}, {"a": 1}, state)
    files = ["config.yaml", "metrics.json", "label.png", "overlay.jpg", "cams.npz"]
    files += ["dino.safetensors", "run/last"]
    files += [f"run/ckpt_1/{n}" for n in ("model.safetensors", "optimizer.pt", "state.json")]
    assert {f: oct(mode(tmp_path / f)) for f in files} == {f: "0o644" for f in files}
    assert mode(ckpt) == 0o755
