"""Dense CRF: the missing-library message and, with pydensecrf2 installed, edge snapping."""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np
import pytest
import torch

from ssrseg.config import CRFConfig
from ssrseg.engine.crf import dense_crf


def test_missing_library_message(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def failing_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("pydensecrf"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    probs = torch.full((2, 4, 4), 0.5)
    with pytest.raises(RuntimeError) as info:
        dense_crf(image, probs, CRFConfig())
    assert str(info.value) == (
        "dense CRF needs pydensecrf2: pip install 'ssrseg[crf]' (compiles from source, ~1 minute)"
    )


def test_shape_mismatch_is_reported_before_import() -> None:
    with pytest.raises(ValueError, match="do not match the image"):
        dense_crf(np.zeros((4, 4, 3), np.uint8), torch.rand(2, 4, 5), CRFConfig())


def _edge_case() -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Red left half, blue right half; 2-class probabilities right on average but noisy."""
    h, w = 24, 32
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:, :16] = (200, 30, 30)
    image[:, 16:] = (30, 30, 200)
    truth = np.zeros((h, w), dtype=np.int64)
    truth[:, 16:] = 1
    rng = np.random.default_rng(0)
    p1 = np.where(truth == 1, 0.65, 0.35) + rng.uniform(-0.3, 0.3, size=(h, w))
    p1 = np.clip(p1, 0.02, 0.98)
    probs = torch.from_numpy(np.stack([1 - p1, p1]).astype(np.float32))
    return image, probs, truth


def test_crf_cleans_noisy_map_toward_colour_edge() -> None:
    pytest.importorskip("pydensecrf.densecrf")  # optional extra: only this test needs it
    image, probs, truth = _edge_case()
    before = (probs.argmax(0).numpy() != truth).mean()
    assert before > 0.1  # the noise flips a good share of the pixels
    out = dense_crf(image, probs, CRFConfig())
    assert isinstance(out, torch.Tensor) and out.shape == probs.shape
    assert out.dtype == probs.dtype
    torch.testing.assert_close(out.sum(0), torch.ones(24, 32), atol=1e-4, rtol=0)
    after = (out.argmax(0).numpy() != truth).mean()
    assert after < 0.02 and after < before / 5
    as_numpy = dense_crf(image, probs.numpy(), CRFConfig())
    assert isinstance(as_numpy, np.ndarray)
    np.testing.assert_allclose(as_numpy, out.numpy(), atol=1e-6)


def test_dense_crf_accepts_read_only_images() -> None:
    """np.asarray of a PIL image is read-only; pydensecrf's buffers refuse those unless copied."""
    pytest.importorskip("pydensecrf.densecrf")
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image.flags.writeable = False
    probs = np.full((2, 8, 8), 0.5, dtype=np.float32)
    out = dense_crf(image, probs, CRFConfig())
    assert out.shape == (2, 8, 8)
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)
