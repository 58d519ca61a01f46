"""Issue 12 defect 3: an output folder's ``run.json`` / ``config.yaml`` describe its outputs;
a rerun with other settings is refused (naming the keys) unless ``--overwrite``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "model"))
from tests_model_fakes import write_tiny_world

from cli_fakes import write_cli_world
from ssrseg.cli import main
from ssrseg.config import load_config
from ssrseg.runrecord import (
    RunMismatchError,
    diff_records,
    make_record,
    prepare_output,
    read_record,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_cli_world(tmp_path_factory.mktemp("world"), fast=True)


def test_diff_names_changed_keys_and_skips_ignored() -> None:
    a = make_record(load_config(None, ["sgc.theta=0.5"]), {"long_side": 1024})
    b = make_record(load_config(None, ["sgc.theta=0.6", "data.num_workers=0"]), {"long_side": 9})
    lines = diff_records(a, b, ("config.data.num_workers",))
    assert lines == ["config.sgc.theta: 0.5 -> 0.6", "options.long_side: 1024 -> 9"]


def test_prepare_output_refuses_a_different_record(tmp_path: Path) -> None:
    cfg = load_config(None, [])
    prepare_output(tmp_path, cfg, {"split": "train"})
    prepare_output(tmp_path, cfg, {"split": "train"})  # same settings: resumes
    with pytest.raises(RunMismatchError, match=r"options\.split: 'train' -> 'val'") as err:
        prepare_output(tmp_path, cfg, {"split": "val"}, command="ssrseg x")
    assert "--overwrite" in str(err.value) and "ssrseg x" in str(err.value)
    prepare_output(tmp_path, cfg, {"split": "val"}, overwrite=True)
    assert read_record(tmp_path)["options"] == {"split": "val"}  # type: ignore[index]


@pytest.mark.slow
def test_pseudo_labels_rerun_with_other_settings_is_refused(
    world: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pl"
    args = ["pseudo-labels", "--split", "train", "--out", str(out), "--no-progress", "--limit", "1"]
    # configs/voc.yaml-style cam.projected=true without a checkpoint: raw-CLIP CAMs are used
    assert main([*args, *world, "cam.projected=true"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["cam"]["projected"] is False
    record = json.loads((out / "run.json").read_text())
    assert record["options"]["long_side"] == 1024 and record["options"]["crf"] is False
    assert record["options"]["split"] == "train" and record["options"]["checkpoint"] is None
    assert record["config"]["cam"]["projected"] is False
    stamp = (out / "img0.png").stat().st_mtime_ns
    capsys.readouterr()

    assert main([*args, *world, "sgc.theta=0.6"]) == 2
    err = capsys.readouterr().err
    assert "config.sgc.theta: 0.5 -> 0.6" in err and "--overwrite" in err
    assert main([*args, *world, "--long-side", "512"]) == 2
    assert "options.long_side: 1024 -> 512" in capsys.readouterr().err
    assert yaml.safe_load((out / "config.yaml").read_text())["sgc"]["theta"] == 0.5
    assert (out / "img0.png").stat().st_mtime_ns == stamp

    assert main([*args, *world, "sgc.theta=0.6", "--overwrite"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["sgc"]["theta"] == 0.6
    assert (out / "img0.png").stat().st_mtime_ns != stamp
    # cams into the pseudo-labels folder: another command, refused
    assert main(["cams", *args[1:], *world, "sgc.theta=0.6"]) == 2
    assert "options.command: 'pseudo-labels' -> 'cams'" in capsys.readouterr().err


def test_train_into_a_run_made_with_another_config_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_path = write_tiny_world(tmp_path / "world")
    run = tmp_path / "run"
    other = load_config(cfg_path, ["train.lr=0.5"])
    prepare_output(run, other, {"command": "train"})
    args = ["train", "--config", str(cfg_path), "--device", "cpu", "--output-dir", str(run)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "config.train.lr: 0.5 -> 0.001" in err and "--output-dir" in err
    assert not list(run.glob("ckpt_*"))
