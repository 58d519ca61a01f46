"""The dense CRF gets the configured parameters, each in its own argument: ``dense_crf`` and
the Segmenter's CRF step equal a direct pydensecrf call written here with the same values
(none a default, no two alike), and any two swapped give another answer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ssrseg.config import CRFConfig, InferConfig
from ssrseg.engine.crf import dense_crf
from ssrseg.engine.infer import Segmenter

dcrf = pytest.importorskip("pydensecrf.densecrf")  # the optional extra `crf`
utils = pytest.importorskip("pydensecrf.utils")

# the smoothness (Gaussian) kernel's values, then the appearance (bilateral) kernel's
CFG = CRFConfig(iterations=4, gaussian_sxy=2.0, gaussian_compat=1.5)
CFG = dataclasses.replace(CFG, bilateral_sxy=13.0, bilateral_srgb=7.0, bilateral_compat=6.0)


def _case() -> tuple[np.ndarray, np.ndarray]:
    """A 20 x 24 image of three colour bands with noise, and noisy 3-class probabilities."""
    rng = np.random.default_rng(3)
    image = np.zeros((20, 24, 3), dtype=np.uint8)
    image[:, :8] = (200, 40, 40)
    image[:, 8:16] = (40, 200, 40)
    image[:, 16:] = (40, 40, 200)
    image = np.clip(image + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
    logits = rng.normal(size=(3, 20, 24))
    logits[0, :, :8] += 1.0
    logits[1, :, 8:16] += 1.0
    logits[2, :, 16:] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
    return image, probs.astype(np.float32)


def _direct_unary(image: np.ndarray, unary: np.ndarray, c: CRFConfig) -> np.ndarray:
    """The direct call with a given ``K x H x W`` unary."""
    k, h, w = unary.shape
    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(np.ascontiguousarray(unary.reshape(k, -1), dtype=np.float32))
    d.addPairwiseGaussian(sxy=c.gaussian_sxy, compat=c.gaussian_compat)
    d.addPairwiseBilateral(
        sxy=c.bilateral_sxy, srgb=c.bilateral_srgb, rgbim=image.copy(), compat=c.bilateral_compat
    )
    return np.asarray(d.inference(c.iterations), dtype=np.float32).reshape(k, h, w)


def _direct(image: np.ndarray, probs: np.ndarray, c: CRFConfig) -> np.ndarray:
    """pydensecrf called here, its unary from pydensecrf's own ``unary_from_softmax``."""
    unary = utils.unary_from_softmax(probs, clip=1e-5)
    return _direct_unary(image, unary.reshape(probs.shape), c)


def test_dense_crf_equals_a_direct_pydensecrf_call_with_the_configured_values() -> None:
    image, probs = _case()
    want = _direct(image, probs, CFG)
    # bit-equal: the same float32 unary gives the same mean-field arithmetic
    np.testing.assert_array_equal(dense_crf(image, probs, CFG), want)
    got_t = dense_crf(image, torch.from_numpy(probs), CFG)
    np.testing.assert_allclose(got_t.numpy(), want, rtol=0, atol=1e-6)
    # each value matters on this case, in its own argument
    swaps = {
        "gaussian sxy <-> compat": {"gaussian_sxy": 1.5, "gaussian_compat": 2.0},
        "bilateral sxy <-> srgb": {"bilateral_sxy": 7.0, "bilateral_srgb": 13.0},
        "bilateral srgb <-> compat": {"bilateral_srgb": 6.0, "bilateral_compat": 7.0},
        "gaussian <-> bilateral compat": {"gaussian_compat": 6.0, "bilateral_compat": 1.5},
        "gaussian <-> bilateral sxy": {"gaussian_sxy": 13.0, "bilateral_sxy": 2.0},
        "default iterations": {"iterations": 10},
    }
    for name, over in swaps.items():
        other = _direct(image, probs, dataclasses.replace(CFG, **over))
        assert float(np.abs(other - want).max()) > 1e-3, name


def test_segmenter_crf_step_uses_its_configured_crf() -> None:
    image, _ = _case()

    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        # a fixed per-pixel function of the colour: 3 logits from the RGB channels
        return 3 * x - 1.5

    seg = Segmenter(logits_fn, 3, 1, InferConfig(scales=(1.0,), flip=False, long_side=0), crf=CFG)
    mask, probs = seg.predict(image, return_probs=True, crf=True)
    plain = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    softmax = logits_fn(plain).softmax(dim=1)[0].numpy()
    want = _direct(image, softmax, CFG)
    np.testing.assert_allclose(probs, want, rtol=0, atol=1e-5)
    assert np.array_equal(mask, want.argmax(axis=0).astype(np.uint8))


def test_probabilities_are_clipped_to_1e5_and_1_before_the_log() -> None:
    image, probs = _case()
    hard = np.zeros_like(probs)  # exact zeros (log 0) and values above 1 (not probabilities)
    hard[0] = 1.5
    hard[1, :, 8:] = 1.0
    out = dense_crf(image, hard, CFG)
    assert np.isfinite(out).all()
    want = _direct_unary(image, -np.log(np.clip(hard, 1e-5, 1.0)), CFG)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)
    # each end of the clip matters here
    no_top = _direct_unary(image, -np.log(np.clip(hard, 1e-5, None)), CFG)
    assert float(np.abs(no_top - want).max()) > 1e-4
    other_floor = _direct_unary(image, -np.log(np.clip(hard, 1e-3, 1.0)), CFG)
    assert float(np.abs(other_floor - want).max()) > 1e-4


def test_a_tensor_that_requires_grad_is_accepted_and_keeps_its_kind() -> None:
    image, probs = _case()
    t = torch.from_numpy(probs).double().requires_grad_()
    out = dense_crf(image, t, CFG)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), _direct(image, probs, CFG), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(20, 24), (20, 24, 4), (20, 24, 1)])
def test_an_image_that_is_not_h_w_3_is_refused(shape: tuple[int, ...]) -> None:
    _, probs = _case()
    with pytest.raises(ValueError, match=r"^dense_crf expects an H x W x 3 image, got shape"):
        dense_crf(np.zeros(shape, np.uint8), probs, CFG)


def test_numpy_probabilities_keep_their_dtype() -> None:
    image, probs = _case()
    want = _direct(image, probs, CFG)
    out32 = dense_crf(image, probs, CFG)
    out64 = dense_crf(image, probs.astype(np.float64), CFG)
    assert out32.dtype == np.float32 and out64.dtype == np.float64
    np.testing.assert_array_equal(out64, want.astype(np.float64))


def test_images_of_another_integer_type_or_layout_give_the_same_answer() -> None:
    image, probs = _case()
    want = _direct(image, probs, CFG)
    np.testing.assert_array_equal(dense_crf(image.astype(np.int64), probs, CFG), want)
    # the same image stored channels-first (a view that is not C-contiguous)
    planar = np.ascontiguousarray(image.transpose(2, 0, 1)).transpose(1, 2, 0)
    assert not planar.flags.c_contiguous
    np.testing.assert_array_equal(dense_crf(planar, probs, CFG), want)
