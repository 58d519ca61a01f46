"""cam.input_resize: PIL bicubic on uint8 (CLIP-ES) vs float bilinear (ssrseg's old path).

The PIL path is checked against an independent NumPy re-implementation of Pillow's separable
resampling (bicubic a = -0.5, support scaled when shrinking, taps renormalised at the border,
22-bit fixed-point weights, rounding to uint8 after the horizontal and after the vertical pass).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssrseg.data.resize import resize_to_tensor01

PRECISION_BITS = 32 - 8 - 2


def _cubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _pass(src: np.ndarray, out_len: int) -> np.ndarray:
    """Resample axis 0 of ``src`` (int array, N x ...) to ``out_len`` rows, Pillow-style."""
    n = src.shape[0]
    scale = n / out_len
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    out = np.zeros((out_len, *src.shape[1:]), dtype=np.int64)
    for o in range(out_len):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n)
        w = np.array([_cubic((i - center + 0.5) / filterscale) for i in range(lo, hi)])
        w = w / w.sum()
        fixed = np.where(w < 0, -0.5 + w * (1 << PRECISION_BITS), 0.5 + w * (1 << PRECISION_BITS))
        k = fixed.astype(np.int64)  # C's (int) cast truncates toward zero
        acc = (1 << (PRECISION_BITS - 1)) + np.tensordot(k, src[lo:hi].astype(np.int64), axes=1)
        out[o] = np.clip(acc >> PRECISION_BITS, 0, 255)
    return out


def pillow_bicubic(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``H x W x 3`` uint8 -> ``h x w x 3`` uint8: horizontal pass, then vertical (Pillow's
    order when enlarging)."""
    h, w = size
    x = image.astype(np.int64)
    if x.shape[1] != w:
        x = _pass(x.transpose(1, 0, 2), w).transpose(1, 0, 2)
    if x.shape[0] != h:
        x = _pass(x, h)
    return x.astype(np.uint8)


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("src", "dst"), [((7, 9), (16, 16)), ((75, 100), (80, 112))])
def test_pil_bicubic_matches_pillow_resampling(src: tuple[int, int], dst: tuple[int, int]) -> None:
    img = _image(*src, seed=0)
    ours = resize_to_tensor01(img, dst, "pil_bicubic")
    assert ours.shape == (1, 3, *dst) and ours.dtype == torch.float32
    ref = torch.from_numpy(pillow_bicubic(img, dst)).permute(2, 0, 1)[None].float() / 255.0
    diff = (ours - ref).abs()
    assert float(diff.max()) <= 1 / 255 + 1e-7  # at most one 8-bit level (fixed-point ties)
    assert float(diff.mean()) < 0.01 / 255
    # The values are whole 8-bit levels: the resize happened before the conversion to float.
    torch.testing.assert_close(ours * 255, (ours * 255).round(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dst", [(40, 24), (16, 30)])
def test_shrinking_one_axis_uses_the_widened_kernel(dst: tuple[int, int]) -> None:
    # (CLIP-ES only enlarges: to the next multiple of the patch. When both axes change Pillow
    # may run the vertical pass first; one axis at a time keeps the reference unambiguous.)
    img = _image(40, 30, seed=1)
    ours = resize_to_tensor01(img, dst, "pil_bicubic")
    ref = torch.from_numpy(pillow_bicubic(img, dst)).permute(2, 0, 1)[None].float() / 255
    assert float((ours - ref).abs().max()) <= 1 / 255 + 1e-7


def test_modes_differ_and_bilinear_is_the_old_path() -> None:
    img = _image(30, 45, seed=2)
    size = (32, 48)
    bicubic = resize_to_tensor01(img, size, "pil_bicubic")
    bilinear = resize_to_tensor01(img, size, "torch_bilinear")
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    old = F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    assert torch.equal(bilinear, old)
    ref = torch.from_numpy(pillow_bicubic(img, size)).permute(2, 0, 1)[None].float() / 255.0
    # On a random image the two filters disagree by many 8-bit levels.
    assert float((bilinear - ref).abs().max()) > 20 / 255
    assert float((bicubic - ref).abs().max()) <= 1 / 255 + 1e-7


def test_same_size_is_identity_and_bad_input() -> None:
    img = _image(16, 8, seed=3)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    for mode in ("pil_bicubic", "torch_bilinear"):
        assert torch.equal(resize_to_tensor01(img, (16, 8), mode), x)
    with pytest.raises(ValueError, match="input_resize"):
        resize_to_tensor01(img, (16, 8), "bicubic")
    with pytest.raises(ValueError, match="H x W x 3"):
        resize_to_tensor01(img[..., 0], (16, 8))
