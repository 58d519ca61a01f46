"""Issue 22 points 3 and 6: records that tell the truth byte for byte, and a backbone check
that compares the weights' contents, not their names."""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent / "model"))
sys.path.insert(0, str(Path(__file__).parent / "engine"))
from test_train import FAST  # the trainer tests' small, fast settings
from tests_model_fakes import (  # one_thread: autouse fixture
    TinySegDataset,
    one_thread,  # noqa: F401
    tiny_config,
    tiny_ssr_model,
    write_tiny_world,
)

from ssrseg.backbones.weights import REGISTRY, package_path
from ssrseg.cli import main
from ssrseg.config import load_config
from ssrseg.engine.checkpoint import (
    CheckpointError,
    canonical_safetensors,
    check_compatible,
    rng_state,
    save_checkpoint,
    state_from,
)
from ssrseg.engine.train import Trainer


def _metrics(run: Path) -> list[dict[str, object]]:
    """metrics.jsonl less the wall-clock rate (the only field a rerun cannot repeat)."""
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "img_per_s"} for r in records]


def test_metrics_after_resume_off_the_log_grid_equal_an_uninterrupted_run(tmp_path: Path) -> None:
    # log every 2 steps, stopped (and checkpointed) at step 3: the step-4 line must average
    # steps 3 and 4, as in the uninterrupted run, and the early stop's line must go
    cfg = tiny_config(
        **{**FAST, "train__iterations": 6, "train__ckpt_every": 3, "train__log_every": 2}
    )
    Trainer(cfg, tiny_ssr_model(cfg, 0), TinySegDataset(), tmp_path / "a", progress=False).fit()
    first = Trainer(cfg, tiny_ssr_model(cfg, 0), TinySegDataset(), tmp_path / "b", progress=False)
    first.fit(stop_after=3)
    stopped = _metrics(tmp_path / "b")
    assert [r["step"] for r in stopped] == [2, 3] and stopped[1]["partial"] is True
    torch.manual_seed(123)
    resumed = Trainer(cfg, tiny_ssr_model(cfg, 7), TinySegDataset(), tmp_path / "b", progress=False)
    assert resumed.fit(resume=tmp_path / "b") == 6
    straight = _metrics(tmp_path / "a")
    assert [r["step"] for r in straight] == [2, 4, 6]
    assert _metrics(tmp_path / "b") == straight


def test_identical_runs_write_identical_weight_files(tmp_path: Path) -> None:
    cfg = tiny_config(**{**FAST, "train__iterations": 2, "train__ckpt_every": 2})
    for name in ("a", "b"):
        Trainer(
            cfg, tiny_ssr_model(cfg, 0), TinySegDataset(), tmp_path / name, progress=False
        ).fit()
    a = (tmp_path / "a" / "ckpt_2" / "model.safetensors").read_bytes()
    b = (tmp_path / "b" / "ckpt_2" / "model.safetensors").read_bytes()
    assert a == b
    (length,) = struct.unpack("<Q", a[:8])
    header = json.loads(a[8 : 8 + length])
    assert list(header) == sorted(header)  # keys (tensors, metadata) in sorted order
    assert list(header["__metadata__"]) == ["format", "step"]


def test_canonical_safetensors_sorts_a_shuffled_header(tmp_path: Path) -> None:
    """Hand-built file whose header lists keys in reverse order: the canonical form sorts
    them, keeps the data bytes, and still loads to the same tensors."""
    data = torch.arange(4, dtype=torch.float32).numpy().tobytes()
    header = {
        "z": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "__metadata__": {"step": "3", "format": "x"},
    }
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    blob = struct.pack("<Q", len(text)) + text + data
    out = canonical_safetensors(blob)
    (length,) = struct.unpack("<Q", out[:8])
    assert length % 8 == 0 and out[8 + length :] == data
    assert list(json.loads(out[8 : 8 + length])) == ["__metadata__", "a", "z"]
    (tmp_path / "f.safetensors").write_bytes(out)
    loaded = load_file(str(tmp_path / "f.safetensors"))
    assert loaded["a"].tolist() == [0.0, 1.0] and loaded["z"].tolist() == [2.0, 3.0]


