"""Multi-scale + flip inference against a two-scale case computed by hand: the resize to each
scale, the flip and flip-back, the resize back to the image and the average over passes."""

from __future__ import annotations

import torch

from ssrseg.config import InferConfig
from ssrseg.engine.infer import Segmenter, multiscale_logits


def _ramp_image() -> torch.Tensor:
    """1 x 3 x 2 x 4: channel 0 is the ramp 0, 1, 2, 3 along the width (both rows)."""
    x = torch.zeros(1, 3, 2, 4)
    x[0, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    return x


def _logits(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel 'model' that is not mirror-symmetric: channel 0 = v + column index (it sees
    where it is), channel 1 = v ** 2 (nonlinear, so the scale matters), v = input channel 0."""
    v = x[:, 0]
    col = torch.arange(x.shape[-1], dtype=x.dtype).expand_as(v)
    return torch.stack([v + col, v**2], dim=1)


# By hand, scales (1, 0.5), flip, patch 2 (the 1 x 2 half-size input is padded to 2 x 2):
# scale 1: ch0 = [0,1,2,3] + [0,1,2,3] = [0,2,4,6]; mirrored input [3,2,1,0] + [0,1,2,3] = 3
#   everywhere, flipped back [3,3,3,3]. ch1 = [0,1,4,9] both ways.
# scale 0.5: bilinear (half-pixel) 4 -> 2 samples 0.5 and 2.5 -> [0.5, 2.5].
#   ch0 = [0.5, 3.5]; mirrored [2.5, 0.5] + [0, 1] = [2.5, 1.5], flipped back [1.5, 2.5].
#   ch1 = [0.25, 6.25] both ways. Back to width 4 (bilinear, half-pixel): [a, b] ->
#   [a, .75a + .25b, .25a + .75b, b]: ch0 [0.5,1.25,2.75,3.5] and [1.5,1.75,2.25,2.5];
#   ch1 [0.25, 1.75, 4.75, 6.25].
# mean of the 4 passes: ch0 ([0,2,4,6] + [3,3,3,3] + [0.5,1.25,2.75,3.5] + [1.5,1.75,2.25,2.5])
#   / 4 = [1.25, 2, 3, 3.75]; ch1 (2 [0,1,4,9] + 2 [0.25,1.75,4.75,6.25]) / 4
#   = [0.125, 1.375, 4.375, 7.625].
EXPECTED = torch.tensor([[1.25, 2.0, 3.0, 3.75], [0.125, 1.375, 4.375, 7.625]])


def test_two_scales_with_flip_equal_the_hand_computed_average() -> None:
    out = multiscale_logits(
        _logits, _ramp_image(), scales=(1.0, 0.5), flip=True, long_side=None, patch_size=2
    )
    assert out.shape == (1, 2, 2, 4)
    for row in range(2):
        torch.testing.assert_close(out[0, :, row], EXPECTED, atol=1e-6, rtol=0)


def test_without_flip_each_scale_counts_once() -> None:
    out = multiscale_logits(
        _logits, _ramp_image(), scales=(1.0, 0.5), flip=False, long_side=None, patch_size=2
    )
    # ch0 ([0,2,4,6] + [0.5,1.25,2.75,3.5]) / 2; ch1 ([0,1,4,9] + [0.25,1.75,4.75,6.25]) / 2
    want = torch.tensor([[0.25, 1.625, 3.375, 4.75], [0.125, 1.375, 4.375, 7.625]])
    torch.testing.assert_close(out[0, :, 0], want, atol=1e-6, rtol=0)


def test_segmenter_passes_its_inference_config() -> None:
    """scales, flip and long_side reach multiscale_logits (long side 4 = the image's: factor
    1, where the default 512 would resize it 128-fold)."""
    seg = Segmenter(
        _logits, 2, 2, InferConfig(scales=(1.0, 0.5), flip=True, long_side=4, batch_size=1)
    )
    torch.testing.assert_close(seg.logits(_ramp_image())[0, :, 1], EXPECTED, atol=1e-6, rtol=0)
    no_flip = Segmenter(_logits, 2, 2, InferConfig(scales=(1.0, 0.5), flip=False, long_side=4))
    assert not torch.allclose(no_flip.logits(_ramp_image())[0, :, 1], EXPECTED)


def test_segmenter_pads_with_the_configured_mode() -> None:
    """A model that mixes each pixel with its right neighbour sees the padding at the right
    edge of a 2 x 3 image (patch 2 pads it to 2 x 4): edge-replicated or zero."""

    def mixing(x: torch.Tensor) -> torch.Tensor:
        v = x[:, :1]
        return torch.cat([v + v.roll(-1, dims=-1), v], dim=1)

    image = torch.zeros(1, 3, 2, 3)
    image[0, 0] = torch.tensor([1.0, 2.0, 4.0])
    for mode, last in (("replicate", 8.0), ("zeros", 4.0)):
        seg = Segmenter(
            mixing, 2, 2, InferConfig(scales=(1.0,), flip=False, long_side=0, pad_mode=mode)
        )
        # column 2 mixes with the padded column 3: 4 + 4 (replicated) or 4 + 0 (zeros)
        assert seg.logits(image)[0, 0, 0].tolist() == [3.0, 6.0, last]
