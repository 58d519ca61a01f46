"""Issue 12 defect 6: known problems become one line naming the file and the problem, exit 2;
unexpected errors keep their traceback."""

from __future__ import annotations

import argparse
import errno
import pickle
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "model"))
from tests_model_fakes import write_tiny_world

from cli_fakes import write_cli_world
from ssrseg.cli import main
from ssrseg.engine.checkpoint import (
    OPTIM_FILE,
    CheckpointError,
    rng_state,
    save_checkpoint,
    state_from,
)


class Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("executed",))


def crafted_pickle(path: Path) -> Path:
    with path.open("wb") as handle:
        pickle.dump({"state": Evil()}, handle, protocol=2)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_cli_world(tmp_path_factory.mktemp("world"), fast=True)


def _fake_command(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    import ssrseg.commands.tags as tags_cmd

    def run(args: argparse.Namespace) -> int:
        raise exc

    monkeypatch.setattr(tags_cmd, "run", run)


def test_known_errors_are_one_line_and_unexpected_ones_keep_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tags", "--root", "r", "--out", "t.json"]
    _fake_command(monkeypatch, CheckpointError("run/ckpt_3/state.json: truncated"))
    assert main(argv) == 2
    assert capsys.readouterr().err == "ssrseg tags: error: run/ckpt_3/state.json: truncated\n"
    _fake_command(monkeypatch, PermissionError(errno.EACCES, "Permission denied", "out/x.png"))
    assert main(argv) == 2
    assert capsys.readouterr().err == "ssrseg tags: error: Permission denied (out/x.png)\n"
    _fake_command(monkeypatch, ZeroDivisionError("a bug"))
    with pytest.raises(ZeroDivisionError):
        main(argv)


@pytest.mark.slow
def test_full_disk_while_writing_pseudo_labels_names_the_file(
    world: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from PIL import Image

    def full(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # no file name, as PIL's

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "pl"
    argv = ["pseudo-labels", "--split", "train", "--out", str(out), "--no-progress"]
    assert main([*argv, "--limit", "1", *world]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"No space left on device ({out / 'img0.png'})" in err and "free some space" in err
    assert not list(out.glob(".img0*"))  # the temporary file is gone


def test_full_disk_during_a_checkpoint_save_keeps_the_last_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ssrseg.config import SSRConfig

    state = state_from(1, SSRConfig(), 3, [rng_state()])
    save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {"a": 1}, state)

    def full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . unexpected pos 807296 vs 807188"
        )

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(tmp_path, 2, {"w": torch.ones(2)}, {"a": 2}, state)
    text = str(err.value)
    assert OPTIM_FILE in text and "cannot write checkpoint step 2" in text
    assert "unexpected pos 807296 vs 807188" in text and "\n" not in text
    assert f"{tmp_path / 'ckpt_1'}, is kept" in text
    assert (tmp_path / "last").read_text().strip() == "ckpt_1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_1", "last"]


@pytest.mark.slow
def test_crafted_optimizer_state_on_resume_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_tiny_world(tmp_path / "world")
    run = tmp_path / "run"
    argv = ["train", "--config", str(cfg), "--device", "cpu", "--output-dir", str(run)]
    assert main([*argv, "--max-steps", "1", "train.val_every=0", "train.ckpt_every=1"]) != 2
    crafted_pickle(run / "ckpt_1" / OPTIM_FILE)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssrseg train: error: ") and "Traceback" not in err
    assert str(run / "ckpt_1" / OPTIM_FILE) in err and "refused to load" in err


def test_bad_weight_files_for_toy_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not weights at all")
    assert main(["toy", "zero-shot", "--weights", str(bad), "--n", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssrseg toy: error: ") and str(bad) in err and err.count("\n") == 1
    assert main(["toy", "train-clip", "--init", str(bad), "--steps", "1",
                 "--out", str(tmp_path / "c.safetensors")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err


def test_unavailable_device_is_named(
    world: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "pl"
    argv = ["pseudo-labels", "--split", "train", "--out", str(out), "--device", "cuda"]
    assert main([*argv, *world]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: CUDA is not available" in err and "use --device cpu" in err
    assert not out.exists()
    assert main(["train", "--device", "cuda:1", "--output-dir", str(tmp_path / "r")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert main([*argv[:-1], "tpu9", *world]) == 2
    assert "not a device name" in capsys.readouterr().err
