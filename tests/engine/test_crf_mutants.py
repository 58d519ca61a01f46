"""Dense CRF contracts the mutation run found untested (docs/mutation/engine.crf.md):
``crf.labels: present`` (which labels, the channels left out, one label left), the
``labels`` default of a config without that field, and tensor subclasses."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_crf_wiring import _direct_unary  # skips this module too without pydensecrf

from ssrseg.config import CRFConfig
from ssrseg.engine.crf import crf_labels, dense_crf

pytest.importorskip("pydensecrf.densecrf")  # the optional extra `crf`

# small, none a default, so a swapped or dropped value changes the answer
CFG = CRFConfig(iterations=3, gaussian_sxy=2.0, gaussian_compat=1.5)
CFG = dataclasses.replace(CFG, bilateral_sxy=11.0, bilateral_srgb=9.0, bilateral_compat=5.0)
PRESENT = dataclasses.replace(CFG, labels="present")


def _direct(image: np.ndarray, probs: np.ndarray, c: CRFConfig) -> np.ndarray:
    """pydensecrf called here (test_crf_wiring's call, the configured kernels) with the unary
    -log(clip(p, 1e-5, 1)) computed in float32."""
    unary = -np.log(np.clip(probs.astype(np.float32), 1e-5, 1.0))
    return _direct_unary(image, unary, c)


def _two_winners() -> tuple[np.ndarray, np.ndarray]:
    """A 10 x 12 image, left half red, right half blue; 5 classes of which only 0 (left) and
    3 (right) ever win a pixel; classes 1, 2, 4 keep a small, non-zero probability."""
    h, w = 10, 12
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:, :6] = (200, 40, 40)
    image[:, 6:] = (40, 40, 200)
    rng = np.random.default_rng(5)
    probs = rng.uniform(0.02, 0.08, size=(5, h, w))
    probs[0, :, :6] += 0.8
    probs[3, :, 6:] += 0.8
    probs /= probs.sum(axis=0, keepdims=True)
    return image, probs.astype(np.float32)


def test_crf_labels_present_is_background_and_the_argmax_winners_as_int64() -> None:
    _, probs = _two_winners()
    keep = crf_labels(probs, "present")
    assert keep.tolist() == [0, 3] and keep.dtype == np.int64
    # background is kept even where it wins nowhere; winners come from the per-pixel argmax
    # over the K axis (axis 0), not from any other axis nor the flat argmax
    swapped = probs[[3, 1, 2, 0, 4]]
    assert crf_labels(swapped, "present").tolist() == [0, 3]
    one = np.zeros((4, 3, 5), dtype=np.float32)
    one[2] = 1.0  # class 2 wins every pixel: flat argmax 2*15 = 30, axis-1 argmax 0
    got = crf_labels(one, "present")
    assert got.tolist() == [0, 2] and got.dtype == np.int64
    assert crf_labels(one, "all").tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("mode", ["some", "PRESENT", "All", ""])
def test_crf_labels_refuses_other_modes_naming_them(mode: str) -> None:
    with pytest.raises(ValueError) as info:
        crf_labels(np.full((2, 3, 3), 0.5), mode)
    assert str(info.value) == f"crf.labels must be 'all' or 'present', got {mode!r}"


def test_present_runs_the_crf_over_the_kept_labels_and_zeroes_the_others() -> None:
    image, probs = _two_winners()
    sub = _direct(image, probs[[0, 3]], CFG)  # the CRF over background and class 3 alone
    want = np.zeros_like(probs)
    want[[0, 3]] = sub
    out = dense_crf(image, probs, PRESENT)
    assert out.dtype == np.float32 and out.shape == probs.shape
    np.testing.assert_array_equal(out, want)
    out64 = dense_crf(image, probs.astype(np.float64), PRESENT)
    assert out64.dtype == np.float64
    np.testing.assert_array_equal(out64, want.astype(np.float64))
    as_tensor = dense_crf(image, torch.from_numpy(probs).double(), PRESENT)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float64
    np.testing.assert_array_equal(as_tensor.numpy(), want.astype(np.float64))
    # the reference differs from the all-labels CRF here (the left-out channels get mass)
    assert float(np.abs(dense_crf(image, probs, CFG) - want).max()) > 1e-3


def test_a_config_without_a_labels_field_runs_over_all_labels() -> None:
    """``cfg.labels`` defaults to ``all`` (WeCLIP) for a config object that lacks the field."""
    image, probs = _two_winners()
    fields = {f.name: getattr(CFG, f.name) for f in dataclasses.fields(CFG) if f.name != "labels"}
    old = SimpleNamespace(**fields)
    np.testing.assert_array_equal(dense_crf(image, probs, old), _direct(image, probs, CFG))  # type: ignore[arg-type]


def test_one_label_left_gives_marginal_one_in_the_input_kind() -> None:
    image, _ = _two_winners()
    # a single class: nothing to decide, probability 1 everywhere, shape and dtype kept
    single = np.full((1, 10, 12), 0.7, dtype=np.float64)
    out = dense_crf(image, single, CFG)
    assert out.shape == (1, 10, 12) and out.dtype == np.float64
    np.testing.assert_array_equal(out, np.ones((1, 10, 12)))
    # present mode, background wins everywhere: channel 0 is 1, every other channel 0
    flat = np.full((3, 10, 12), 0.1, dtype=np.float32)
    flat[0] = 0.8
    want = np.zeros((3, 10, 12), dtype=np.float32)
    want[0] = 1.0
    got = dense_crf(image, flat, PRESENT)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    as_tensor = dense_crf(image, torch.from_numpy(flat).half(), PRESENT)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float16
    np.testing.assert_array_equal(as_tensor.float().numpy(), want)


def test_a_tensor_subclass_is_a_tensor() -> None:
    """A Parameter's type lives in ``torch.nn.parameter``: still a tensor, returned as one."""
    image, probs = _two_winners()
    param = torch.nn.Parameter(torch.from_numpy(probs))  # requires grad, like a model output
    out = dense_crf(image, param, CFG)
    assert isinstance(out, torch.Tensor) and not out.requires_grad
    np.testing.assert_allclose(out.numpy(), _direct(image, probs, CFG), rtol=0, atol=1e-6)
