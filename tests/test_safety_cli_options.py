"""Issue 22 points 4 and 5: one convention for options, as docs/cli.md lists them (walked both
ways); every numeric option range-checked; KEY=VALUE overrides wherever the docs promise them;
--device cuda without CUDA, Ctrl-C and a full disk each end in one line."""

from __future__ import annotations

import argparse
import errno
import json
import math
import re
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from cli_fakes import write_cli_world
from ssrseg.cli import build_parser, main
from ssrseg.commands import pseudo_labels as pseudo_cmd
from test_predict_cli import CountingNet, fake_model, predict, save_image  # noqa: F401

ROOT = Path(__file__).parents[1]
DATASET_OPTIONS = {"--dataset", "--root", "--split", "--tag-file", "--classes"}
JOB_OPTIONS = {"--overwrite", "--allow-skipped", "--no-progress"}


def _leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    """``{"cams": parser, "toy render": parser, ...}``: every command that runs."""
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(name: str, parser: argparse.ArgumentParser) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[name.strip()] = parser
        for sub in subs:
            for child, sub_parser in sub.choices.items():
                walk(f"{name} {child}", sub_parser)

    walk("", build_parser())
    return out


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--")} - {"--help"}


def _documented() -> dict[str, set[str]]:
    """docs/cli.md: ``## `ssrseg COMMAND` `` sections and the options listed in each."""
    text = (ROOT / "docs" / "cli.md").read_text()
    sections = re.split(r"^## `ssrseg ([a-z -]+)`\s*$", text, flags=re.M)
    return {
        name: set(re.findall(r"`(--[a-z0-9-]+)`", body))
        for name, body in zip(sections[1::2], sections[2::2], strict=True)
    }


def test_every_command_has_exactly_the_options_docs_cli_lists() -> None:
    parsers, documented = _leaf_parsers(), _documented()
    assert sorted(documented) == sorted(parsers)
    for name, parser in parsers.items():
        have, listed = _options(parser), documented[name]
        assert have - listed == set(), f"ssrseg {name}: options missing from docs/cli.md"
        assert listed - have == set(), f"ssrseg {name}: docs/cli.md names options it lacks"


def test_every_option_in_a_documented_command_line_exists() -> None:
    """Command lines in README.md and docs/*.md (code blocks and inline code)."""
    parsers = _leaf_parsers()
    bad = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for snippet in re.findall(r"```[a-z]*\n(.*?)```|`([^`\n]+)`", doc.read_text(), re.S):
            for line in "".join(snippet).splitlines():
                found = re.search(r"(?:ssrseg|ssrseg\.cli) ((?:toy |weights )?[a-z-]+)(.*)", line)
                if not found or found.group(1) not in parsers:
                    continue
                have = _options(parsers[found.group(1)]) | {"--help"}
                for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", found.group(2)):
                    if option not in have:
                        bad.append(f"{doc.name}: ssrseg {found.group(1)} {option}")
    assert bad == []


@pytest.mark.parametrize("command", ["cams", "pseudo-labels", "train", "evaluate"])
def test_every_dataset_command_has_the_dataset_options(command: str) -> None:
    assert DATASET_OPTIONS <= _options(_leaf_parsers()[command])


@pytest.mark.parametrize("command", ["cams", "pseudo-labels", "train", "predict"])
def test_every_writing_command_has_the_job_options(command: str) -> None:
    assert JOB_OPTIONS <= _options(_leaf_parsers()[command])


def _numeric_actions() -> list[tuple[str, argparse.Action]]:
    return [
        (name, action)
        for name, parser in _leaf_parsers().items()
        for action in parser._actions
        if action.option_strings and action.type is not None and action.type is not str
        and not isinstance(action.type, argparse.FileType)
    ]  # fmt: skip


def test_no_numeric_option_is_unchecked() -> None:
    plain = [f"{n} {a.option_strings[0]}" for n, a in _numeric_actions() if a.type in (int, float)]
    assert plain == []  # every number goes through a range-checked type
    assert len(_numeric_actions()) > 30


@pytest.mark.parametrize("bad", ["-1", "nan", "1e999", "x"])
def test_every_numeric_option_refuses_out_of_range_values(bad: str) -> None:
    for name, action in _numeric_actions():
        parse = action.type
        assert callable(parse)
        try:
            value = parse(bad)
        except argparse.ArgumentTypeError:
            continue
        # accepted: only a number that the option's rule allows (e.g. -1 for none of them)
        assert isinstance(value, int | float) and math.isfinite(value) and value >= 0, (
            f"ssrseg {name} {action.option_strings[0]} accepted {bad!r}"
        )


