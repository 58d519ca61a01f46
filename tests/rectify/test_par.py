"""PAR: invariants, hand-computed values and equality with a straightforward reference."""

from __future__ import annotations

import dataclasses
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from par_reference import reference_par

from ssrseg.config import PARConfig
from ssrseg.rectify import par_native
from ssrseg.rectify.par import neighbour_offsets, par_refine, par_weights, position_weights


def test_offsets_order_and_count() -> None:
    offs = neighbour_offsets((1, 3))
    assert len(offs) == 16
    assert offs[:8] == [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    assert offs[8] == (-3, -3)
    with pytest.raises(ValueError, match="dilations"):
        neighbour_offsets((0,))


def test_position_weights_hand_computed() -> None:
    # dilation 1: distances 1 (x4) and sqrt 2 (x4); mean (1 + sqrt2)/2, unbiased std
    # sqrt(8 * ((sqrt2 - 1)/2)^2 / 7) = 0.2214; logits -(1/0.2214/0.3)^2 = -226.7 (axis) and
    # -453.4 (diagonal): the diagonals vanish, the 4 axis neighbours share 1/4 each
    pos = position_weights((1,), 0.3, dtype=torch.float64)
    expected = torch.tensor([0, 0.25, 0, 0.25, 0.25, 0, 0.25, 0], dtype=torch.float64)
    torch.testing.assert_close(pos, expected, atol=1e-12, rtol=0)
    assert position_weights((1, 2, 4), 0.3).sum().item() == pytest.approx(1.0, abs=1e-6)


def test_weights_sum_to_one_plus_position_weight() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 12, 17, generator=gen)
    cfg = PARConfig(dilations=(1, 2, 4), position_weight=0.05)
    weights, offsets = par_weights(images, cfg)
    assert weights.shape == (2, 24, 12, 17) and len(offsets) == 24
    torch.testing.assert_close(weights.sum(1), torch.full((2, 12, 17), 1.05))
    normed, _ = par_weights(images, dataclasses.replace(cfg, normalise=True))
    torch.testing.assert_close(normed.sum(1), torch.ones(2, 12, 17))


@pytest.mark.parametrize("normalise", [False, True])
def test_constant_scores_scale_by_weight_sum(normalise: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(1, 3, 10, 14, generator=gen)
    scores = torch.full((1, 2, 10, 14), 0.5)
    scores[:, 1] = 0.25
    cfg = PARConfig(iterations=20, normalise=normalise)
    out = par_refine(images, scores, cfg)
    factor = 1.0 if normalise else 1.01**20  # 1.2202: WeCLIP's weights sum to 1.01
    torch.testing.assert_close(out, scores * factor, rtol=1e-5, atol=1e-6)


def test_matches_reference_non_square_batch() -> None:
    gen = torch.Generator().manual_seed(2)
    # 11 x 27: the largest dilation (24) exceeds the height, so clamping is exercised
    images = torch.rand(2, 3, 11, 27, generator=gen, dtype=torch.float64)
    scores = torch.rand(2, 3, 11, 27, generator=gen, dtype=torch.float64)
    cfg = PARConfig(iterations=5)
    out = par_refine(images, scores, cfg)
    ref = reference_par(images, scores, cfg.dilations, 5, 0.3, 0.01)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)


def test_matches_reference_float32_and_resizes_images() -> None:
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(1, 3, 24, 40, generator=gen)
    scores = torch.rand(1, 2, 12, 20, generator=gen)
    # the half-pixel resize convention (par.align_corners=false); WeCLIP's True convention is
    # tested in test_par_weclip.py
    cfg = PARConfig(dilations=(1, 2, 4), iterations=3, colour_temperature=0.5, align_corners=False)
    out = par_refine(images, scores, cfg)
    small = torch.nn.functional.interpolate(
        images, size=(12, 20), mode="bilinear", align_corners=False
    )
    ref = reference_par(small, scores, cfg.dilations, 3, 0.5, 0.01)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_sharpens_scores_along_colour_edge() -> None:
    # black left half, white right half; a blurred score ramp whose 0.5 crossing (column 12)
    # lies 4 pixels left of the colour edge (column 16)
    h, w = 16, 32
    images = torch.zeros(1, 3, h, w)
    images[..., 16:] = 1.0
    fg = ((torch.arange(w, dtype=torch.float32) - 4) / 16).clamp(0, 1).expand(h, w)
    scores = torch.stack([1 - fg, fg])[None]
    out = par_refine(images, scores, PARConfig(normalise=True))

    def leak(x: torch.Tensor) -> float:  # share of the foreground mass on the black side
        return (x[0, 1, :, :16].sum() / x[0, 1].sum()).item()

    assert leak(scores) == pytest.approx(0.2115, abs=1e-3)
    assert leak(out) < 0.7 * leak(scores)
    expected = (torch.arange(w) >= 16).long().expand(h, w)
    assert torch.equal(scores[0].argmax(0)[0, :16], (torch.arange(16) >= 13).long())
    assert torch.equal(out[0].argmax(0), expected)  # the label boundary snaps to the edge
    jump_before = (scores[0, 1, :, 16] - scores[0, 1, :, 15]).min()
    jump_after = (out[0, 1, :, 16] - out[0, 1, :, 15]).min()
    assert jump_before.item() == pytest.approx(1 / 16)
    assert jump_after > 0.75  # from 1/16 to a step: 0.15 on the black side, 0.97 on the white


