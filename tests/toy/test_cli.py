"""``ssrseg toy``: help, render to disk, and a missing action."""

from __future__ import annotations

import json

import pytest

from ssrseg.cli import main


def test_toy_render_writes_the_split(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "toy"
    argv = ["toy", "render", "--root", str(root), "--split", "debiased", "--n", "3"]
    assert main([*argv, "--image-size", "64"]) == 0
    ids = (root / "ImageSets/Segmentation/debiased.txt").read_text().split()
    assert ids == ["debiased_000000", "debiased_000001", "debiased_000002"]
    assert set(json.loads((root / "captions.json").read_text())) == set(ids)
    assert "wrote 3 scenes" in capsys.readouterr().out


def test_toy_without_action_prints_help_and_fails(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["toy"]) == 2
    assert "train-clip" in capsys.readouterr().out


@pytest.mark.parametrize("action", ["render", "train-clip", "train-dino", "zero-shot"])
def test_toy_actions_have_help(action: str, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        main(["toy", action, "--help"])
    assert exc.value.code == 0
    assert "usage: ssrseg toy" in capsys.readouterr().out