def test_a_bad_number_is_one_line_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["reproduce", "--config", "c.yaml", "--out", "o", "--gpus", "0"])
    assert exit_.value.code == 2
    assert "argument --gpus: must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["cams", "--out", "o"],
        ["pseudo-labels", "--out", "o"],
        ["train"],
        ["evaluate", "--pred", "p"],
        ["reproduce", "--config", "c", "--out", "o"],
        ["demo"],
    ],
)
def test_config_commands_take_overrides(argv: list[str]) -> None:
    from ssrseg.cli import _parse

    args = _parse(build_parser(), [*argv, "infer.flip=false"])
    assert args.overrides == ["infer.flip=false"]


# ------------------------------------------------------------------------------ predict


def test_predict_takes_overrides_among_its_inputs(
    tmp_path: Path,
    fake_model: CountingNet,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    save_image(tmp_path / "in" / "a.png", 20, 24, 0)
    out = tmp_path / "out"
    # a bad value is refused before anything is predicted, naming the key
    assert predict(str(tmp_path / "in"), "infer.scales=[0]", "--out", str(out)) == 2
    assert "infer.scales" in capsys.readouterr().err and fake_model.images == 0
    assert not out.exists()
    # a good one is applied (and recorded), not taken for an image path
    assert predict(str(tmp_path / "in"), "infer.flip=false", "--out", str(out)) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["infer"]["flip"] is False and fake_model.images == 2  # 2 scales
    assert predict(str(tmp_path / "in"), "train.lr=0.1", "--out", str(out)) == 2
    assert "takes infer.*, crf.* overrides only" in capsys.readouterr().err


# ------------------------------------------------------------------------------ one line


@pytest.mark.parametrize("command", ["demo", "reproduce"])
def test_cuda_without_cuda_is_one_line_and_leaves_no_folder(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    argv = [command, "--device", "cuda", "--out", str(out)]
    if command == "reproduce":
        argv += ["--config", str(ROOT / "configs" / "toy.yaml")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cuda: CUDA is not available" in err
    assert not out.exists()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_cli_world(tmp_path_factory.mktemp("world"), fast=True)


def test_ctrl_c_is_one_line_and_the_rerun_resumes(
    world: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = pseudo_cmd.run_labeler
    calls = []

    def interrupted_at_the_second_image(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pseudo_cmd, "run_labeler", interrupted_at_the_second_image)
    out = tmp_path / "pl"
    argv = ["pseudo-labels", "--split", "train", "--out", str(out), "--no-progress", *world]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "interrupted" in err and "rerun" in err
    monkeypatch.setattr(pseudo_cmd, "run_labeler", real)
    assert main(argv) == 0
    assert "1 of 3 images already done; wrote 2" in capsys.readouterr().out


def test_an_error_under_a_progress_bar_starts_its_own_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(args: argparse.Namespace) -> int:
        bar = tqdm(total=10, desc="predict")
        bar.update(3)
        raise OSError(errno.ENOSPC, "No space left on device", "out/x.png")

    monkeypatch.setattr(pseudo_cmd, "run", full_disk)
    assert main(["pseudo-labels", "--out", "o"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("ssrseg pseudo-labels: error: No space left on device (out/x.png)")


@pytest.mark.slow
def test_reproduce_no_progress_silences_the_training_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reproduce_fakes import REPO, make_fake_voc, tiny_overrides, write_weights

    make_fake_voc(tmp_path / "data")
    clip, dino = write_weights(tmp_path)
    config, out = REPO / "configs" / "voc.yaml", tmp_path / "run"
    argv = ["reproduce", "--config", str(config), "--out", str(out), "--stages", "train",
            "--crf", "off", "--device", "cpu"]  # fmt: skip
    overrides = tiny_overrides(clip, dino, tmp_path / "data")
    assert main([*argv, "--no-progress", *overrides]) == 0
    assert "train:" not in capsys.readouterr().err  # tqdm's "train: 100%|..." bar
    assert (tmp_path / "run" / "train" / "last").is_file()


def test_demo_no_progress_reaches_the_reproduce_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssrseg.protocol.demo as demo

    seen = {}

    def fake_run_demo(out: str, plan: demo.DemoPlan, *args: object) -> None:
        _, rplan = demo.demo_setup(out, plan, None, [], "cpu", None)
        seen["progress"] = rplan.progress

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    assert seen == {"progress": False}
