"""Seeded randomness for every test, and a guard against unseeded draws.

Each test starts with ``torch``, ``numpy`` (the legacy global generator) and ``random`` seeded
from its node id (``crc32``), so its inputs do not depend on which tests ran before it, and a
failure reproduces with ``pytest <node id>`` alone. ``SSRSEG_TEST_SEED=<text>`` changes every
test's seed (docs/testing.md: looking for tests that pass only for their own inputs).

Between tests the three global generators are re-seeded from the operating system's entropy,
as they are in a fresh process. Two kinds of draw are then unseeded, and fail the test:

- a draw from a global generator outside a test's own body: in a module- or session-scoped
  fixture (which runs before this file's per-test seeding) or a module's teardown, unless that
  code seeded the generator itself first (``torch.manual_seed`` / ``np.random.seed`` /
  ``random.seed`` with a value). Found by comparing the generators' states at the start of
  each test with the states left at the end of the previous one;
- a generator asked for fresh entropy: ``np.random.default_rng()`` / ``np.random.seed()`` /
  ``random.seed()`` without a seed, or ``torch.seed()``. These raise :class:`UnseededRandomness`
  wherever they are called while the suite runs (code that reaches them through
  ``from numpy.random import default_rng`` is not caught).

``tests/test_seeding.py`` runs small test files through pytester to show both checks fail a
test that breaks them.
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

pytest_plugins = ["pytester"]


class UnseededRandomness(RuntimeError):
    """A test (or code it calls) asked a generator for fresh, unreproducible entropy."""


State = tuple[torch.Tensor, Any, Any]


def _states() -> State:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _same(a: State, b: State) -> bool:
    np_a, np_b = a[1], b[1]
    return (
        torch.equal(a[0], b[0])
        and np_a[0] == np_b[0]
        and np.array_equal(np_a[1], np_b[1])
        and tuple(np_a[2:]) == tuple(np_b[2:])
        and a[2] == b[2]
    )


class _Guard:
    """What the checks remember between tests."""

    def __init__(self) -> None:
        self.left: State | None = None  # the states at the end of the previous test
        self.explicit_seed = False  # a seed call with a value since then

    def seeded(self) -> None:
        self.explicit_seed = True


GUARD = _Guard()
_ORIGINAL: dict[str, Callable[..., Any]] = {}
# (module, attribute) replaced while a session runs
_PATCHED = (
    (torch, "manual_seed"),
    (torch.random, "manual_seed"),
    (torch, "seed"),
    (torch.random, "seed"),
    (np.random, "seed"),
    (random, "seed"),
    (np.random, "default_rng"),
)
# what each configure found, put back by the matching unconfigure: pytest may run several
# sessions in one process (pytester in-process, mutmut), each importing this file anew
_SAVED: list[list[tuple[Any, str, Any]]] = []


def _unwrapped(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The library function under any wrapper an earlier session of this file installed."""
    return getattr(fn, "_unwrapped", fn)


def _wrap_seed(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """``original(seed)``, noting the seed; refused without one (fresh entropy)."""

    def seed(*args: Any, **kwargs: Any) -> Any:
        value = args[0] if args else kwargs.get("seed", kwargs.get("a"))
        if value is None:
            raise UnseededRandomness(
                f"{name}() without a seed draws fresh entropy: pass a seed (tests/conftest.py)"
            )
        GUARD.seeded()
        return original(*args, **kwargs)

    seed._unwrapped = original  # type: ignore[attr-defined]
    return seed


def _refuse(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise UnseededRandomness(
            f"{name}() draws fresh entropy: use torch.manual_seed(value) (tests/conftest.py)"
        )

    refuse._unwrapped = original  # type: ignore[attr-defined]
    return refuse


def _default_rng(seed: Any = None) -> np.random.Generator:
    if seed is None:
        raise UnseededRandomness(
            "np.random.default_rng() without a seed draws fresh entropy: pass a seed "
            "(tests/conftest.py)"
        )
    return _ORIGINAL["default_rng"](seed)


def pytest_configure(config: pytest.Config) -> None:
    _SAVED.append([(mod, name, getattr(mod, name)) for mod, name in _PATCHED])
    _ORIGINAL.update(
        torch_manual_seed=_unwrapped(torch.manual_seed),
        torch_random_manual_seed=_unwrapped(torch.random.manual_seed),
        torch_seed=_unwrapped(torch.seed),
        np_seed=_unwrapped(np.random.seed),
        random_seed=_unwrapped(random.seed),
        default_rng=_unwrapped(np.random.default_rng),
    )
    torch.manual_seed = _wrap_seed("torch.manual_seed", _ORIGINAL["torch_manual_seed"])  # type: ignore[assignment]
    torch.random.manual_seed = _wrap_seed(  # type: ignore[assignment]
        "torch.random.manual_seed", _ORIGINAL["torch_random_manual_seed"]
    )
    torch.seed = _refuse("torch.seed", _ORIGINAL["torch_seed"])  # type: ignore[assignment]
    torch.random.seed = _refuse("torch.random.seed", _ORIGINAL["torch_seed"])  # type: ignore[assignment]
    np.random.seed = _wrap_seed("np.random.seed", _ORIGINAL["np_seed"])  # type: ignore[assignment]
    random.seed = _wrap_seed("random.seed", _ORIGINAL["random_seed"])  # type: ignore[assignment]
    _default_rng._unwrapped = _ORIGINAL["default_rng"]  # type: ignore[attr-defined]
    np.random.default_rng = _default_rng  # type: ignore[assignment]


def pytest_unconfigure(config: pytest.Config) -> None:
    """Put back what this session's configure replaced."""
    if _SAVED:
        for mod, name, fn in _SAVED.pop():
            setattr(mod, name, fn)


def seed_of(nodeid: str) -> int:
    """The seed a test starts with: ``crc32`` of its node id, prefixed with
    ``$SSRSEG_TEST_SEED`` when set (other draws for every test, to find tests that pass only
    for their particular inputs; unset in CI)."""
    return zlib.crc32((os.environ.get("SSRSEG_TEST_SEED", "") + nodeid).encode())


def _seed_all(seed: int) -> None:
    _ORIGINAL["torch_manual_seed"](seed)
    _ORIGINAL["np_seed"](seed)
    _ORIGINAL["random_seed"](seed)


def _unseed_all() -> None:
    """Fresh entropy, as a new process has: what an unseeded draw sees."""
    _ORIGINAL["torch_seed"]()
    _ORIGINAL["np_seed"](None)
    _ORIGINAL["random_seed"](None)


def pytest_collection_finish(session: pytest.Session) -> None:
    """The first test is checked too: what collection left is the baseline."""
    _unseed_all()
    GUARD.left = _states()
    GUARD.explicit_seed = False


@pytest.fixture(autouse=True)
def _seeded_randomness(request: pytest.FixtureRequest) -> Iterator[int]:
    """Seed the global generators for this test; fail it if wider-scoped code drew unseeded."""
    if GUARD.left is not None and not GUARD.explicit_seed and not _same(GUARD.left, _states()):
        GUARD.left = None
        pytest.fail(
            "a global random generator (torch / numpy / random) was drawn from before this "
            "test's seeding, unseeded: a module- or session-scoped fixture, or a teardown. "
            "Seed it there (torch.manual_seed(0)) or use a local torch.Generator / "
            "np.random.default_rng(seed)",
            pytrace=False,
        )
    seed = seed_of(request.node.nodeid)
    _seed_all(seed)
    yield seed
    _unseed_all()
    GUARD.left = _states()
    GUARD.explicit_seed = False
