"""Background score, argmax label mapping and the ignore band."""

from __future__ import annotations

import pytest
import torch

from ssrseg.config import PseudoLabelConfig
from ssrseg.rectify.labels import (
    background_score,
    batch_scores_to_labels,
    scores_to_labels,
    with_background,
)


def test_background_score_values() -> None:
    fg = torch.tensor([[[0.2, 0.9]], [[0.6, 0.1]]])  # K=2, H=1, W=2
    torch.testing.assert_close(background_score(fg, 1.0), torch.tensor([[[0.4, 0.1]]]))
    torch.testing.assert_close(background_score(fg, 2.0), torch.tensor([[[0.16, 0.01]]]))
    over = torch.tensor([[[1.2]]])  # refined scores may exceed 1: clamp, no NaN for power 0.5
    assert background_score(over, 0.5).item() == 0.0
    batched = background_score(torch.rand(3, 2, 4, 5), 1.0)
    assert batched.shape == (3, 1, 4, 5)


def test_background_score_no_classes_is_ones() -> None:
    out = background_score(torch.zeros(0, 3, 4), 1.0)
    assert out.shape == (1, 3, 4) and torch.equal(out, torch.ones(1, 3, 4))


def test_argmax_mapping_hand_computed() -> None:
    # channels: background, class 7, class 2 (0-based) -> labels 0, 8, 3
    scores = torch.tensor(
        [
            [[0.9, 0.1, 0.2]],
            [[0.05, 0.8, 0.3]],
            [[0.05, 0.1, 0.5]],
        ]
    )
    labels = scores_to_labels(scores, (7, 2))
    assert labels.dtype == torch.long
    assert labels.tolist() == [[0, 8, 3]]


def test_foreground_only_scores_get_background() -> None:
    fg = torch.tensor([[[0.3, 0.7, 0.45]]])  # one class (index 4); bg = 1 - fg = .7 .3 .55
    assert scores_to_labels(fg, (4,)).tolist() == [[0, 5, 0]]
    # power 2: bg = .49 .09 .3025 -> the third pixel turns foreground
    cfg = PseudoLabelConfig(background_power=2.0)
    assert scores_to_labels(fg, (4,), cfg).tolist() == [[0, 5, 5]]
    torch.testing.assert_close(with_background(fg, 1.0)[0], 1 - fg[0])


def test_ignore_band() -> None:
    # max foreground: 0.1 (< low -> 0), 0.5 (band -> 255), 0.9 (> high -> best class), and a
    # pixel where the background wins the argmax but the foreground is above high
    scores = torch.tensor(
        [
            [[0.9, 0.4, 0.1, 0.95]],
            [[0.1, 0.5, 0.3, 0.8]],
            [[0.05, 0.2, 0.9, 0.7]],
        ]
    )
    plain = scores_to_labels(scores, (0, 5))
    assert plain.tolist() == [[0, 1, 6, 0]]
    banded = scores_to_labels(scores, (0, 5), ignore_low=0.3, ignore_high=0.7)
    assert banded.tolist() == [[0, 255, 6, 1]]
    cfg = PseudoLabelConfig(ignore_low=0.3, ignore_high=0.7)
    assert torch.equal(scores_to_labels(scores, (0, 5), cfg), banded)
    # the edges of the band are ignored too (closed interval)
    edge = torch.tensor([[[0.7, 0.3]], [[0.3, 0.7]]])
    assert scores_to_labels(edge, (1,), cfg).tolist() == [[255, 255]]


def test_ignore_band_validation() -> None:
    scores = torch.rand(2, 3, 3)
    with pytest.raises(ValueError, match="both"):
        scores_to_labels(scores, (1,), ignore_low=0.2)
    with pytest.raises(ValueError, match="ignore_low"):
        scores_to_labels(scores, (1,), ignore_low=0.8, ignore_high=0.2)
    with pytest.raises(ValueError, match="do not match 3 classes"):
        scores_to_labels(scores, (1, 2, 3))


def test_zero_class_image_is_all_background() -> None:
    fg = torch.zeros(0, 4, 5)
    assert torch.equal(scores_to_labels(fg, ()), torch.zeros(4, 5, dtype=torch.long))
    cfg = PseudoLabelConfig(ignore_low=0.3, ignore_high=0.7)
    assert torch.equal(scores_to_labels(fg, (), cfg), torch.zeros(4, 5, dtype=torch.long))
    bg_only = torch.rand(1, 4, 5)
    assert torch.equal(scores_to_labels(bg_only, ()), torch.zeros(4, 5, dtype=torch.long))


def test_batch_with_variable_classes() -> None:
    a = torch.tensor([[[0.2, 0.9]], [[0.8, 0.1]]])  # bg + class 3
    b = torch.tensor([[[0.1, 0.1]], [[0.3, 0.2]], [[0.6, 0.7]]])  # bg + classes 0, 9
    c = torch.rand(1, 1, 2)  # bg only
    out = batch_scores_to_labels([a, b, c], [(3,), (0, 9), ()])
    assert out.shape == (3, 1, 2)
    assert out.tolist() == [[[4, 0]], [[10, 10]], [[0, 0]]]
    with pytest.raises(ValueError, match="2 score maps but 1"):
        batch_scores_to_labels([a, b], [(3,)])
