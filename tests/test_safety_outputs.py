"""Issue 22 points 1 and 2: outputs never land among the inputs, "already done" means written by
this job (its stamp), and the prompts must name the dataset's classes (by name), with
background words; each refusal is one line naming the option or file and the fix."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_fakes import write_cli_world
from ssrseg.cli import main
from ssrseg.runrecord import STAMP_KEY, file_stamp
from test_predict_cli import CountingNet, fake_model, predict, save_image  # noqa: F401


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------ predict


@pytest.mark.parametrize("where", ["same", "inside", "around"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_predict_never_writes_into_its_input_folder(
    tmp_path: Path,
    fake_model: CountingNet,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    where: str,
    overwrite: bool,
) -> None:
    photos = tmp_path / "data" / "inplace"
    for i in range(3):
        save_image(photos / f"p{i}.png", 20, 24, i)
    before = _digest(tmp_path / "data")
    out = {"same": photos, "inside": photos / "masks", "around": tmp_path / "data"}[where]
    extra = ["--overwrite"] if overwrite else []
    assert predict(str(photos), "--out", str(out), *extra) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"--out {out}" in line and str(photos) in line and "outside" in line
    assert _digest(tmp_path / "data") == before  # nothing written, nothing replaced
    assert fake_model.images == 0  # refused before any work


def test_predict_refuses_an_out_that_holds_a_listed_image(
    tmp_path: Path,
    fake_model: CountingNet,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    save_image(tmp_path / "shots" / "a.png", 20, 24, 0)
    (tmp_path / "list.txt").write_text("shots/a.png\n")
    assert predict(str(tmp_path / "list.txt"), "--out", str(tmp_path / "shots")) == 2
    assert "holds the input image" in _one_line(capsys.readouterr().err)


def test_already_done_means_stamped_by_this_job(
    tmp_path: Path,
    fake_model: CountingNet,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    for i in range(3):
        save_image(tmp_path / "in" / f"p{i}.png", 20, 24, i)
    out = tmp_path / "out"
    # a folder holding a user's file under an output's name, and no record: the file is not
    # taken for a finished output
    out.mkdir()
    save_image(out / "p0.png", 5, 5, 9)
    assert predict(str(tmp_path / "in"), "--out", str(out)) == 0
    per_image = fake_model.images // 3  # forwards per image (scales x flip)
    assert fake_model.images == 3 * per_image
    assert all(file_stamp(out / f"p{i}.png") for i in range(3))
    assert Image.open(out / "p0.png").size == (24, 20)  # replaced by the prediction
    # rerun: all three are this job's
    capsys.readouterr()
    assert predict(str(tmp_path / "in"), "--out", str(out)) == 0
    assert fake_model.images == 3 * per_image
    assert "3 of 3 images already done" in capsys.readouterr().out
    # a file put there by hand under an output's name is redone, not trusted
    save_image(out / "p1.png", 20, 24, 7)
    assert predict(str(tmp_path / "in"), "--out", str(out)) == 0
    assert fake_model.images == 4 * per_image and file_stamp(out / "p1.png") is not None


# ------------------------------------------------------------------------------ datasets


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    base = tmp_path_factory.mktemp("world")
    return base, write_cli_world(base, fast=True)


def _pseudo(out: Path, world: list[str], *extra: str) -> int:
    argv = ["pseudo-labels", "--split", "train", "--out", str(out), "--no-progress"]
    return main([*argv, *world, *extra])  # extra last: its overrides win


@pytest.mark.parametrize("overwrite", [False, True])
def test_pseudo_labels_never_write_into_the_dataset(
    world: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str], overwrite: bool
) -> None:
    base, overrides = world
    root = base / "toy"
    before = _digest(root)
    out = root / "SegmentationClass"  # the ground truth
    assert _pseudo(out, overrides, *(["--overwrite"] if overwrite else [])) == 2
    line = _one_line(capsys.readouterr().err)
    assert "lies inside the dataset folder (data.root)" in line and str(root) in line
    assert _digest(root) == before


def test_train_refuses_a_run_folder_around_the_dataset(
    world: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    base, overrides = world
    argv = ["train", "--device", "cpu", "--output-dir", str(base), *overrides]
    assert main(argv) == 2
    assert "--output-dir" in _one_line(capsys.readouterr().err)
    assert not (base / "run.json").exists()


def test_pseudo_labels_redo_a_file_this_job_did_not_write(
    world: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, overrides = world
    out = tmp_path / "pl"
    assert _pseudo(out, overrides) == 0
    first = {p.name: np.asarray(Image.open(p)) for p in out.glob("img*.png")}
    assert len(first) == 3 and all(file_stamp(out / n) for n in first)
    capsys.readouterr()
    assert _pseudo(out, overrides) == 0
    assert "3 of 3 images already done" in capsys.readouterr().out
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(out / "img1.png")  # not this job's
    assert _pseudo(out, overrides) == 0
    assert "2 of 3 images already done" in capsys.readouterr().out
    np.testing.assert_array_equal(np.asarray(Image.open(out / "img1.png")), first["img1.png"])


def test_cams_stamp_their_files(world: tuple[Path, list[str]], tmp_path: Path) -> None:
    _, overrides = world
    out = tmp_path / "cams"
    argv = ["cams", "--split", "train", "--out", str(out), "--no-progress", "--limit", "1"]
    assert main([*argv, *overrides]) == 0
    (npz,) = out.glob("*.npz")
    with np.load(npz) as data:
        assert STAMP_KEY in data.files and file_stamp(npz) == str(data[STAMP_KEY])


# ------------------------------------------------------------------------------ prompts


def _labelme(base: Path, name: str, classes: str) -> Path:
    """A labelme-style folder: images/, tags.json and a classes.txt with labelme's header."""
    root = base / name
    (root / "images").mkdir(parents=True)
    for p in (base.parent / "toy" / "JPEGImages").glob("*.png"):
        shutil.copy(p, root / "images" / p.name)
    shutil.copy(base.parent / "toy" / "tags.json", root / "tags.json")
    (root / "classes.txt").write_text("__ignore__\n_background_\n" + classes)
    return root


