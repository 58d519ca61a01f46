"""Label-mapping details test_labels.py leaves open: defaults, error messages, empty and
batched zero-class inputs, a band of zero width, the config reaching every image of a batch,
and the CAM-file labels (float16 values, uint8 output)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssrseg.config import PseudoLabelConfig
from ssrseg.rectify.labels import (
    IGNORE_INDEX,
    background_score,
    batch_scores_to_labels,
    scores_to_labels,
    stored_cam_labels,
    with_background,
)


def test_default_power_is_one() -> None:
    fg = torch.tensor([[[0.5, 0.8]]])  # K=1: background 1 - 0.5, 1 - 0.8 with power 1
    torch.testing.assert_close(background_score(fg), torch.tensor([[[0.5, 0.2]]]))
    torch.testing.assert_close(with_background(fg), torch.tensor([[[0.5, 0.2]], [[0.5, 0.8]]]))


def test_background_score_rejects_maps_without_class_dim() -> None:
    with pytest.raises(ValueError, match=r"expects \.\.\. x K x H x W scores, got \(4, 5\)"):
        background_score(torch.zeros(4, 5))


def test_background_score_zero_classes_keeps_batch_dtype_and_device() -> None:
    out = background_score(torch.zeros(2, 0, 3, 4, dtype=torch.float64))
    assert out.shape == (2, 1, 3, 4) and out.dtype == torch.float64
    assert torch.equal(out, torch.ones(2, 1, 3, 4, dtype=torch.float64))
    # Factory only (no kernel runs): the meta device shows where the result was made.
    assert background_score(torch.zeros(0, 3, 4, device="meta")).device.type == "meta"


def test_band_messages_and_zero_width_band() -> None:
    scores = torch.tensor([[[0.2, 0.5, 0.9]]])  # K=1 foreground only
    with pytest.raises(
        ValueError,
        match=r"^ignore band: set both pseudo\.ignore_low and pseudo\.ignore_high, or neither "
        r"\(got ignore_low=0\.2, ignore_high=None\)$",
    ):
        scores_to_labels(scores, [4], ignore_low=0.2)
    # low == high is a valid band: only f == 0.5 is ignored.
    out = scores_to_labels(scores, [4], ignore_low=0.5, ignore_high=0.5)
    assert out.tolist() == [[0, IGNORE_INDEX, 5]]


def test_shape_mismatch_message_names_both_layouts() -> None:
    with pytest.raises(ValueError, match=r"expected 3 x H x W with background first, or 2 x H x W"):
        scores_to_labels(torch.zeros(4, 2, 2), [0, 1])


def test_batch_messages_and_config_reaches_each_image() -> None:
    with pytest.raises(ValueError, match=r"^batch_scores_to_labels: empty batch$"):
        batch_scores_to_labels([], [])
    # Foreground 0.45: background 0.55 with power 1 (-> 0) but 0.3025 with power 2 (-> class).
    scores = [torch.full((1, 1, 2), 0.45), torch.full((1, 1, 2), 0.45)]
    out = batch_scores_to_labels(scores, [[2], [6]], PseudoLabelConfig(background_power=2.0))
    assert out.tolist() == [[[3, 3]], [[7, 7]]]
    assert batch_scores_to_labels(scores, [[2], [6]]).tolist() == [[[0, 0]], [[0, 0]]]


def test_stored_cam_labels_scores_float16_values() -> None:
    # Channel 1 is 0.5001 in the file's float32 view but 0.5 in float16 (spacing 2^-11 there),
    # a tie with channel 0 that the first maximum wins; background 1 - 0.5 = 0.5 ties too, and
    # the background is first: label 0. In float32, class 1 (label 8) would win.
    cams = np.array([[[0.5, 0.3]], [[0.5001, 0.2]]], dtype=np.float32)
    out = stored_cam_labels(cams, [2, 7])
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0]]
    assert scores_to_labels(torch.from_numpy(cams), [2, 7]).tolist() == [[8, 0]]


def test_stored_cam_labels_uses_the_config() -> None:
    cams = np.full((1, 1, 2), 0.45, dtype=np.float32)
    assert stored_cam_labels(cams, [3]).tolist() == [[0, 0]]
    cfg = PseudoLabelConfig(background_power=2.0)
    assert stored_cam_labels(cams, [3], cfg).tolist() == [[4, 4]]
    band = PseudoLabelConfig(ignore_low=0.3, ignore_high=0.6)
    assert stored_cam_labels(cams, [3], band).tolist() == [[IGNORE_INDEX, IGNORE_INDEX]]
