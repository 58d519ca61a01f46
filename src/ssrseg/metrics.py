"""Segmentation metrics from one confusion matrix accumulated over a whole split.

``hist[g, p]`` counts pixels of ground-truth class ``g`` predicted as ``p`` (K x K, K = C + 1,
index 0 background). Pixels whose ground truth is 255 are ignored. Predictions of 255 (pseudo
labels leave uncertain pixels unlabelled) are ignored as well by default (``pred_ignore=
"exclude"``; their count is reported as ``pred_ignored``) or counted as wrong (``"wrong"``:
they enter the ground-truth class's row without a matching column, lowering recall and IoU).

Per class c, with TP = hist[c, c], FP = column sum - TP, FN = row sum - TP:
    IoU_c = TP / (TP + FP + FN); precision_c = TP / (TP + FP); recall_c = TP / (TP + FN).
A ratio whose denominator is 0 is NaN (class absent from both ground truth and prediction, or
never predicted) and NaN entries are left out of class means, as the field's evaluation does. A
class absent from the ground truth but predicted has IoU 0 and counts.

Summaries: ``miou`` = mean IoU over the K classes (background included: 21 for VOC, 81 for
COCO); ``pixel_acc`` = sum TP / all counted pixels; ``mean_acc`` = mean recall; ``precision`` /
``recall`` = class means of the per-class values [decision: class means, because pixel-global
precision and recall both equal pixel accuracy, yet the paper reports different P and R].

Confusion ratio [decision; the paper gives no formula, so values are NOT comparable with its
Table 5]: the share of a foreground class's ground-truth pixels predicted as a *different
foreground* class, confusion_c = sum_{k >= 1, k != c} hist[c, k] / sum_k hist[c, k] for c >= 1;
``confusion_ratio`` is its mean over foreground classes present in the ground truth, and
``confusion_ratio_global`` the same over all foreground pixels pooled. It isolates the
inter-class confusion CMPA targets from foreground/background errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

CONFUSION_RATIO_DEFINITION = (
    "mean over foreground classes c present in the ground truth of "
    "(pixels of class c predicted as another foreground class) / (pixels of class c); "
    "a project decision, not comparable with the SSR paper's Table 5"
)
PR_DEFINITION = "precision and recall are means of the per-class values (NaN classes left out)"


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def confusion_hist(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255
) -> tuple[np.ndarray, int]:
    """K x K int64 counts for one pair of label arrays of equal shape, and the number of
    valid-ground-truth pixels whose prediction is ``ignore_index``.

    Raises ValueError for label values outside 0..K-1 (other than ``ignore_index``).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    p = pred.reshape(-1).astype(np.int64)
    g = gt.reshape(-1).astype(np.int64)
    for name, arr in (("ground truth", g), ("prediction", p)):
        bad = ((arr < 0) | (arr >= num_classes)) & (arr != ignore_index)
        if bad.any():
            values = sorted({int(v) for v in np.unique(arr[bad])})[:8]
            raise ValueError(
                f"{name} holds values {values} outside 0..{num_classes - 1} and {ignore_index}"
            )
    keep = g != ignore_index
    p, g = p[keep], g[keep]
    pred_ignored = p == ignore_index
    n_ignored = int(pred_ignored.sum())
    p, g = p[~pred_ignored], g[~pred_ignored]
    hist = np.bincount(g * num_classes + p, minlength=num_classes * num_classes)
    return hist.reshape(num_classes, num_classes).astype(np.int64), n_ignored


def scores_from_hist(
    hist: np.ndarray, pred_ignored_by_class: np.ndarray | None = None
) -> dict[str, Any]:
    """All metrics from a K x K confusion matrix (see module docstring).

    ``pred_ignored_by_class`` (K): ignored-prediction pixels per ground-truth class, counted as
    false negatives (the ``"wrong"`` mode); None to leave them out.
    """
    hist = hist.astype(np.float64)
    k = hist.shape[0]
    tp = np.diag(hist)
    gt_count = hist.sum(axis=1)
    if pred_ignored_by_class is not None:
        gt_count = gt_count + pred_ignored_by_class
    pred_count = hist.sum(axis=0)
    iou = _ratio(tp, gt_count + pred_count - tp)
    precision = _ratio(tp, pred_count)
    recall = _ratio(tp, gt_count)
    total = gt_count.sum()
    fg_to_fg = hist[1:, 1:].sum(axis=1) - tp[1:]
    confusion = np.concatenate([[np.nan], _ratio(fg_to_fg, gt_count[1:])])
    fg_pixels = gt_count[1:].sum()
    return {
        "num_classes": k,
        "iou": iou.tolist(),
        "miou": _nanmean(iou),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_acc": _nanmean(recall),
        "precision": _nanmean(precision),
        "recall": _nanmean(recall),
        "class_precision": precision.tolist(),
        "class_recall": recall.tolist(),
        "class_confusion": confusion.tolist(),
        "confusion_ratio": _nanmean(confusion[1:]),
        "confusion_ratio_global": float(fg_to_fg.sum() / fg_pixels)
        if fg_pixels > 0
        else float("nan"),
        "gt_pixels": gt_count.astype(np.int64).tolist(),
        "pred_pixels": pred_count.astype(np.int64).tolist(),
        "pixels": int(total),
        "confusion_ratio_definition": CONFUSION_RATIO_DEFINITION,
        "precision_recall_definition": PR_DEFINITION,
    }