def test_prompt_classes_are_checked_by_name(
    world: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The preset's prompts (prompts.dataset=toy, two classes) and a class file with the same
    count in another order: refused, naming the first class that differs."""
    base, overrides = world
    root = _labelme(base / "lm", "swapped", "square\ndisk\n")
    (root / "backgrounds.txt").write_text("water\n")
    swapped = tmp_path / "swapped.txt"
    swapped.write_text("disk\nsquare\n")
    out = tmp_path / "pl"
    data = ["--dataset", "folder", "--root", str(root), "--classes", str(swapped), "--split", "all"]
    assert _pseudo(out, overrides, *data) == 2
    line = _one_line(capsys.readouterr().err)
    assert "class 1 is 'square' in the prompts but 'disk' in the dataset" in line
    assert "set prompts.dataset" in line and not out.exists()
    # the same class file as prompts: runs
    assert (
        _pseudo(
            out, overrides, *data, f"prompts.dataset={swapped}", "prompts.background_words=[water]"
        )
        == 0
    )


def test_missing_background_words_are_one_line_and_train_leaves_nothing(
    world: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, overrides = world
    root = _labelme(base / "lm", "nobg", "square\ndisk\n")  # no backgrounds.txt
    data = ["--dataset", "folder", "--root", str(root), "--split", "all"]
    assert _pseudo(tmp_path / "pl", overrides, *data) == 2
    line = _one_line(capsys.readouterr().err)
    assert "no background words" in line and "prompts.use_background_words=false" in line
    run = tmp_path / "run"
    argv = ["train", "--device", "cpu", "--output-dir", str(run), "--max-steps", "1"]
    assert main([*argv, *data, *overrides]) == 2
    assert "no background words" in _one_line(capsys.readouterr().err)
    assert not run.exists()  # no run record left behind


def test_a_prompt_word_outside_a_tiny_vocabulary_is_one_line(
    world: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, overrides = world
    out = tmp_path / "pl"
    assert _pseudo(out, overrides, "prompts.background_words=[zebra]") == 2
    line = _one_line(capsys.readouterr().err)
    assert "'zebra'" in line and "prompts.background_words" in line


def test_reproduce_refuses_a_run_folder_inside_the_dataset(
    world: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    base, _ = world
    root, out = base / "toy", base / "toy" / "repro"
    config = Path(__file__).parents[1] / "configs" / "toy.yaml"
    argv = ["reproduce", "--config", str(config), "--root", str(root), "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 2
    assert "lies inside the dataset folder (data.root)" in _one_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("option", ["--out", "--save-pred"])
def test_evaluate_writes_nothing_into_the_dataset(
    world: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str
) -> None:
    base, _ = world
    root = base / "toy"
    before = _digest(root)
    target = root / ("metrics.json" if option == "--out" else "SegmentationClass")
    argv = ["evaluate", "--pred", str(root / "SegmentationClass"), "--dataset", "toy", "--root",
            str(root), "--split", "train", option, str(target), "--no-progress"]  # fmt: skip
    if option == "--save-pred":
        argv += ["--checkpoint", str(tmp_path / "no_run")]
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert option in line and "dataset folder (data.root)" in line
    assert _digest(root) == before
