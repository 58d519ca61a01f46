"""The CRF pool (ssrseg.engine.crf_pool) equals the serial path; ``crf.labels: present``."""

from __future__ import annotations

import numpy as np
import pytest

from ssrseg.config import ConfigError, CRFConfig, load_config
from ssrseg.engine.crf_pool import OrderedPool, TaskError, crf_mask, default_crf_workers

pytest.importorskip("pydensecrf.densecrf")
from ssrseg.engine.crf import crf_labels, dense_crf

CFG = CRFConfig(iterations=3)


def scene(seed: int, k: int = 5, h: int = 23, w: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """A random image and smooth-ish probabilities (softmax of upsampled noise)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    logits = np.kron(rng.normal(size=(k, 4, 4)) * 3, np.ones((6, 8)))[:, :h, :w]
    probs = np.exp(logits - logits.max(axis=0))
    return image, (probs / probs.sum(axis=0)).astype(np.float32)


def test_pool_equals_serial_in_order() -> None:
    scenes = [scene(i, h=20 + i, w=30 - i) for i in range(5)]
    serial = [crf_mask(image, probs, CFG) for image, probs in scenes]
    got: list[tuple[int, np.ndarray]] = []
    with OrderedPool[int](2, max_pending=2) as pool:
        for i, (image, probs) in enumerate(scenes):
            got += pool.submit(i, crf_mask, image, probs, CFG)
            got += pool.put(100 + i, i)  # known values keep their place in the order
        got += pool.drain()
    keys = [k for k, _ in got]
    assert keys == [k for i in range(5) for k in (i, 100 + i)]
    for i, expected in enumerate(serial):
        np.testing.assert_array_equal(dict(got)[i], expected)  # bit-identical
    assert [dict(got)[100 + i] for i in range(5)] == list(range(5))


def test_serial_mode_runs_at_once_and_errors_name_the_key() -> None:
    image, probs = scene(1)
    with OrderedPool[str](0) as pool:
        assert [k for k, _ in pool.submit("a", crf_mask, image, probs, CFG)] == ["a"]
        with pytest.raises(TaskError, match="ValueError") as err:
            list(pool.submit("bad.png", crf_mask, image[:5], probs, CFG))
    assert err.value.image_key == "bad.png"
    with pytest.raises(ValueError, match="crf-workers"):
        OrderedPool(-1)
    assert default_crf_workers(1) >= default_crf_workers(2) >= 1


def test_present_labels_run_the_crf_over_background_and_the_argmax_classes() -> None:
    image, probs = scene(3, k=6)
    probs[2] = 0.0  # class 2 never wins; 1, 3, 4, 5 may
    probs /= probs.sum(axis=0)
    winners = set(np.unique(probs.argmax(axis=0)).tolist())
    keep = crf_labels(probs, "present")
    assert set(keep.tolist()) == winners | {0} and 2 not in keep
    assert crf_labels(probs, "all").tolist() == list(range(6))
    present = dense_crf(image, probs, CRFConfig(iterations=3, labels="present"))
    # independent reference: the CRF over the kept channels alone, zeros elsewhere
    sub = dense_crf(image, probs[keep], CFG)
    np.testing.assert_array_equal(present[keep], sub)
    dropped = [c for c in range(6) if c not in keep]
    assert (present[dropped] == 0).all()
    # only one label left (background everywhere): marginal 1, no CRF needed
    flat = np.zeros_like(probs)
    flat[0] = 1.0
    np.testing.assert_array_equal(
        dense_crf(image, flat, CRFConfig(labels="present")).argmax(axis=0), 0
    )


def test_crf_labels_is_range_checked() -> None:
    assert load_config(None, ["crf.labels=present"]).crf.labels == "present"
    with pytest.raises(ConfigError, match=r"crf\.labels"):
        load_config(None, ["crf.labels=some"])
