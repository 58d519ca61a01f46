"""Pieces every command shares: checked numeric argument types (argparse reports a bad value as
``argument --limit: must be >= 1, got -1`` and exits 2)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


def _float_above(lo: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value > lo and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > {lo:g}, got {text}")
        return value

    parse.__name__ = f"number > {lo:g}"
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)
positive_float = _float_above(0.0)
