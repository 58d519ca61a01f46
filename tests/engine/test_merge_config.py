"""cam_rows.merge_config: dict overrides converted like YAML overrides; unknown keys refused."""

from __future__ import annotations

import pytest

from ssrseg.config import ConfigError, SSRConfig, parse_overrides
from ssrseg.protocol.cam_rows import merge_config


def test_override_strings_are_converted_to_the_field_types() -> None:
    base = SSRConfig()
    # PyYAML reads "6e-4" (no dot) as a string; the field is a float
    raw = parse_overrides(["train.lr=6e-4", "par.dilations=[1, 2]", "par.enabled=false"])
    assert raw["train"]["lr"] == "6e-4"
    cfg = merge_config(base, raw)
    assert cfg.train.lr == pytest.approx(6e-4) and isinstance(cfg.train.lr, float)
    assert cfg.par.dilations == (1, 2) and cfg.par.enabled is False
    assert cfg.train.batch_size == base.train.batch_size  # untouched fields keep their values
    assert base.train.lr == 2e-4  # the base is not modified


def test_unknown_keys_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'sgc\.tau_high'"):
        merge_config(SSRConfig(), {"sgc": {"tau_high": 0.5}})
    with pytest.raises(ConfigError, match=r"train\.lr: expected a number, got 'fast'"):
        merge_config(SSRConfig(), {"train": {"lr": "fast"}})
