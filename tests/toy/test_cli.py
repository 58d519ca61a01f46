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


@pytest.mark.parametrize(
    "action", ["render", "train-clip", "train-dino", "install-weights", "zero-shot"]
)
def test_toy_actions_have_help(action: str, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        main(["toy", action, "--help"])
    assert exc.value.code == 0
    assert "usage: ssrseg toy" in capsys.readouterr().out


# -- defect 1: training never writes into the package ------------------------------------------


def _assets(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """A stand-in for the package's toy asset folder (the real one is never touched)."""
    from ssrseg.toy import common

    assets = tmp_path / "assets_toy"
    assets.mkdir()
    monkeypatch.setattr(common, "ASSET_DIR", assets)
    return assets


@pytest.mark.parametrize("kind", ["clip", "dino"])
def test_train_default_out_is_a_run_folder_not_the_package(kind: str) -> None:
    from pathlib import Path

    from ssrseg.cli import _parse, build_parser
    from ssrseg.toy.common import ASSET_DIR

    args = _parse(build_parser(), ["toy", f"train-{kind}"])
    out = Path(args.out)
    assert out.parts[0] == "runs" and out.name == f"{kind}.safetensors"
    assert ASSET_DIR.resolve() not in out.resolve().parents


def test_train_clip_bias_scale_reaches_the_trainer_and_is_checked(capsys) -> None:  # type: ignore[no-untyped-def]
    from ssrseg.cli import _parse, build_parser
    from ssrseg.commands.toy import _train_args
    from ssrseg.toy.train_clip import ClipTrainArgs

    args = _parse(build_parser(), ["toy", "train-clip", "--bias-scale", "0.5"])
    assert _train_args(ClipTrainArgs, args, args.out).bias_scale == 0.5
    assert _parse(build_parser(), ["toy", "train-clip"]).bias_scale == 1.0
    with pytest.raises(SystemExit):
        _parse(build_parser(), ["toy", "train-clip", "--bias-scale", "1.5"])
    assert "must be >= 0, <= 1" in capsys.readouterr().err
    # The other corpus options reach the trainer the same way and are checked the same way.
    argv = ["toy", "train-clip", "--caption-background", "0.5", "--pool", "cls"]
    train = _train_args(ClipTrainArgs, _parse(build_parser(), argv), "out")
    assert (train.caption_background, train.pool) == (0.5, "cls")
    defaults = _train_args(ClipTrainArgs, _parse(build_parser(), ["toy", "train-clip"]), "out")
    assert (defaults.caption_background, defaults.pool) == (1.0, "mean")
    with pytest.raises(SystemExit):
        _parse(build_parser(), ["toy", "train-clip", "--caption-background", "-0.1"])
    assert "must be >= 0, <= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(build_parser(), ["toy", "train-clip", "--pool", "max"])
    assert "invalid choice" in capsys.readouterr().err


def test_train_refuses_an_out_inside_the_package(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import ssrseg.toy.train_clip as train_clip_mod

    assets = _assets(tmp_path, monkeypatch)
    calls = []
    monkeypatch.setattr(train_clip_mod, "train_clip", lambda a: calls.append(a) or {})
    code = main(["toy", "train-clip", "--steps", "1", "--out", str(assets / "clip.safetensors")])
    assert code == 2 and calls == []
    assert list(assets.iterdir()) == []
    err = capsys.readouterr().err
    assert "never writes into the package" in err and "install-weights" in err


@pytest.mark.slow
def test_train_clip_writes_a_run_folder_then_install_copies_it(
    tmp_path, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    from ssrseg.toy.common import sha256_file

    assets = _assets(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    tiny = ["--steps", "1", "--eval-images", "2", "--width", "16", "--layers", "1"]
    assert main(["toy", "train-clip", *tiny, "--batch-size", "2"]) == 0
    out = tmp_path / "runs" / "toy_backbones" / "clip.safetensors"
    manifest = json.loads((out.parent / "manifest.json").read_text())
    assert manifest["clip"]["sha256"] == sha256_file(out)
    assert list(assets.iterdir()) == []  # nothing installed yet
    assert "ssrseg toy install-weights" in capsys.readouterr().out

    assert main(["toy", "install-weights", str(out)]) == 0
    assert sha256_file(assets / "clip.safetensors") == sha256_file(out)
    installed = json.loads((assets / "manifest.json").read_text())["clip"]
    assert installed["sha256"] == manifest["clip"]["sha256"]
    assert installed["command"].startswith("ssrseg toy train-clip")
    assert installed["installed_from"] == str(out.resolve())

    # a changed file no longer matches its manifest entry: refused, package unchanged
    before = sha256_file(assets / "clip.safetensors")
    out.write_bytes(out.read_bytes()[:-1] + b" ")
    assert main(["toy", "install-weights", str(out)]) == 2
    assert "differs from its manifest entry" in capsys.readouterr().err
    assert sha256_file(assets / "clip.safetensors") == before
    assert main(["toy", "install-weights", str(out), "--kind", "dino"]) == 2


def test_zero_shot_pool_reaches_the_scorer(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import ssrseg.backbones.weights as weights
    import ssrseg.toy.common as common
    from ssrseg.cli import main as cli_main

    seen: dict[str, object] = {}

    def fake_scores(clip, tokenizer, split, n, seed, pool="mean"):  # type: ignore[no-untyped-def]
        seen.update(split=split, n=n, pool=pool)
        return {"top1": 1.0}

    monkeypatch.setattr(weights, "load_clip", lambda name: (None, None))
    monkeypatch.setattr(common, "zero_shot_scores", fake_scores)
    assert cli_main(["toy", "zero-shot", "--n", "4", "--pool", "cls"]) == 0
    assert seen == {"split": "debiased", "n": 4, "pool": "cls"}
    assert cli_main(["toy", "zero-shot", "--n", "4"]) == 0 and seen["pool"] == "mean"
    with pytest.raises(SystemExit):
        cli_main(["toy", "zero-shot", "--pool", "max"])
    assert "invalid choice" in capsys.readouterr().err