class ConfusionMatrix:
    """Accumulates a K x K confusion matrix over a split; :meth:`compute` gives all metrics.

    Args:
        num_classes: K = foreground classes + 1 (background).
        ignore_index: label of unknown pixels, in the ground truth and in predictions.
        pred_ignore: ``"exclude"`` (default: predicted-ignore pixels are left out) or
            ``"wrong"`` (they count as false negatives of their ground-truth class).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, pred_ignore: str = "exclude"):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if pred_ignore not in ("exclude", "wrong"):
            raise ValueError(f"pred_ignore must be 'exclude' or 'wrong', got {pred_ignore!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.pred_ignore = pred_ignore
        self.reset()

    def reset(self) -> None:
        self.hist = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.pred_ignored = np.zeros(self.num_classes, dtype=np.int64)  # per gt class
        self.images = 0

    def update(self, pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> None:
        """Add one prediction / ground-truth pair (same shape: H x W, B x H x W, ...)."""
        p = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        g = gt.detach().cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
        hist, _ = confusion_hist(p, g, self.num_classes, self.ignore_index)
        self.hist += hist
        # per-class count of ignored predictions (for pred_ignore="wrong")
        g_flat = g.reshape(-1).astype(np.int64)
        p_flat = p.reshape(-1).astype(np.int64)
        sel = (p_flat == self.ignore_index) & (g_flat != self.ignore_index)
        self.pred_ignored += np.bincount(g_flat[sel], minlength=self.num_classes)
        self.images += 1 if p.ndim <= 2 else int(np.prod(p.shape[:-2]))

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix's counts (e.g. from another process)."""
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices of different sizes")
        self.hist += other.hist
        self.pred_ignored += other.pred_ignored
        self.images += other.images

    def compute(self) -> dict[str, Any]:
        """Metrics dict (lists are per class, index 0 background; NaN where undefined)."""
        wrong = self.pred_ignored if self.pred_ignore == "wrong" else None
        result = scores_from_hist(self.hist, wrong)
        result["pred_ignored"] = int(self.pred_ignored.sum())
        result["pred_ignore_mode"] = self.pred_ignore
        result["images"] = self.images
        return result


def _pct(value: float) -> str:
    return "   -  " if value is None or math.isnan(value) else f"{100 * value:6.2f}"


def format_table(result: dict[str, Any], class_names: Sequence[str]) -> str:
    """Per-class table (IoU, precision, recall, confusion, in %) and the summary lines.

    ``class_names`` may list the foreground classes only (background is prepended) or all K.
    """
    k = int(result["num_classes"])
    names = list(class_names)
    if len(names) == k - 1:
        names = ["background", *names]
    if len(names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} classes")
    width = max(12, *(len(n) for n in names))
    head = (
        f"{'class':<{width}}  {'IoU':>6}  {'Prec':>6}  {'Recall':>6}  {'Confus':>6}  {'GT px':>10}"
    )
    lines = [head, "-" * len(head)]
    for i, name in enumerate(names):
        lines.append(
            f"{name:<{width}}  {_pct(result['iou'][i])}  {_pct(result['class_precision'][i])}  "
            f"{_pct(result['class_recall'][i])}  {_pct(result['class_confusion'][i])}  "
            f"{result['gt_pixels'][i]:>10d}"
        )
    lines.append("-" * len(head))
    lines.append(
        f"mIoU {_pct(result['miou']).strip()}  pixel acc {_pct(result['pixel_acc']).strip()}  "
        f"mean acc {_pct(result['mean_acc']).strip()}  "
        f"precision {_pct(result['precision']).strip()}  "
        f"recall {_pct(result['recall']).strip()}  confusion ratio "
        f"{_pct(result['confusion_ratio']).strip()}  ({k} classes, {result['pixels']} pixels)"
    )
    return "\n".join(lines)


def json_safe(value: Any) -> Any:
    """Replace NaN / inf floats by None (strict JSON) recursively."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value
