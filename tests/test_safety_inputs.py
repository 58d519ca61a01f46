"""Issue 22 points 7 and 8 (data side): tag files that would read into nothing are refused in
one line; a 0-byte image says "empty file"; a missing VOC XML is reported as a missing XML; the
README snippet's arrays are writable; the loader never asks for more workers than cores."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "data"))
from data_fakes import make_voc

from cli_fakes import write_cli_world
from ssrseg.cli import main
from ssrseg.data import build_dataset
from ssrseg.data.base import BadInputError, read_image
from ssrseg.data.classes import VOC_CLASSES
from ssrseg.data.tags import read_tag_file
from ssrseg.engine.train import loader_workers


def test_a_space_separated_txt_tag_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tags.txt"
    path.write_text("img0 square\nimg1 disk\n")  # not CSV: each line reads as one bare id
    with pytest.raises(BadInputError) as err:
        read_tag_file(path)
    text = str(err.value)
    assert text.startswith(str(path)) and "no entry of its 2 names a class" in text
    assert "CSV" in text and "\n" not in text
    path.write_text("img0,square\nimg1,disk;square\n")  # the CSV form of the same: read
    assert read_tag_file(path) == {"img0": ["square"], "img1": ["disk", "square"]}


@pytest.mark.parametrize("text", ["{}", "", "image_id,classes\n"])
def test_a_tag_file_without_entries_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / ("tags.json" if text == "{}" else "tags.csv")
    path.write_text(text)
    with pytest.raises(BadInputError, match="holds no tags"):
        read_tag_file(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_cli_world(tmp_path_factory.mktemp("world"), fast=True)


@pytest.mark.parametrize(("name", "text"), [("tags.json", "{}"), ("tags.txt", "img0 square\n")])
def test_pseudo_labels_stop_with_exit_2_on_an_empty_tag_file(
    world: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    text: str,
) -> None:
    tags = tmp_path / name
    tags.write_text(text)
    out = tmp_path / "out"
    argv = ["pseudo-labels", "--split", "train", "--out", str(out), "--tag-file", str(tags)]
    assert main([*argv, "--no-progress", *world]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tags) in err
    assert not list(out.glob("*.png"))


def test_a_zero_byte_image_is_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"")
    with pytest.raises(BadInputError, match=r"empty file \(0 bytes\)"):
        read_image(path)


def test_a_missing_voc_xml_is_reported_as_such(tmp_path: Path) -> None:
    voc = make_voc(tmp_path, {"train": {"a": [0], "b": [1]}}, VOC_CLASSES)
    (voc / "Annotations" / "b.xml").unlink()
    dataset = build_dataset("voc", tmp_path / "VOCdevkit", "train", require_labels=True)
    assert dataset[dataset.ids.index("a")].labels == (0,)
    with pytest.raises(BadInputError) as err:
        dataset[dataset.ids.index("b")]
    text = str(err.value)
    assert text.startswith(str(voc / "Annotations" / "b.xml"))
    assert "annotation XML not found" in text and "no entry in the tags" not in text


def test_read_images_are_writable_so_torch_does_not_warn(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 5, 3), dtype=np.uint8)).save(path)
    image = read_image(path)
    assert image.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.from_numpy(image)


def test_loader_workers_are_capped_at_the_cores() -> None:
    assert loader_workers(4, 2) == 2  # configs/voc.yaml's 4 on a 2-core machine
    assert loader_workers(0, 16) == 0 and loader_workers(4, 16) == 4


def test_weights_folder_is_git_ignored() -> None:
    ignored = (Path(__file__).parents[1] / ".gitignore").read_text().split()
    assert "weights/" in ignored
