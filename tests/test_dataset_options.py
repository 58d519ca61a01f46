"""One way to choose the data in every command: ``--dataset --root --split --tag-file
--classes``, each the same as its ``data.*`` override (issue 12, first use)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "data"))
from data_fakes import make_folder, make_voc, scene

from ssrseg.cli import _parse, build_parser, main
from ssrseg.commands.common import DATASETS, apply_dataset_args, resolve_split
from ssrseg.config import load_config
from ssrseg.data import DATASETS as DATA_DATASETS
from ssrseg.data.classes import VOC_CLASSES
from ssrseg.runrecord import prepare_output
from ssrseg.viz import save_label_png

COMMANDS = {
    "cams": ["--out", "o"],
    "pseudo-labels": ["--out", "o"],
    "train": [],
    "evaluate": ["--pred", "p"],
    "tags": ["--out", "t.json"],
}


def test_the_parser_copy_of_the_dataset_kinds_is_current() -> None:
    assert DATASETS == DATA_DATASETS


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_dataset_command_takes_the_same_options(command: str) -> None:
    args = _parse(
        build_parser(),
        [command, *COMMANDS[command], "--dataset", "voc", "--root", "R", "--split", "val"],
    )
    assert (args.dataset, args.root, args.split) == ("voc", "R", "val")
    if command != "tags":  # tags writes the tag file the others read
        tagged = _parse(build_parser(), [command, *COMMANDS[command], "--tag-file", "t.json"])
        assert tagged.tag_file == "t.json"


def test_options_equal_their_overrides() -> None:
    argv = ["pseudo-labels", "--out", "o", "--dataset", "toy", "--root", "data/t", "--tag-file",
            "tags.json"]  # fmt: skip
    args = _parse(build_parser(), argv)
    by_options = apply_dataset_args(load_config(None, []), args)
    by_overrides = load_config(
        None,
        ["data.dataset=toy", "data.root=data/t", "data.tag_file=tags.json", "prompts.dataset=toy"],
    )
    assert by_options == by_overrides  # the prompts follow a dataset chosen on the command line
    kept = apply_dataset_args(load_config(None, ["prompts.dataset=coco"]), args)
    assert kept.prompts.dataset == "coco"  # ... unless they were set
    folder = _parse(build_parser(), ["cams", "--out", "o", "--dataset", "folder", "--root", "m"])
    cfg = apply_dataset_args(load_config(None, []), folder)
    assert cfg.prompts.dataset == str(Path("m") / "classes.txt")


def test_folder_datasets_default_to_all_images() -> None:
    cfg = load_config(None, ["data.dataset=folder"])
    assert resolve_split(None, cfg, "train") == "all" and resolve_split(None, cfg, "val") == "all"
    assert resolve_split(None, load_config(None, ["data.train_split=mine"]), "train") == "mine"
    voc = load_config(None, [])
    assert resolve_split(None, voc, "train") == "train_aug" and resolve_split("x", voc) == "x"


def test_evaluate_takes_the_dataset_from_the_prediction_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc = make_voc(tmp_path / "data", {"train": {"a1": [0], "a2": [14]}}, VOC_CLASSES)
    pred = tmp_path / "pl"
    cfg = load_config(None, [f"data.root={voc}"])
    prepare_output(pred, cfg, {"command": "pseudo-labels", "split": "train"})
    for image_id, classes in {"a1": [0], "a2": [14]}.items():
        save_label_png(pred / f"{image_id}.png", scene(classes)[1])
    assert main(["evaluate", "--pred", str(pred), "--quiet"]) == 0
    result = json.loads((pred / "metrics.json").read_text())
    assert result["split"] == "train" and result["images"] == 2 and result["miou"] == 1.0


def test_evaluate_a_folder_dataset_without_split(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", {"x1": [0], "x2": [1]}, ["cat", "dog"])
    pred = tmp_path / "pred"
    for image_id, classes in {"x1": [0], "x2": [1]}.items():
        save_label_png(pred / f"{image_id}.png", scene(classes)[1])
    argv = ["evaluate", "--pred", str(pred), "--dataset", "folder", "--root", str(root)]
    assert main([*argv, "--quiet"]) == 0
    result = json.loads((pred / "metrics.json").read_text())
    assert result["split"] == "all" and result["images"] == 2
    assert np.isclose(result["miou"], 1.0)
