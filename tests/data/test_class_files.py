"""Issue 12 defect 9: a class file whose first line is ``_background_`` (labelme) or
``background`` counts the same classes as a dataset class file and as ``prompts.dataset``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssrseg.cam.prompts import prompts_from_config
from ssrseg.data import build_dataset
from ssrseg.data.classes import background_header_length, is_background_name, read_class_file

FOREGROUND = ["cat", "dog", "potted plant"]


@pytest.mark.parametrize(
    "header",
    [[], ["background"], ["_background_"], ["Background"], ["__ignore__", "_background_"]],
)
def test_dataset_and_prompts_read_the_same_classes(tmp_path: Path, header: list[str]) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("\n".join([*header, *FOREGROUND]) + "\n")
    assert list(read_class_file(str(path))) == FOREGROUND
    prompts = prompts_from_config(str(path))
    assert list(prompts.names) == FOREGROUND and prompts.num_classes == 3


def test_folder_dataset_with_labelme_classes_matches_its_prompts(tmp_path: Path) -> None:
    """The issue's case: classes.txt as both data.root's class file and prompts.dataset."""
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("__ignore__\n_background_\n" + "\n".join(FOREGROUND))
    (root / "tags.json").write_text(json.dumps({"a": [FOREGROUND[0]]}))  # "{}" is refused
    dataset = build_dataset("folder", root, "all")
    prompts = prompts_from_config(str(root / "classes.txt"))
    assert prompts.num_classes == len(dataset.class_names) == 3
    assert dataset.num_classes == 4  # background + 3


def test_prompt_lines_with_a_background_header(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("_background_\ncat: a cat, kitty\ndog\n[background]\nsky\n")
    prompts = prompts_from_config(str(path))
    assert prompts.names == ("cat", "dog") and prompts.prompts == ("a cat, kitty", "dog")
    assert prompts.background == ("sky",)


def test_header_rules() -> None:
    assert is_background_name("_background_") and is_background_name(" Background ")
    assert not is_background_name("backgrounds")
    assert background_header_length(["__ignore__", "background", "cat"]) == 2
    assert background_header_length(["cat", "background"]) == 0  # only a leading entry
    assert background_header_length(["__ignore__", "cat"]) == 1
