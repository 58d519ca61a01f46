"""Issue 12 defect 5: a checkpoint that does not fit the job (other CLIP, other class count,
no CMPA heads, other schedule) is refused from its ``state.json`` before anything heavy is
built, and nothing is written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "model"))
sys.path.insert(0, str(Path(__file__).parent / "data"))
from data_fakes import make_voc
from tests_model_fakes import write_tiny_world

from cli_fakes import write_cli_world
from ssrseg.cli import main
from ssrseg.config import SSRConfig, load_config
from ssrseg.data.classes import VOC_CLASSES
from ssrseg.engine.checkpoint import (
    CheckpointError,
    check_compatible,
    rng_state,
    save_checkpoint,
    state_from,
)


def fake_checkpoint(run: Path, cfg: SSRConfig, num_classes: int) -> Path:
    """A checkpoint folder whose weights file is empty: only ``state.json`` may be read."""
    save_checkpoint(run, 3, {}, {}, state_from(3, cfg, num_classes, [rng_state()]))
    return run


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_cli_world(tmp_path_factory.mktemp("world"))


def test_check_compatible_lists_every_mismatch(tmp_path: Path) -> None:
    ckpt = fake_checkpoint(tmp_path / "run", load_config(None, ["cmpa.enabled=false"]), 3)
    check_compatible(ckpt, load_config(None, []), 3)  # same CLIP, same classes: fine
    job = load_config(None, ["backbone.clip=toy_clip"])
    with pytest.raises(CheckpointError) as err:
        check_compatible(ckpt, job, 21, need_cmpa=True)
    text = str(err.value)
    assert (
        "backbone.clip differs: it was trained on 'clip_vit_b16.openai'" in text
        and "'toy_clip'" in text
    )
    assert "it has 3 classes" in text and "the dataset has 21" in text
    assert "no CMPA heads" in text


def test_pseudo_labels_refuses_a_foreign_checkpoint_before_loading(
    world: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ssrseg.pseudo.labeler as labeler_mod

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the labeller was built before the checkpoint check")

    monkeypatch.setattr(labeler_mod, "build_pseudo_labeler", no_build)
    voc_run = fake_checkpoint(tmp_path / "voc_run", load_config(None, []), 21)
    out = tmp_path / "pl"
    argv = ["pseudo-labels", "--split", "train", "--out", str(out), "--checkpoint", str(voc_run)]
    assert main([*argv, "--no-progress", *world]) == 2
    err = capsys.readouterr().err
    assert "does not fit this job" in err and "21 classes" in err and "dataset has 3" in err
    assert not out.exists()  # no config.yaml / run.json left behind


def test_evaluate_refuses_before_loading_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssrseg.commands.predict as predict_cmd

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the class-count check")

    monkeypatch.setattr(predict_cmd, "load_segmenter", no_load)
    root = make_voc(tmp_path / "voc", {"val": {"a1": [0], "a2": [14]}}, VOC_CLASSES)
    toy_run = fake_checkpoint(tmp_path / "toy_run", load_config(None, []), 4)
    argv = ["evaluate", "--checkpoint", str(toy_run), "--root", str(root), "--quiet"]
    assert main([*argv, "--device", "cpu", "--crf", "off"]) == 2
    assert "it has 4 classes (background included) but the dataset has 21" in (
        capsys.readouterr().err
    )


def test_resume_with_a_config_that_changes_the_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_path = write_tiny_world(tmp_path / "world")
    cfg = load_config(cfg_path, [])
    run = fake_checkpoint(tmp_path / "run", cfg, 3)
    other = tmp_path / "other.yaml"
    other.write_text(f"base: {cfg_path}\ntrain:\n  lr: 0.5\n")
    argv = ["train", "--resume", str(run), "--config", str(other), "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "config.train.lr: 0.001 -> 0.5" in err and "Resume without --config" in err
    clip = tmp_path / "clip_other.yaml"
    clip.write_text(f"base: {cfg_path}\nbackbone:\n  clip: toy_clip\n")
    assert main(["train", "--resume", str(run), "--config", str(clip), "--device", "cpu"]) == 2
    assert "backbone.clip='toy_clip'" in capsys.readouterr().err
