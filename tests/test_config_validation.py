"""Issue 12 defect 4: every config field has a valid range or set, checked when the config is
built, with a message naming the key, the value and what is allowed; CLI numbers too."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from ssrseg.cli import main
from ssrseg.config import (
    CROSS_RULES,
    FIELD_RULES,
    ConfigError,
    SSRConfig,
    config_from_dict,
    config_to_dict,
    load_config,
)

CONFIGS = Path(__file__).parents[1] / "configs"


def _fields() -> dict[str, typing.Any]:
    out = {}
    for section in dataclasses.fields(SSRConfig):
        cls = type(getattr(SSRConfig(), section.name))
        for key, hint in typing.get_type_hints(cls).items():
            out[f"{section.name}.{key}"] = hint
    return out


def test_every_field_that_is_not_a_bool_has_a_rule() -> None:
    fields = _fields()
    missing = sorted(k for k, hint in fields.items() if hint is not bool and k not in FIELD_RULES)
    assert missing == [], f"add a rule to ssrseg.config.FIELD_RULES for {missing}"
    assert sorted(set(FIELD_RULES) - set(fields)) == []  # no rule for a field that is gone
    for keys, _, _ in CROSS_RULES:
        assert set(keys) <= set(fields)


@pytest.mark.parametrize("preset", [None, "voc.yaml", "coco.yaml", "toy.yaml"])
def test_defaults_and_presets_are_valid(preset: str | None) -> None:
    cfg = load_config(CONFIGS / preset if preset else None)
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.iterations=-5", "train.iterations: -5 is not allowed (allowed: >= 1)"),
        ("train.batch_size=0", "train.batch_size: 0 is not allowed (allowed: >= 1)"),
        ("train.lr=-1", "train.lr: -1.0 is not allowed (allowed: > 0)"),
        ("train.lr=.nan", "train.lr: nan is not allowed"),
        ("data.crop_size=-128", "data.crop_size: -128 is not allowed (allowed: >= 1)"),
        ("train.ckpt_every=0", "train.ckpt_every: 0 is not allowed (allowed: >= 1)"),
        ("sgc.theta=7", "sgc.theta: 7.0 is not allowed (allowed: in [0, 1])"),
        ("affinity.mask=boxes", "affinity.mask: 'boxes' is not allowed (allowed: one of sgc |"),
        ("par.dilations=[1,0]", "par.dilations: [1, 0] is not allowed (allowed: a non-empty list"),
        ("infer.scales=[]", "infer.scales: [] is not allowed"),
        ("data.scale_range=[2,1]", "data.scale_range: [2.0, 1.0] is not allowed"),
        ("decoder.dropout=1", "decoder.dropout: 1.0 is not allowed (allowed: in [0, 1))"),
        ("prompts.template=a photo", "prompts.template: 'a photo' is not allowed"),
        ("train.amp=fp8", "train.amp: 'fp8' is not allowed"),
        ("decoder.num_heads=3", "decoder.embed_dim=256, decoder.num_heads=3 is not allowed"),
        ("cmpa.tau_min=0.5", "cmpa.tau_min=0.5, cmpa.tau_init=0.05 is not allowed"),
    ],
)
def test_bad_values_name_key_value_and_allowed(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_allowed_edge_values_and_none() -> None:
    cfg = load_config(
        None,
        ["train.amp=off", "train.val_every=0", "infer.long_side=0", "sgc.theta=1",
         "pseudo.ignore_low=0.2", "pseudo.ignore_high=0.2", "train.val_images=null"],
    )  # fmt: skip
    assert cfg.train.val_images is None and cfg.sgc.theta == 1.0
    assert load_config(None, ["train.amp=false"]).train.amp == "False"  # YAML's bare off


def test_checkpoint_configs_are_checked_too() -> None:
    values = config_to_dict(SSRConfig())
    values["train"]["ckpt_every"] = 0
    with pytest.raises(ConfigError, match=r"train\.ckpt_every: 0"):
        config_from_dict(values)


def test_train_with_negative_iterations_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code = main(["train", "train.iterations=-5", "--device", "cpu", "--output-dir", str(run)])
    assert code == 2
    assert "train.iterations: -5 is not allowed" in capsys.readouterr().err
    assert not run.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pseudo-labels", "--out", "x", "--limit", "-1"], "argument --limit: must be >= 1"),
        (["cams", "--out", "x", "--limit", "0"], "argument --limit: must be >= 1"),
        (["pseudo-labels", "--out", "x", "--long-side", "-5"], "--long-side: must be >= 0"),
        (["predict", "i.png", "--checkpoint", "c", "--out", "o", "--scales", "0"], "> 0"),
        (["predict", "i.png", "--checkpoint", "c", "--out", "o", "--batch-size", "0"], ">= 1"),
        (["evaluate", "--root", "r", "--long-side", "-1"], "--long-side: must be >= 0"),
        (["train", "--max-steps", "0"], "--max-steps: must be >= 1"),
        (["toy", "render", "--root", "r", "--n", "-3"], "--n: must be >= 1"),
    ],
)
def test_cli_numbers_are_checked(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
