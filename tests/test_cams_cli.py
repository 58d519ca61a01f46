"""``ssrseg cams`` and ``ssrseg pseudo-labels`` on a tiny toy-layout dataset with random-weight
backbones saved in the native format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cli_fakes import SIZES, with_broken_image, write_cli_world
from ssrseg.cli import main
from ssrseg.commands.cams import read_cams
from ssrseg.data.resize import work_size


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_cli_world(tmp_path_factory.mktemp("cli"))


@pytest.mark.slow
def test_pseudo_labels_writes_resumes_and_evaluates(
    setup: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pl"
    args = ["pseudo-labels", "--split", "train", "--out", str(out), "--no-progress"]
    assert main([*args, "--eval", "--overlays", "1", *setup]) == 0
    table = capsys.readouterr().out
    assert "mIoU" in table and "square" in table
    for name, (h, w) in SIZES.items():
        labels = np.asarray(Image.open(out / f"{name}.png"))
        assert labels.shape == (h, w)
    assert set(np.unique(np.asarray(Image.open(out / "img0.png")))) <= {0, 1}
    assert set(np.unique(np.asarray(Image.open(out / "img1.png")))) <= {0, 2}
    assert (out / "overlays" / "img0.png").is_file()
    assert not (out / "overlays" / "img1.png").exists()
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["par"]["iterations"] == 2
    # Resumable: finished images are not recomputed (their files are left as they are).
    stamp = (out / "img1.png").stat().st_mtime_ns
    (out / "img2.png").unlink()
    assert main([*args, "--eval", *setup]) == 0
    assert (out / "img1.png").stat().st_mtime_ns == stamp
    assert (out / "img2.png").is_file()
    printed = capsys.readouterr().out
    assert printed.count("mIoU") == 1
    assert "2 of 3 images already done; wrote 1" in printed
    assert main([*args, *setup]) == 0  # issue 12 defect 10: say so when nothing is left
    assert f"3 of 3 images already done in {out}: nothing left to do" in capsys.readouterr().out
    assert not list(out.glob(".*tmp"))  # no temporary files left behind


@pytest.mark.slow
def test_cams_writes_float16_with_class_ids(setup: list[str], tmp_path: Path) -> None:
    out = tmp_path / "cams"
    args = ["cams", "--split", "train", "--out", str(out), "--no-progress", "--limit", "3"]
    assert main([*args, "--eval", *setup]) == 0
    for i, (name, (h, w)) in enumerate(SIZES.items()):
        with np.load(out / f"{name}.npz") as data:
            assert data["cams"].dtype == np.float16
            assert data["cams"].shape == ((1 if i < 2 else 2), h, w)
        cams, classes = read_cams(out / f"{name}.npz")
        assert classes == ((i % 2,) if i < 2 else (0, 1))
        assert cams.min() >= 0 and cams.max() <= 1
    initial = tmp_path / "initial"
    assert main(["cams", "--split", "train", "--out", str(initial), "--kind", "initial",
                 "--no-progress", *setup]) == 0  # fmt: skip
    a, _ = read_cams(out / "img2.npz")
    b, _ = read_cams(initial / "img2.npz")
    assert a.shape == b.shape and not np.array_equal(a, b)


@pytest.mark.slow
def test_bad_image_is_skipped_and_reported(
    setup: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = with_broken_image(setup, tmp_path / "bad", "img1")
    out = tmp_path / "pl"
    code = main(["pseudo-labels", "--split", "train", "--out", str(out), "--no-progress",
                 *overrides])  # fmt: skip
    assert code != 0
    assert "img1" in capsys.readouterr().err
    assert (out / "img0.png").is_file() and not (out / "img1.png").exists()
    assert main(["pseudo-labels", "--split", "train", "--out", str(out), "--no-progress",
                 "--allow-skipped", *overrides]) == 0  # fmt: skip


def test_usage_errors(setup: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["pseudo-labels", "--split", "train", "--out", str(tmp_path / "x"), "--no-progress"]
    assert main([*args, *setup, "prompts.dataset=voc"]) == 2
    assert "prompts" in capsys.readouterr().err
    assert main([*args, *setup, "sgc.thetaa=1"]) == 2
    assert "sgc.theta" in capsys.readouterr().err


def test_work_size_rounds_up_to_patch_multiples() -> None:
    assert work_size(375, 500, 16, 1024) == (384, 512)
    assert work_size(30, 45, 8, 0) == (32, 48)
    assert work_size(2000, 1000, 16, 1000) == (1008, 512)
    assert work_size(5, 5, 16, 0) == (16, 16)


@pytest.mark.slow
def test_pseudo_labels_with_crf(setup: list[str], tmp_path: Path) -> None:
    out = tmp_path / "crf"
    args = ["pseudo-labels", "--split", "train", "--out", str(out), "--no-progress", "--crf"]
    assert main([*args, "--limit", "1", *setup]) == 0
    labels = np.asarray(Image.open(out / "img0.png"))
    assert labels.shape == SIZES["img0"] and set(np.unique(labels)) <= {0, 1}
    assert not (out / "img1.png").exists()


@pytest.mark.slow
def test_checkpoint_cmpa_heads_give_projected_cams(setup: list[str], tmp_path: Path) -> None:
    from ssrseg.config import load_config
    from ssrseg.engine.checkpoint import rng_state, save_checkpoint, state_from
    from ssrseg.pseudo.labeler import build_ssr_model

    heads = ["cmpa.in_dim=16", "cmpa.out_dim=8", "cmpa.hidden_dim=8", "decoder.embed_dim=16"]
    cfg = load_config(None, [*setup, *heads])
    torch.manual_seed(0)
    model = build_ssr_model(cfg, 3)
    run = tmp_path / "run"
    save_checkpoint(run, 1, model.trainable_state_dict(), {}, state_from(1, cfg, 3, [rng_state()]))
    raw, proj = tmp_path / "raw", tmp_path / "proj"
    base = ["cams", "--split", "train", "--no-progress", "--kind", "initial", "--limit", "1"]
    assert main([*base, "--out", str(raw), *setup, *heads]) == 0
    assert main([*base, "--out", str(proj), "--checkpoint", str(run), *setup, *heads]) == 0
    assert yaml.safe_load((proj / "config.yaml").read_text())["cam"]["projected"] is True
    a, _ = read_cams(raw / "img0.npz")
    b, _ = read_cams(proj / "img0.npz")
    assert a.shape == b.shape and not np.array_equal(a, b)
