"""ConfusionMatrix.merge and the printed metrics table, against hand-written values."""

from __future__ import annotations

import numpy as np
import pytest

from ssrseg.metrics import ConfusionMatrix, format_table, json_safe

GT = np.array([[0, 0, 0, 0, 1, 1]])
PRED = np.array([[0, 0, 0, 1, 1, 1]])  # hist [[3, 1], [0, 2]]


def test_merge_adds_counts_ignored_predictions_and_images() -> None:
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(np.array([[0, 1, 255]]), np.array([[0, 2, 1]]))
    b.update(np.array([[2, 2], [255, 0]]), np.array([[2, 1], [2, 255]]))
    b.update(np.array([1]), np.array([1]))
    a.merge(b)
    assert a.hist.tolist() == [[1, 0, 0], [0, 1, 1], [0, 1, 1]]
    assert a.pred_ignored.tolist() == [0, 1, 1]
    assert a.images == 3
    with pytest.raises(ValueError, match=r"^cannot merge confusion matrices of different sizes$"):
        a.merge(ConfusionMatrix(2))


# By hand from hist [[3, 1], [0, 2]]: IoU 3/4 and 2/3; precision 3/3 and 2/3; recall 3/4 and
# 2/2; confusion of class 1: 0 of its 2 pixels went to another foreground class; mIoU 70.83,
# pixel accuracy 5/6, mean accuracy 87.5, mean precision 83.33, mean recall 87.5.
TABLE = """\
class            IoU    Prec  Recall  Confus       GT px
--------------------------------------------------------
background     75.00  100.00   75.00     -             4
cat            66.67   66.67  100.00    0.00           2
--------------------------------------------------------
""" + (
    "mIoU 70.83  pixel acc 83.33  mean acc 87.50  precision 83.33  recall 87.50  "
    "confusion ratio 0.00  (2 classes, 6 pixels)"
)


def test_format_table_hand_written() -> None:
    cm = ConfusionMatrix(2)
    cm.update(PRED, GT)
    result = cm.compute()
    assert format_table(result, ["cat"]) == TABLE
    assert format_table(result, ["background", "cat"]) == TABLE
    # a result read back from JSON holds None where NaN was: printed the same
    assert format_table(json_safe(result), ["cat"]) == TABLE
    with pytest.raises(ValueError, match=r"^3 class names for 2 classes$"):
        format_table(result, ["a", "b", "c"])


def test_format_table_widens_for_long_names() -> None:
    cm = ConfusionMatrix(2)
    cm.update(PRED, GT)
    lines = format_table(cm.compute(), ["a_rather_long_name"]).splitlines()
    assert lines[0].startswith("class" + " " * 13 + "  ")
    assert lines[3].startswith("a_rather_long_name   66.67")
