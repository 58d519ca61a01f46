"""The metrics' contract beyond the arithmetic: defaults, edge cases without NumPy warnings,
the exact result keys and types, and the error messages (mutation testing, docs/testing.md).

Values are hand-computed from the tiny arrays written out in each test.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

from ssrseg.metrics import (
    CONFUSION_RATIO_DEFINITION,
    PR_DEFINITION,
    ConfusionMatrix,
    confusion_hist,
    json_safe,
    scores_from_hist,
)

SCORE_KEYS = {
    "num_classes", "iou", "miou", "pixel_acc", "mean_acc", "precision", "recall",
    "class_precision", "class_recall", "class_confusion", "confusion_ratio",
    "confusion_ratio_global", "gt_pixels", "pred_pixels", "pixels",
    "confusion_ratio_definition", "precision_recall_definition",
}  # fmt: skip


def test_confusion_hist_ignores_255_by_default_and_counts_ignored_predictions() -> None:
    gt = np.array([[0, 1, 255], [1, 1, 0]])
    pred = np.array([[0, 255, 1], [255, 1, 1]])
    hist, n_ignored = confusion_hist(pred, gt, 2)  # default ignore_index: VOC's 255
    # kept pairs (gt, pred): (0,0) (1,1) (0,1); the two gt-1 pixels predicted 255 are counted
    assert hist.tolist() == [[1, 1], [0, 1]]
    assert n_ignored == 2
    assert hist.dtype == np.int64


def test_confusion_hist_error_names_the_first_eight_bad_values_and_the_range() -> None:
    gt = np.zeros((1, 10), dtype=np.int64)
    pred = np.arange(3, 13).reshape(1, 10)  # ten values outside 0..2
    with pytest.raises(ValueError) as err:
        confusion_hist(pred, gt, 3)
    assert str(err.value) == (
        "prediction holds values [3, 4, 5, 6, 7, 8, 9, 10] outside 0..2 and 255"
    )


def test_empty_matrix_gives_nan_without_numpy_warnings() -> None:
    """No pixel counted (every ground-truth pixel 255): every score NaN, and no 0/0 warning
    (the denominators are guarded, not divided and patched)."""
    cm = ConfusionMatrix(3)
    cm.update(np.zeros((2, 2), dtype=np.int64), np.full((2, 2), 255))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = cm.compute()
    for key in ("miou", "pixel_acc", "mean_acc", "precision", "recall", "confusion_ratio"):
        assert np.isnan(r[key]), key
    assert np.isnan(r["confusion_ratio_global"])
    assert r["pixels"] == 0 and r["images"] == 1


def test_background_only_ground_truth_has_no_confusion_and_no_warning() -> None:
    hist = np.array([[5, 1], [0, 0]])  # one background pixel predicted as class 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = scores_from_hist(hist)
    assert r["iou"][0] == pytest.approx(5 / 6)
    assert r["iou"][1] == 0.0  # predicted, never in the ground truth: counts as 0
    assert r["class_precision"][1] == 0.0 and np.isnan(r["class_recall"][1])
    assert np.isnan(r["confusion_ratio_global"]) and r["pixel_acc"] == pytest.approx(5 / 6)


def test_one_foreground_pixel_is_enough_for_the_global_confusion() -> None:
    # K = 3: the single class-1 pixel is predicted as class 2 (foreground -> other foreground)
    hist = np.array([[4, 0, 0], [0, 0, 1], [0, 0, 0]])
    r = scores_from_hist(hist)
    assert r["confusion_ratio_global"] == 1.0
    assert r["class_confusion"][1] == 1.0 and np.isnan(r["class_confusion"][0])


def test_result_keys_types_and_definitions() -> None:
    cm = ConfusionMatrix(2, pred_ignore="wrong")
    cm.update(np.array([[0, 1], [255, 1]]), np.array([[0, 1], [1, 0]]))
    r = cm.compute()
    assert set(r) == SCORE_KEYS | {"pred_ignored", "pred_ignore_mode", "images"}
    assert r["pred_ignore_mode"] == "wrong" and r["images"] == 1 and r["pred_ignored"] == 1
    assert r["confusion_ratio_definition"] == CONFUSION_RATIO_DEFINITION
    assert r["precision_recall_definition"] == PR_DEFINITION
    # pixel counts are exact Python ints (JSON integers), not floats
    assert r["gt_pixels"] == [2, 2] and r["pred_pixels"] == [1, 2]
    assert all(type(v) is int for v in r["gt_pixels"] + r["pred_pixels"] + [r["pixels"]])
    assert set(scores_from_hist(cm.hist)) == SCORE_KEYS


def test_counts_are_int64_and_images_follow_the_batch() -> None:
    cm = ConfusionMatrix(2)
    assert cm.hist.dtype == np.int64 and cm.pred_ignored.dtype == np.int64
    cm.update(np.zeros((3, 2, 2), dtype=np.int64), np.zeros((3, 2, 2), dtype=np.int64))
    assert cm.images == 3 and cm.hist.dtype == np.int64 and cm.hist[0, 0] == 12
    cm.reset()
    assert cm.images == 0 and cm.hist.dtype == np.int64 and not cm.hist.any()


def test_single_class_matrix_is_allowed() -> None:
    cm = ConfusionMatrix(1)
    cm.update(np.zeros((2, 2), dtype=np.int64), np.zeros((2, 2), dtype=np.int64))
    assert cm.compute()["miou"] == 1.0


def test_constructor_errors_say_what_was_given() -> None:
    with pytest.raises(ValueError, match=re.escape("num_classes must be >= 1, got 0")):
        ConfusionMatrix(0)
    with pytest.raises(
        ValueError, match=re.escape("pred_ignore must be 'exclude' or 'wrong', got 'x'")
    ):
        ConfusionMatrix(2, pred_ignore="x")


def test_configured_ignore_index_reaches_the_histogram() -> None:
    cm = ConfusionMatrix(2, ignore_index=254)
    cm.update(np.array([[0, 1]]), np.array([[0, 254]]))  # 254 would be out of range unless ignored
    assert cm.hist.tolist() == [[1, 0], [0, 0]]


def test_update_accepts_tensors_attached_to_a_graph() -> None:
    """Labels straight from autograd code (e.g. rounded soft predictions) need ``detach``."""
    pred = torch.tensor([[0.0, 1.0]], requires_grad=True) * 1
    cm = ConfusionMatrix(2)
    cm.update(pred, torch.tensor([[0.0, 1.0]], requires_grad=True) * 1)
    assert cm.hist.tolist() == [[1, 0], [0, 1]]


def test_json_safe_unwraps_numpy_scalars() -> None:
    assert json_safe(np.float32(0.5)) == 0.5 and type(json_safe(np.float32(0.5))) is float
    assert json_safe(np.int64(7)) == 7 and type(json_safe(np.int64(7))) is int
    assert json_safe({"a": [np.float64("nan"), (np.float64(np.inf),)]}) == {"a": [None, [None]]}