def test_dtype_device_and_disabled() -> None:
    gen = torch.Generator().manual_seed(4)
    images = torch.rand(1, 3, 8, 8, generator=gen)
    scores = torch.rand(1, 2, 8, 8, generator=gen, dtype=torch.float64)
    out = par_refine(images, scores, PARConfig(iterations=2))
    assert out.dtype == torch.float64 and out.device == scores.device
    half = par_refine(images, scores.to(torch.bfloat16), PARConfig(iterations=2))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.double(), out, rtol=2e-2, atol=2e-2)
    same = par_refine(images, scores, PARConfig(enabled=False))
    assert same is scores
    empty = par_refine(images, scores[:, :0], PARConfig(iterations=2))
    assert empty.shape == (1, 0, 8, 8)


def test_differentiable_in_images_and_scores() -> None:
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(1, 3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    scores = torch.rand(1, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    cfg = PARConfig(dilations=(1, 2), iterations=2, normalise=True)
    fn = lambda i, s: par_refine(i, s, cfg)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (images, scores), fast_mode=True)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="batch sizes differ"):
        par_refine(torch.rand(2, 3, 4, 4), torch.rand(1, 2, 4, 4), PARConfig())
    with pytest.raises(ValueError, match="B x K x H x W"):
        par_refine(torch.rand(3, 4, 4), torch.rand(2, 4, 4), PARConfig())


# ---------------------------------------------------------------- compiled CPU kernels
needs_compiler = pytest.mark.skipif(
    par_native._compiler() is None, reason="no C compiler: PAR runs in its torch form"
)


@needs_compiler
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 2e-5)], ids=["f64", "f32"]
)
def test_native_kernels_match_reference(dtype: torch.dtype, tol: float) -> None:
    assert par_native.load() is not None  # the fast path is what this test exercises
    gen = torch.Generator().manual_seed(6)
    # 2 images; width 37 = one 32-column tile + a 5-column tail; height 13 < largest dilation
    images = torch.rand(2, 3, 13, 37, generator=gen, dtype=dtype)
    scores = torch.rand(2, 4, 13, 37, generator=gen, dtype=dtype)
    cfg = PARConfig(iterations=7)
    out = par_refine(images, scores, cfg)
    ref = reference_par(images.double(), scores.double(), cfg.dilations, 7, 0.3, 0.01)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


@needs_compiler
def test_native_kernels_equal_torch_form(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(7)
    images = torch.rand(1, 3, 40, 70, generator=gen)
    scores = torch.rand(1, 3, 40, 70, generator=gen)
    cfg = PARConfig()
    fast_w, _ = par_weights(images, cfg)
    fast = par_refine(images, scores, cfg)
    monkeypatch.setenv(par_native.ENV_SWITCH, "0")
    assert par_native.load() is None
    slow_w, _ = par_weights(images, cfg)
    slow = par_refine(images, scores, cfg)
    # float32 rounding only: the same arithmetic in the same order, fused multiply-adds aside
    torch.testing.assert_close(fast_w, slow_w, rtol=0, atol=2e-6)
    torch.testing.assert_close(fast, slow, rtol=0, atol=5e-6)


@needs_compiler
def test_native_threads_give_identical_results() -> None:
    lib = par_native.load()
    assert lib is not None
    gen = torch.Generator().manual_seed(8)
    images = torch.rand(2, 3, 64, 80, generator=gen)
    scores = torch.rand(2, 3, 64, 80, generator=gen)
    cfg = PARConfig(iterations=5)
    weights, offsets = par_weights(images, cfg)
    # each output value is computed by one thread in a fixed order: any split gives the
    # same bits; 3 threads on 128 rows also exercises uneven chunks and the barrier
    one = par_native.propagate(lib, scores, weights, offsets, 5, threads=1)
    three = par_native.propagate(lib, scores, weights, offsets, 5, threads=3)
    assert torch.equal(one, three)
    pos = torch.rand(len(offsets), generator=gen)
    w1 = par_native.weights(lib, images, offsets, 1e-8, 0.3, pos, None, threads=1)
    w3 = par_native.weights(lib, images, offsets, 1e-8, 0.3, pos, None, threads=3)
    assert torch.equal(w1, w3)


@needs_compiler
def test_fresh_build_when_the_cache_is_not_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("SSRSEG_CACHE", str(blocked))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    par_native.reset()
    try:
        lib = par_native.load()  # compiled from scratch into the per-user temporary folder
        assert lib is not None
        assert list((tmp_path / "tmp").glob("ssrseg-kernels-*/par_kernels_*"))
        x = torch.rand(1, 3, 6, 7, dtype=torch.float64)
        offsets = neighbour_offsets((1,))
        w = par_native.weights(lib, x, offsets, 1e-8, 0.3, torch.zeros(8), None)
        assert w.shape == (1, 8, 6, 7)
        torch.testing.assert_close(w.sum(1), torch.ones(1, 6, 7, dtype=torch.float64))
    finally:
        par_native.reset()


def test_without_compiler_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    par_native.reset()
    try:
        with pytest.warns(RuntimeWarning, match="torch form"):
            assert par_native.load() is None
        gen = torch.Generator().manual_seed(9)
        images = torch.rand(1, 3, 9, 11, generator=gen, dtype=torch.float64)
        scores = torch.rand(1, 2, 9, 11, generator=gen, dtype=torch.float64)
        cfg = PARConfig(dilations=(1, 2), iterations=3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second warning: the failure is remembered
            out = par_refine(images, scores, cfg)
        ref = reference_par(images, scores, cfg.dilations, 3, 0.3, 0.01)
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    finally:
        par_native.reset()


def test_native_not_used_where_unsupported() -> None:
    x = torch.rand(1, 3, 4, 4)
    assert par_native.supported(x, x.double()) is False  # mixed dtypes
    assert par_native.supported(x.bfloat16()) is False
    leaf = x.clone().requires_grad_(True)
    assert par_native.supported(leaf) is False  # autograd needs the torch graph
    with torch.no_grad():
        assert par_native.supported(leaf) is True
