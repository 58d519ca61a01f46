"""lr_factor against hand-computed values of WeCLIP's PolyWarmupAdamW schedule and the
ramp-times-poly variant (``train.warmup_poly``)."""

from __future__ import annotations

import pytest

from ssrseg.config import load_config
from ssrseg.engine.schedule import lr_factor

# WeCLIP's VOC schedule: 30k iterations, 50 warm-up steps from ratio 1e-6, power 1.
ITERS, WARMUP, RATIO, POWER = 30000, 50, 1e-6, 1.0

# WeCLIP sets the lr from its 0-based global step before each update:
#   step < 50: 1 - (1 - step / 50) * (1 - 1e-6)      else: (1 - step / 30000) ** 1
WECLIP = {
    0: 1e-6,
    49: 0.98000002,  # 1 - 0.02 * 0.999999
    50: 0.99833333333,  # 1 - 50 / 30000
    51: 0.9983,  # 1 - 51 / 30000
}
# Ramp x poly: at step 49 also x (1 - 49 / 30000) = 0.99836667 -> 0.97839935 (0.163 % lower)
RAMP_TIMES_POLY = {0: 1e-6, 49: 0.97839935, 50: 0.99833333333, 51: 0.9983}


def test_config_defaults_are_weclips() -> None:
    t = load_config(None).train
    assert t.warmup_poly is False
    assert (t.warmup_iters, t.warmup_ratio, t.poly_power) == (WARMUP, RATIO, POWER)


@pytest.mark.parametrize("step", sorted(WECLIP))
def test_weclip_warmup_is_the_ramp_alone(step: int) -> None:
    got = lr_factor(step, ITERS, WARMUP, RATIO, POWER)
    assert got == pytest.approx(WECLIP[step], rel=1e-8, abs=1e-15)


@pytest.mark.parametrize("step", sorted(RAMP_TIMES_POLY))
def test_warmup_poly_multiplies_the_ramp(step: int) -> None:
    got = lr_factor(step, ITERS, WARMUP, RATIO, POWER, warmup_poly=True)
    assert got == pytest.approx(RAMP_TIMES_POLY[step], rel=1e-8, abs=1e-15)


def test_the_two_schedules_differ_only_inside_the_warm_up() -> None:
    for step in (1, 25, 49):
        assert lr_factor(step, ITERS, WARMUP, RATIO, POWER) > lr_factor(
            step, ITERS, WARMUP, RATIO, POWER, warmup_poly=True
        )
    for step in (50, 1000, 29999, 30000):
        assert lr_factor(step, ITERS, WARMUP, RATIO, POWER) == lr_factor(
            step, ITERS, WARMUP, RATIO, POWER, warmup_poly=True
        )
    assert lr_factor(30000, ITERS, WARMUP, RATIO, POWER) == 0.0
