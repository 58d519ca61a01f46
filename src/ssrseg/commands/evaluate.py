"""``ssrseg evaluate``: score predicted label PNGs against a dataset split's ground truth.

``ssrseg evaluate --pred DIR --dataset voc --root R --split val`` reads ``DIR/<id>.png`` (palette
or plain index PNGs, 0 background, c + 1, 255 ignore) for every id of the split, accumulates one
confusion matrix (:mod:`ssrseg.metrics`), prints a per-class table and writes JSON.

Reusable pieces for other modes (e.g. scoring a checkpoint): :func:`add_dataset_args`,
:func:`open_eval_dataset`, :func:`evaluate_predictions` (or :func:`evaluate_arrays` for any
iterable of (id, prediction, ground truth)), :func:`print_result`, :func:`write_result_json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ssrseg.data import DATASETS, BadInputError, SegDataset, SkipLog, build_dataset


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """--dataset / --root / --split / --classes / --tag-file / --allow-skipped."""
    parser.add_argument("--dataset", default="voc", choices=DATASETS, help="dataset kind")
    parser.add_argument("--root", required=True, help="dataset root (see docs/datasets.md)")
    parser.add_argument("--split", default="val", help="split name (default: val)")
    parser.add_argument(
        "--classes",
        default=None,
        help="class-name file (folder datasets; default ROOT/classes.txt)",
    )
    parser.add_argument("--tag-file", default=None, help="image_id -> class names (JSON/CSV/npy)")
    parser.add_argument(
        "--allow-skipped",
        action="store_true",
        help="exit 0 even if some images were skipped as bad input",
    )


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--pred", default=None, help="folder of predicted label PNGs named <id>.png")
    add_dataset_args(p)
    p.add_argument("--out", default=None, help="metrics JSON (default: PRED/metrics.json)")
    p.add_argument(
        "--pred-ignore",
        choices=("exclude", "wrong"),
        default="exclude",
        help="predicted 255 pixels: left out (default; pseudo labels) or counted as wrong",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def open_eval_dataset(args: argparse.Namespace) -> SegDataset:
    """The split to score, with masks required and tags not needed."""
    return build_dataset(
        args.dataset,
        args.root,
        args.split,
        tag_file=args.tag_file,
        class_names=args.classes,
        with_masks=True,
        require_labels=False,
    )


def read_prediction(path: Path, dataset: SegDataset) -> np.ndarray:
    """A predicted label PNG as H x W uint8 (BadInputError naming the file if unusable)."""
    from ssrseg.data.base import read_mask
    from ssrseg.viz import palette

    if not path.is_file():
        raise BadInputError(path, "prediction file not found")
    return read_mask(path, dataset.num_classes, palette(dataset.palette_name))


def evaluate_arrays(
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
    num_classes: int,
    pred_ignore: str = "exclude",
) -> dict[str, Any]:
    """Score (image id, prediction H x W, ground truth H x W) triples with one matrix."""
    from ssrseg.metrics import ConfusionMatrix

    cm = ConfusionMatrix(num_classes, pred_ignore=pred_ignore)
    for image_id, pred, gt in pairs:
        if pred.shape != gt.shape:
            raise ValueError(f"{image_id}: prediction {pred.shape} != ground truth {gt.shape}")
        cm.update(pred, gt)
    return cm.compute()


def evaluate_predictions(
    pred_dir: str | os.PathLike[str],
    dataset: SegDataset,
    skip_log: SkipLog,
    pred_ignore: str = "exclude",
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``pred_dir/<id>.png`` against every ground-truth mask of ``dataset``.

    Missing, unreadable or wrongly sized predictions and bad ground truth are logged in
    ``skip_log`` (file named) and left out. Returns :meth:`ConfusionMatrix.compute`'s dict plus
    ``class_names`` (background first), ``dataset``, ``split``, ``pred_dir`` and ``skipped``.
    """
    from ssrseg.metrics import ConfusionMatrix

    pred_root = Path(pred_dir)
    if not pred_root.is_dir():
        raise BadInputError(pred_root, "prediction folder not found")
    cm = ConfusionMatrix(dataset.num_classes, pred_ignore=pred_ignore)
    order: Iterable[int] = range(len(dataset))
    if progress:
        from tqdm import tqdm

        order = tqdm(order, desc=f"evaluate {dataset.name} {dataset.split}", total=len(dataset))
    for index in order:
        image_id = dataset.ids[index]
        try:
            image_id = dataset.checked_id(index)
            gt = dataset.load_mask(index)
            if gt is None:
                raise BadInputError(dataset.list_file, "split has no ground-truth masks", image_id)
            pred_path = pred_root / f"{image_id}.png"
            pred = read_prediction(pred_path, dataset)
            if pred.shape != gt.shape:
                raise BadInputError(
                    pred_path,
                    f"prediction is {pred.shape[1]}x{pred.shape[0]} but the ground truth "
                    f"{dataset.mask_path(image_id)} is {gt.shape[1]}x{gt.shape[0]}",
                )
        except BadInputError as exc:
            skip_log.skip(image_id, exc)
            continue
        cm.update(pred, gt)
    result = cm.compute()
    result.update(
        {
            "class_names": ["background", *dataset.class_names],
            "dataset": dataset.name,
            "split": dataset.split,
            "root": str(dataset.root),
            "pred_dir": str(pred_root),
            "skipped": [{"id": i, "error": m} for i, m in skip_log.skipped],
        }
    )
    return result


def print_result(result: dict[str, Any], stream: TextIO | None = None) -> None:
    """Print the per-class table of ``result`` (which must hold ``class_names``)."""
    from ssrseg.metrics import format_table

    out = stream if stream is not None else sys.stdout
    print(format_table(result, result["class_names"]), file=out)
    print(f"confusion ratio: {result['confusion_ratio_definition']}", file=out)


def write_result_json(path: str | os.PathLike[str], result: dict[str, Any]) -> Path:
    """Write ``result`` as strict JSON (NaN -> null), atomically."""
    from ssrseg.config import atomic_write_text
    from ssrseg.metrics import json_safe

    atomic_write_text(path, json.dumps(json_safe(result), indent=1) + "\n")
    return Path(path)


def run(args: argparse.Namespace) -> int:
    if args.pred is None:
        print("ssrseg evaluate: --pred DIR is required", file=sys.stderr)
        return 2
    skip_log = SkipLog()
    try:
        dataset = open_eval_dataset(args)
        result = evaluate_predictions(
            args.pred, dataset, skip_log, args.pred_ignore, progress=not args.quiet
        )
    except BadInputError as exc:
        print(f"ssrseg evaluate: {exc}", file=sys.stderr)
        return 2
    skip_log.report()
    if result["images"] == 0:
        print("ssrseg evaluate: no image could be scored", file=sys.stderr)
        return 2
    print_result(result)
    out = Path(args.out) if args.out else Path(args.pred) / "metrics.json"
    write_result_json(out, result)
    print(f"wrote {out}")
    return skip_log.exit_code(args.allow_skipped)
