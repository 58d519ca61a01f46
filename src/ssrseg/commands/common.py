"""Pieces every command shares: checked numeric argument types (argparse reports a bad value as
``argument --limit: must be >= 1, got -1`` and exits 2)."""

from __future__ import annotations

import argparse
import math
import re
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


class DeviceError(RuntimeError):
    """The requested device does not exist on this machine (the message says what does)."""


def resolve_device(name: str | None) -> str:
    """``auto`` / None -> ``cuda`` when available, else ``cpu``; an explicit device is checked
    now (not at the first tensor moved there) and refused with what is available."""
    import torch

    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(
            f"--device {name}: not a device name (use cpu, cuda, cuda:N or auto)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"torch {torch.__version__} " + (
                "built without CUDA" if torch.version.cuda is None else "finds no CUDA GPU"
            )
            raise DeviceError(f"--device {name}: CUDA is not available ({build}); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"--device {name}: this machine has {count} CUDA device(s) (cuda:0 .. "
                f"cuda:{count - 1})"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {name}: MPS is not available; use --device cpu")
    return name


class DependencyError(RuntimeError):
    """An optional package a requested feature needs is missing (the message says how to
    install it)."""


def require_crf(cfg: object | None = None) -> None:
    """Fail now, before any work, when the dense CRF cannot run (pydensecrf2 missing)."""
    from ssrseg.engine.infer import check_crf

    try:
        check_crf(cfg)  # type: ignore[arg-type]
    except (RuntimeError, ImportError) as exc:
        raise DependencyError(str(exc)) from None


_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def plain_doc(text: str | None) -> str:
    """A module docstring as ``--help`` text: reStructuredText roles and literals become plain
    words (``:class:`~a.b.Name``` -> ``Name``, double back-quoted ``x`` -> ``x``)."""
    if not text:
        return ""

    def role(match: re.Match[str]) -> str:
        return match.group(1).rsplit(".", 1)[-1]

    return _LITERAL.sub(r"\1", _ROLE.sub(role, text))