@pytest.mark.slow
def test_train_records_output_dir_max_steps_and_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_tiny_world(tmp_path / "world")
    run = tmp_path / "quick"
    args = ["train", "--config", str(cfg), "--device", "cpu", "--output-dir", str(run)]
    assert main([*args, "--max-steps", "2"]) == 0
    assert "2/2" in capsys.readouterr().err  # the bar counts to --max-steps, not to 4
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["output_dir"] == str(run)
    record = json.loads((run / "run.json").read_text())
    assert record["options"]["max_steps"] == 2 and record["options"]["device"] == "cpu"
    assert record["config"]["train"]["output_dir"] == str(run)
    # the run moved elsewhere still resumes (where it lives is not its schedule)
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    assert main(["train", "--resume", str(moved), "--device", "cpu", "--max-steps", "3"]) == 0
    assert yaml.safe_load((moved / "config.yaml").read_text())["train"]["output_dir"] == str(moved)
    assert json.loads((moved / "run.json").read_text())["options"]["max_steps"] == 3


def _checkpoint(run: Path, clip: str) -> Path:
    cfg = load_config(None, [f"backbone.clip={clip}", "backbone.dino=toy_dino"])
    state = state_from(3, cfg, 3, [rng_state()])
    from ssrseg.engine.checkpoint import backbone_identity

    state.extra["backbones"] = backbone_identity(cfg)
    save_checkpoint(run, 3, {}, {}, state)
    return run


def test_backbone_check_compares_contents_not_names(tmp_path: Path) -> None:
    toy = package_path(REGISTRY["toy_clip"])
    run = _checkpoint(tmp_path / "run", "toy_clip")
    # the very file the name stands for, and a byte copy of it elsewhere: accepted
    copy = tmp_path / "copy" / "clip.safetensors"
    copy.parent.mkdir()
    shutil.copyfile(toy, copy)
    for spec in (str(toy), str(copy), str(copy.parent)):
        check_compatible(run, load_config(None, [f"backbone.clip={spec}"]), 3)
    # same name, other contents: refused, naming the backbone and both hashes
    other = tmp_path / "other.safetensors"
    shutil.copyfile(package_path(REGISTRY["toy_dino"]), other)
    with pytest.raises(CheckpointError) as err:
        check_compatible(run, load_config(None, [f"backbone.clip={other}"]), 3)
    text = str(err.value)
    assert "backbone.clip differs" in text and "'toy_clip'" in text and str(other) in text
    assert "\n" not in text


def test_backbone_check_on_an_old_checkpoint_resolves_its_name(tmp_path: Path) -> None:
    """A checkpoint written before hashes were recorded: its spec's file is hashed now."""
    cfg = load_config(None, ["backbone.clip=toy_clip"])
    save_checkpoint(tmp_path / "run", 3, {}, {}, state_from(3, cfg, 3, [rng_state()]))
    toy = package_path(REGISTRY["toy_clip"])
    check_compatible(tmp_path / "run", load_config(None, [f"backbone.clip={toy}"]), 3)


@pytest.mark.slow
def test_train_overwrite_starts_afresh_and_keeps_other_files(tmp_path: Path) -> None:
    cfg_path = write_tiny_world(tmp_path / "world")
    run = tmp_path / "run"
    argv = ["train", "--config", str(cfg_path), "--device", "cpu", "--output-dir", str(run)]
    assert main([*argv, "--max-steps", "2", "train.lr=0.5", "train.ckpt_every=1"]) == 0
    (run / "notes.txt").write_text("mine")
    assert main([*argv, "--max-steps", "1"]) == 2  # another config: refused
    assert main([*argv, "--max-steps", "1", "--overwrite", "--no-progress"]) == 0
    assert sorted(p.name for p in run.glob("ckpt_*")) == ["ckpt_1"]  # ckpt_2 of the old run gone
    assert (run / "notes.txt").read_text() == "mine"
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["train"]["lr"] == 0.001


def test_train_takes_the_class_file_of_a_folder_dataset(tmp_path: Path) -> None:
    from ssrseg.cli import _parse, build_parser
    from ssrseg.commands.common import apply_dataset_args

    classes = tmp_path / "mine.txt"
    argv = ["train", "--dataset", "folder", "--root", str(tmp_path), "--classes", str(classes)]
    args = _parse(build_parser(), argv)
    cfg = apply_dataset_args(load_config(None, []), args)
    assert cfg.data.classes == str(classes) and cfg.prompts.dataset == str(classes)
