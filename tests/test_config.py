"""Config loading: defaults from the spec, strict keys, overrides, round trip."""

from pathlib import Path

import pytest

from ssrseg.config import (
    ConfigError,
    SSRConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)


def test_defaults_follow_the_spec() -> None:
    cfg = SSRConfig()
    assert cfg.affinity.clip_weight == 0.4 and cfg.affinity.dino_weight == 0.6
    assert cfg.par.dilations == (1, 2, 4, 8, 12, 24) and cfg.par.iterations == 20
    assert cfg.loss.w_proto == 1.0 and cfg.loss.w_seg == 0.1
    assert cfg.cmpa.tau_init == 0.05 and cfg.cmpa.refresh_every == 5000
    assert cfg.prompts.template == "a clean origami {}."


def test_unknown_key_names_the_nearest(tmp_path: Path) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text("affinity:\n  clip_wieght: 0.5\n")
    with pytest.raises(ConfigError, match=r"affinity\.clip_wieght.*affinity\.clip_weight"):
        load_config(preset)


def test_overrides_apply_after_preset_and_types_are_checked(tmp_path: Path) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  iterations: 100\n  lr: 1.0e-3\npar:\n  dilations: [1, 2]\n")
    cfg = load_config(preset, ["train.iterations=7", "affinity.mask=box"])
    assert cfg.train.iterations == 7 and cfg.train.lr == 1e-3
    assert cfg.par.dilations == (1, 2) and cfg.affinity.mask == "box"
    with pytest.raises(ConfigError, match=r"train\.iterations"):
        load_config(None, ["train.iterations=abc"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, ["train.iterations"])


def test_base_preset_and_round_trip(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("train:\n  iterations: 5\n  batch_size: 2\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  iterations: 9\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.train.iterations, cfg.train.batch_size) == (9, 2)
    saved = save_config(cfg, tmp_path / "out")
    assert load_config(saved) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg
