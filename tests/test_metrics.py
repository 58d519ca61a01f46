"""ConfusionMatrix against hand-computed values, and properties (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ssrseg.metrics import ConfusionMatrix, format_table, json_safe


def test_hand_computed_three_classes() -> None:
    # gt / pred over 10 pixels (plus 2 ignored), 3 classes (0 background, 1, 2)
    gt = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 255, 255])
    pred = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 2])
    # hist rows gt, cols pred:
    # [[3,1,0],[0,2,1],[1,0,2]]
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    np.testing.assert_array_equal(cm.hist, [[3, 1, 0], [0, 2, 1], [1, 0, 2]])
    r = cm.compute()
    assert r["iou"] == pytest.approx([3 / 5, 2 / 4, 2 / 4])
    assert r["miou"] == pytest.approx((0.6 + 0.5 + 0.5) / 3)
    assert r["pixel_acc"] == pytest.approx(7 / 10)
    assert r["class_recall"] == pytest.approx([3 / 4, 2 / 3, 2 / 3])
    assert r["class_precision"] == pytest.approx([3 / 4, 2 / 3, 2 / 3])
    assert r["mean_acc"] == pytest.approx((0.75 + 2 / 3 + 2 / 3) / 3)
    assert r["precision"] == pytest.approx((0.75 + 2 / 3 + 2 / 3) / 3)
    # confusion: class 1 -> class 2 is 1 of 3 pixels; class 2 -> class 1 none (its error is bg)
    assert math.isnan(r["class_confusion"][0])
    assert r["class_confusion"][1:] == pytest.approx([1 / 3, 0.0])
    assert r["confusion_ratio"] == pytest.approx(1 / 6)
    assert r["confusion_ratio_global"] == pytest.approx(1 / 6)
    assert r["pixels"] == 10 and r["pred_ignored"] == 0


def test_absent_classes_are_nan_and_left_out() -> None:
    gt = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 3], [1, 1]])  # class 2 absent everywhere, class 3 only predicted
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    r = cm.compute()
    assert r["iou"][0] == pytest.approx(0.5) and r["iou"][1] == 1.0
    assert math.isnan(r["iou"][2])  # absent from gt and prediction: NaN, not counted
    assert r["iou"][3] == 0.0  # predicted but absent from gt: counts as 0
    assert r["miou"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert math.isnan(r["class_recall"][3]) and r["class_precision"][3] == 0.0
    assert r["recall"] == pytest.approx((0.5 + 1.0) / 2)


def test_prediction_ignore_modes() -> None:
    gt = np.array([1, 1, 1, 1, 0, 0])
    pred = np.array([1, 1, 255, 255, 0, 255])
    ex = ConfusionMatrix(2)
    ex.update(pred, gt)
    r = ex.compute()
    assert r["miou"] == 1.0 and r["pred_ignored"] == 3 and r["pixels"] == 3
    wrong = ConfusionMatrix(2, pred_ignore="wrong")
    wrong.update(pred, gt)
    r = wrong.compute()
    assert r["iou"] == pytest.approx([1 / 2, 2 / 4])
    assert r["class_recall"] == pytest.approx([1 / 2, 2 / 4])
    assert r["class_precision"] == pytest.approx([1.0, 1.0])
    assert r["pixel_acc"] == pytest.approx(3 / 6)


def test_rejects_bad_values_and_shapes() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="prediction holds values \\[3\\]"):
        cm.update(np.array([3]), np.array([0]))
    with pytest.raises(ValueError, match="ground truth holds values \\[7\\]"):
        cm.update(np.array([0]), np.array([7]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2), int), np.zeros((2, 3), int))


def test_torch_and_numpy_agree_and_merge() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(2, 5, 6))
    pred = rng.integers(0, 4, size=(2, 5, 6))
    a, b, c = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(torch.from_numpy(pred), torch.from_numpy(gt))
    b.update(pred[0], gt[0])
    c.update(pred[1], gt[1])
    b.merge(c)
    np.testing.assert_array_equal(a.hist, b.hist)
    assert a.images == b.images == 2


def test_format_table_and_json_safe() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1]), np.array([0, 1]))
    r = cm.compute()
    table = format_table(r, ["cat", "dog"])
    assert "background" in table and "dog" in table and "mIoU 100.00" in table
    safe = json_safe(r)
    assert safe["iou"][2] is None and safe["miou"] == 1.0
    with pytest.raises(ValueError):
        format_table(r, ["cat"])


labels = arrays(np.int64, st.integers(1, 40), elements=st.integers(0, 4))


@settings(max_examples=60, deadline=None)
@given(gt=labels)
def test_perfect_prediction_scores_one(gt: np.ndarray) -> None:
    cm = ConfusionMatrix(5)
    cm.update(gt, gt)
    r = cm.compute()
    assert r["miou"] == 1.0 and r["pixel_acc"] == 1.0 and r["precision"] == 1.0
    assert r["recall"] == 1.0
    present = set(gt.tolist())
    if present - {0}:
        assert r["confusion_ratio"] == 0.0
    else:  # no foreground pixel: the confusion ratio is undefined
        assert math.isnan(r["confusion_ratio"])
    for k in range(5):
        assert (k in present) == (not math.isnan(r["iou"][k]))


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 50),
    perm=st.permutations(list(range(5))),
)
def test_permuting_class_ids_permutes_the_table(data: st.DataObject, n: int, perm: list) -> None:
    gt = data.draw(arrays(np.int64, n, elements=st.sampled_from([0, 1, 2, 3, 4, 255])))
    pred = data.draw(arrays(np.int64, n, elements=st.integers(0, 4)))
    p = np.array(perm + [0] * 251)
    p[255] = 255
    a, b = ConfusionMatrix(5), ConfusionMatrix(5)
    a.update(pred, gt)
    b.update(p[pred], p[gt])
    ra, rb = a.compute(), b.compute()
    for key in ("iou", "class_precision", "class_recall"):
        va, vb = np.array(ra[key]), np.array(rb[key])
        np.testing.assert_allclose(vb[perm], va, equal_nan=True)
    np.testing.assert_allclose(ra["miou"], rb["miou"], equal_nan=True)
    np.testing.assert_allclose(ra["pixel_acc"], rb["pixel_acc"], equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 50))
def test_metrics_are_bounded_and_consistent(data: st.DataObject, n: int) -> None:
    gt = data.draw(arrays(np.int64, n, elements=st.integers(0, 3)))
    pred = data.draw(arrays(np.int64, n, elements=st.integers(0, 3)))
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    r = cm.compute()
    assert cm.hist.sum() == n
    assert r["pixel_acc"] == pytest.approx(float((gt == pred).mean()))
    for k in range(4):
        iou, p, rec = r["iou"][k], r["class_precision"][k], r["class_recall"][k]
        if not math.isnan(iou):
            assert 0.0 <= iou <= 1.0
            # IoU never exceeds precision or recall
            assert math.isnan(p) or iou <= p + 1e-12
            assert math.isnan(rec) or iou <= rec + 1e-12
