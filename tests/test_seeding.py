"""The seeding rules of tests/conftest.py: each test starts from its own seed, and the two
kinds of unseeded draw fail the test that makes them (shown on small test files run through
pytester in a subprocess, with this suite's conftest)."""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

CONFTEST = Path(__file__).with_name("conftest.py")

CASES = """
import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def unseeded_weights():
    return torch.rand(3)  # module scope: runs before the per-test seeding, unseeded


@pytest.fixture(scope="module")
def seeded_weights():
    torch.manual_seed(0)
    return torch.rand(3)


def test_uses_unseeded_module_fixture(unseeded_weights):
    assert unseeded_weights.shape == (3,)


def test_fresh_numpy_generator():
    np.random.default_rng().random()


def test_torch_reseeded_from_entropy():
    torch.seed()


def test_plain_draw_in_the_body_is_seeded():
    torch.rand(2)
    np.random.rand(2)


def test_uses_seeded_module_fixture(seeded_weights):
    assert seeded_weights.shape == (3,)
"""


def test_each_test_starts_from_the_seed_of_its_node_id(request: pytest.FixtureRequest) -> None:
    salt = os.environ.get("SSRSEG_TEST_SEED", "")
    seed = zlib.crc32((salt + request.node.nodeid).encode())
    assert torch.initial_seed() == seed
    first = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    assert torch.equal(first[0], torch.rand(2))
    assert np.array_equal(first[1], np.random.rand(2))
    assert first[2] == random.random()


def test_unseeded_draws_fail_their_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_cases=CASES)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2, errors=1)
    out = result.stdout.str()
    assert "ERROR at setup of test_uses_unseeded_module_fixture" in out
    assert "drawn from before this test's seeding, unseeded" in out
    assert "FAILED test_cases.py::test_fresh_numpy_generator" in out
    assert "UnseededRandomness: np.random.default_rng() without a seed" in out
    assert "FAILED test_cases.py::test_torch_reseeded_from_entropy" in out
    assert "UnseededRandomness: torch.seed() draws fresh entropy" in out


def test_sessions_run_in_this_process_leave_the_guard_as_it_was(pytester: pytest.Pytester) -> None:
    """pytest may run several sessions in one process (pytester in-process, mutmut's workers):
    each imports the conftest anew and must wrap the library functions, not an earlier
    session's wrappers, and put back what it found."""
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        test_draw="import torch\n\ndef test_draw():\n    torch.manual_seed(1)\n    torch.rand(1)\n"
    )
    before = (torch.manual_seed, torch.seed, np.random.default_rng)
    for _ in range(2):
        pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert (torch.manual_seed, torch.seed, np.random.default_rng) == before
    with pytest.raises(RuntimeError, match="fresh entropy"):
        torch.seed()
