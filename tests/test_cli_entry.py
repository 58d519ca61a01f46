"""The ``ssrseg`` entry point: help for every command, overrides anywhere on the line."""

from __future__ import annotations

import pytest

from ssrseg.cli import COMMANDS, _parse, build_parser, main


@pytest.mark.parametrize("name", [c[0] for c in COMMANDS])
def test_every_command_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert f"ssrseg {name}" in capsys.readouterr().out


def test_no_command_prints_the_command_list_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2  # issue 12 defect 10: a missing command is a usage error
    err = capsys.readouterr().err
    assert all(name in err for name, _, _ in COMMANDS)


@pytest.mark.parametrize("name", [c[0] for c in COMMANDS])
def test_help_has_no_markup(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 12 defect 10: module docstrings shown by --help lose their reStructuredText."""
    with pytest.raises(SystemExit):
        main([name, "--help"])
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out and ":func:" not in out


def test_overrides_may_stand_between_options() -> None:
    args = _parse(
        build_parser(),
        ["pseudo-labels", "--config", "c.yaml", "train.lr=1", "--out", "o", "a.b=2", "--eval"],
    )
    assert args.command == "pseudo-labels" and args._module == "pseudo_labels"
    assert args.overrides == ["train.lr=1", "a.b=2"]
    assert args.out == "o" and args.eval is True


def test_commands_with_subcommands_still_parse() -> None:
    args = _parse(build_parser(), ["weights", "list"])
    assert args.command == "weights" and args._module == "weights"


def test_building_the_parser_does_not_import_torch() -> None:
    """``ssrseg --help`` and usage errors answer in a fraction of a second: no command module
    imports torch (or the dataset code, which does) at import time."""
    import subprocess
    import sys

    code = "import sys, ssrseg.cli; ssrseg.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
