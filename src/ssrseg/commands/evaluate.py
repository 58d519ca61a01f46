"""``ssrseg evaluate``: score predicted label PNGs against a dataset split's ground truth.

``ssrseg evaluate --pred DIR --dataset voc --root R --split val`` reads ``DIR/<id>.png`` (palette
or plain index PNGs, 0 background, c + 1, 255 ignore) for every id of the split, accumulates one
confusion matrix (:mod:`ssrseg.metrics`), prints a per-class table and writes JSON.

``ssrseg evaluate --checkpoint CKPT`` predicts the split and scores it; under ``torchrun`` every
rank (and with ``--shard K/N`` every process) predicts its share, the confusion matrices are
summed exactly, and the JSON equals one process's. Each ``--shard`` process writes
``<out>.shard-K-of-N.json`` holding its counts; ``ssrseg evaluate --merge FILES... --out M``
sums them into the JSON one process would have written.

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
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from ssrseg.commands.common import add_dataset_args as common_dataset_args
from ssrseg.commands.common import (
    add_parallel_args,
    apply_dataset_args,
    crf_workers,
    non_negative_int,
    positive_float,
    refuse_overlap,
    require_crf,
    resolve_device,
    resolve_split,
    run_folder,
    with_crf_labels,
    with_overrides,
)
from ssrseg.commands.predict import checkpoint_folder, infer_overrides, load_segmenter

if TYPE_CHECKING:
    from ssrseg.data import SegDataset, SkipLog

# lazy: `ssrseg --help` imports every command module, so the library (and torch) is imported
# inside the functions that run a command.


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """The shared dataset options (:func:`ssrseg.commands.common.add_dataset_args`),
    ``--config`` to take them from a preset, and ``--allow-skipped``."""
    common_dataset_args(
        parser,
        "split to score (default: the prediction folder's own split, else data.val_split; "
        "folder datasets: all)",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="YAML preset whose data.* choose the dataset (default: the checkpoint's config, "
        "or the config recorded in PRED/run.json, else VOC at data/VOCdevkit/VOC2012)",
    )
    parser.add_argument(
        "--allow-skipped",
        action="store_true",
        help="exit 0 even if some images were skipped as bad input",
    )


def resolve_eval_args(args: argparse.Namespace) -> None:
    """Fill the dataset options left unset, from (first found) ``--config``, the checkpoint's
    config (checkpoint mode), the prediction folder's run record (its config and split), or
    the defaults. Tags are never needed to score, so ``--tag-file`` is not taken from them."""
    from ssrseg.config import SSRConfig, config_from_dict, load_config
    from ssrseg.runrecord import read_record

    cfg, split = SSRConfig(), None
    checkpoint = getattr(args, "checkpoint", None)
    if getattr(args, "config", None):
        cfg = load_config(args.config)
    elif checkpoint:
        from ssrseg.engine.checkpoint import read_config, resolve_checkpoint

        if Path(checkpoint_folder(checkpoint)).exists():
            cfg = read_config(resolve_checkpoint(checkpoint_folder(checkpoint)))
    elif args.pred and Path(args.pred).is_dir():
        record = read_record(args.pred)
        if record and record.get("config"):
            cfg = config_from_dict(record["config"])
            split = record.get("options", {}).get("split")
    tag_file = args.tag_file
    cfg = with_overrides(cfg, list(getattr(args, "overrides", None) or []))
    cfg = apply_dataset_args(cfg, args)
    args.dataset, args.root, args.tag_file = cfg.data.dataset, cfg.data.root, tag_file
    args.split = args.split or split or resolve_split(None, cfg, "val")


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
    p.add_argument(
        "--no-progress", "--quiet", dest="quiet", action="store_true", help="no progress bar"
    )
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="SHARD_JSON",
        help="sum the metrics files of `evaluate --checkpoint --shard K/N` (all N shards) "
        "into --out: the numbers one process gives",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. data.root=... or (with --checkpoint) infer.scales=[1.0]",
    )
    add_checkpoint_args(p)
    add_parallel_args(p)
    return p


def open_eval_dataset(args: argparse.Namespace) -> SegDataset:
    """The split to score, with masks required and tags not needed (dataset options left
    unset are filled by :func:`resolve_eval_args`)."""
    from ssrseg.data import build_dataset

    if args.dataset is None or args.root is None or args.split is None:
        resolve_eval_args(args)
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
    from ssrseg.data import BadInputError
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
    from ssrseg.data import BadInputError
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


def eval_options(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The command-line choices that shape the scores (for the result's run record)."""
    options = {
        "command": "evaluate",
        "dataset": args.dataset,
        "root": str(args.root),
        "split": args.split,
        "classes": args.classes,
        "tag_file": args.tag_file,
        "pred_ignore": args.pred_ignore,
    }
    return {**options, **extra}


def refuse_eval_overlap(args: argparse.Namespace) -> None:
    """Before any work: what evaluate writes never goes into (or around) what it reads."""
    files = [("tag file", args.tag_file), ("class file", args.classes)]
    folders = [
        ("dataset folder (data.root)", args.root),
        ("prediction folder (--pred)", args.pred),
        ("checkpoint's run folder", run_folder(getattr(args, "checkpoint", None))),
    ]
    for option in ("save_pred", "export_voc_test"):
        if getattr(args, option, None):
            refuse_overlap(getattr(args, option), "--" + option.replace("_", "-"), folders, files)
    if args.out:  # a metrics file: beside the predictions is fine, never in the dataset
        refuse_overlap(args.out, "--out", folders[:1], files)


def run(args: argparse.Namespace) -> int:
    from ssrseg.data import SkipLog

    if getattr(args, "merge", None):
        return run_merge(args)
    resolve_eval_args(args)
    refuse_eval_overlap(args)
    if getattr(args, "checkpoint", None):
        return run_checkpoint(args)
    if args.pred is None:
        print("ssrseg evaluate: --pred DIR or --checkpoint CKPT is required", file=sys.stderr)
        return 2
    skip_log = SkipLog()
    dataset = open_eval_dataset(args)
    result = evaluate_predictions(
        args.pred, dataset, skip_log, args.pred_ignore, progress=not args.quiet
    )
    skip_log.report()
    out = Path(args.out) if args.out else Path(args.pred) / "metrics.json"
    if result["images"] == 0:
        # an older result must not stand for this run
        stale = out.is_file()
        out.unlink(missing_ok=True)
        print(
            "ssrseg evaluate: no image could be scored"
            + (f"; removed the older {out}" if stale else ""),
            file=sys.stderr,
        )
        return 2
    from ssrseg.runrecord import make_record

    result["record"] = make_record(None, eval_options(args, pred=str(Path(args.pred).resolve())))
    print_result(result)
    write_result_json(out, result)
    print(f"wrote {out}")
    return skip_log.exit_code(args.allow_skipped)


# ----------------------------------------------------------------------------------------------
# Checkpoint mode: predict the split with a trained model and score it in one go (inference
# engineer; the prediction itself is ssrseg.engine.infer).


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """--checkpoint and its inference options."""
    g = parser.add_argument_group("checkpoint mode (predict the split, then score it)")
    g.add_argument("--checkpoint", default=None, help="checkpoint or run folder (or release name)")
    g.add_argument(
        "--crf",
        choices=("auto", "off", "on", "both"),
        default="auto",
        help="score without / with dense CRF / both from one forward (auto: both when "
        "pydensecrf2 is installed, else off)",
    )
    g.add_argument(
        "--scales", type=positive_float, nargs="+", help="inference scales (default 1.0 0.75)"
    )
    g.add_argument("--no-flip", action="store_true", help="no horizontal-flip averaging")
    g.add_argument(
        "--long-side", type=non_negative_int, help="resize the long side first (0: keep size)"
    )
    g.add_argument("--device", default="auto", help="cpu, cuda, ... (default: auto)")
    g.add_argument("--save-pred", default=None, help="also write the predicted PNGs here")
    g.add_argument(
        "--export-voc-test",
        default=None,
        metavar="DIR",
        help="also predict the test split into DIR/results/VOC2012/Segmentation/"
        "comp6_test_cls/ and pack DIR/results.tar.gz for the evaluation server",
    )


def crf_modes(choice: str) -> tuple[bool, ...]:
    """CRF settings to score; 'on'/'both' raise the install hint when pydensecrf2 is missing."""
    from ssrseg.engine.infer import check_crf

    if choice == "off":
        return (False,)
    if choice == "auto":
        try:
            check_crf()
        except RuntimeError as exc:
            print(f"note: scoring without CRF only ({exc})", file=sys.stderr)
            return (False,)
        return (False, True)
    require_crf()
    return (True,) if choice == "on" else (False, True)


def shard_path(out: Path, shard: Any) -> Path:
    """``metrics.json`` -> ``metrics.shard-K-of-N.json`` (unchanged for the whole list)."""
    return out if shard.whole else out.with_name(f"{out.stem}.{shard.tag()}{out.suffix}")


def sum_matrices(matrices: dict[bool, Any], ctx: Any) -> None:
    """Sum every rank's counts into ``matrices`` (exact: integers, never averaged scores)."""
    from ssrseg.engine.distributed import sum_arrays

    for cm in matrices.values():
        cm.hist, cm.pred_ignored, images = sum_arrays(
            [cm.hist, cm.pred_ignored, np.asarray([cm.images])], ctx
        )
        cm.images = int(images[0])


def run_checkpoint(args: argparse.Namespace) -> int:
    """``ssrseg evaluate --checkpoint CKPT``: metrics table(s) and JSON, optional test export.
    Data-parallel under torchrun / ``--shard`` (module docstring)."""
    import dataclasses

    from ssrseg.config import SSRConfig, config_to_dict
    from ssrseg.data import SkipLog, build_dataset
    from ssrseg.engine.checkpoint import check_compatible, checkpoint_identity
    from ssrseg.engine.distributed import (
        barrier,
        gather_skipped,
        guard_image,
        main_then_all,
        share_list,
        stage_context,
        stage_device,
    )
    from ssrseg.engine.export import archive_voc_results, export_voc_test, missing_voc_test
    from ssrseg.engine.infer import evaluate_dataset
    from ssrseg.engine.shard import pixel_costs
    from ssrseg.runrecord import make_record, prepare_output

    view = stage_context(args.shard)
    skip_log = SkipLog()
    export_only = args.export_voc_test is not None and args.split == "test"
    folder = checkpoint_folder(args.checkpoint)
    dataset = None if export_only else open_eval_dataset(args)
    if Path(folder).exists():
        # before the model is loaded: the checkpoint must predict the dataset's classes
        check_compatible(folder, None, dataset.num_classes if dataset else None)
    modes = crf_modes(args.crf)
    seg = load_segmenter(folder, stage_device(resolve_device(args.device), view.dist))
    if args.overrides:  # infer.* / crf.* on top of the checkpoint's own
        base = dataclasses.replace(seg.config or SSRConfig(), infer=seg.infer, crf=seg.crf_cfg)
        changed = with_overrides(base, list(args.overrides))
        seg.infer, seg.crf_cfg = changed.infer, changed.crf
    seg.infer = infer_overrides(args, seg.infer)
    seg.crf_cfg = with_crf_labels(seg.crf_cfg, args)
    workers = crf_workers(args, view.dist.local_world_size)

    def guard(image_id: str) -> Any:
        return guard_image(view, image_id)

    if dataset is not None:
        if dataset.num_classes != seg.num_classes:
            print(
                f"ssrseg evaluate: the checkpoint predicts {seg.num_classes} classes but "
                f"{dataset.name} has {dataset.num_classes}",
                file=sys.stderr,
            )
            return 2
        options = eval_options(args, checkpoint=checkpoint_identity(folder))
        run_cfg = (
            dataclasses.replace(seg.config, infer=seg.infer, crf=seg.crf_cfg)
            if seg.config
            else None
        )
        if args.save_pred:
            # always rewritten in full: the record says what the PNGs come from
            main_then_all(
                view,
                lambda: prepare_output(
                    args.save_pred, run_cfg, options, overwrite=True, command="ssrseg evaluate"
                ),
            )
        ids = list(dataset.ids)
        share = share_list(
            list(range(len(dataset))), view, pixel_costs(lambda i: dataset.image_path(ids[i]))
        )
        matrices = evaluate_dataset(
            seg,
            dataset,
            modes,
            skip_log=skip_log,
            indices=share,
            progress=not args.quiet,
            pred_dir=args.save_pred,
            crf_workers=workers,
            guard=guard,
        )
        sum_matrices(matrices, view.dist)
        skipped = gather_skipped(skip_log.skipped, ids, view.dist)
        summary: dict[str, Any] = {
            "record": make_record(run_cfg, options),
            "checkpoint": str(args.checkpoint),
            "dataset": dataset.name,
            "split": dataset.split,
            "root": str(dataset.root),
            "infer": config_to_dict(seg.infer),
            "crf_params": config_to_dict(seg.crf_cfg),
        }
        counts: dict[str, Any] = {}
        for mode, cm in matrices.items():
            result = cm.compute()
            result["class_names"] = ["background", *dataset.class_names]
            key = "crf" if mode else "no_crf"
            if view.is_main:
                part = f", {view.label} only" if not view.shard.whole else ""
                print(
                    f"== {dataset.name} {dataset.split}, {'with' if mode else 'without'} "
                    f"CRF{part} =="
                )
                print_result(result)
            summary[key] = result
            counts[key] = {
                "hist": cm.hist.tolist(),
                "pred_ignored": cm.pred_ignored.tolist(),
                "images": cm.images,
            }
        summary["skipped"] = [{"id": i, "error": m} for i, m in skipped]
        if args.out:
            out = Path(args.out)
        else:
            base = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(".")
            out = base / f"metrics_{dataset.name}_{dataset.split}.json"
        if not view.shard.whole:
            out = shard_path(out, view.shard)
            position = {image_id: i for i, image_id in enumerate(ids)}
            summary[SHARD_KEY] = {
                "index": view.shard.index,
                "count": view.shard.count,
                "counts": counts,
                "skipped_positions": [position.get(i, len(ids)) for i, _ in skipped],
            }
        if view.is_main:
            write_result_json(out, summary)
            print(f"wrote {out}")
    if args.export_voc_test is not None:
        test = build_dataset(
            args.dataset,
            args.root,
            "test",
            class_names=args.classes,
            with_masks=False,
            require_labels=False,
        )
        all_test = list(test.ids)
        test_ids = share_list(all_test, view, pixel_costs(lambda i: test.image_path(all_test[i])))
        export_voc_test(
            seg,
            test_ids,
            test.image_path,
            args.export_voc_test,
            crf=True in modes,
            skip_log=skip_log,
            progress=not args.quiet,
            crf_workers=workers,
            guard=guard,
        )
        barrier(view.dist)
        missing = missing_voc_test(args.export_voc_test, test.ids)
        if not view.is_main:
            pass
        elif missing and not view.shard.whole:
            print(
                f"VOC test export: {len(missing)} image(s) are left to the other shards; the "
                "shard that finishes last packs results.tar.gz"
            )
        elif missing:
            print(f"VOC test export is missing {len(missing)} image(s)", file=sys.stderr)
        else:
            print(f"wrote {archive_voc_results(args.export_voc_test)} (upload this file)")
    if not view.is_main:
        return 0
    skip_log.report()
    return skip_log.exit_code(args.allow_skipped)


SHARD_KEY = "shard"  # the part of a --shard metrics file that --merge sums and then drops


class MergeError(ValueError):
    """Shard metrics files that cannot be merged (the message names the file and the fix)."""


def merge_shard_results(parts: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """The metrics one process gives, from the JSON of every ``--shard K/N`` process: the
    confusion matrices summed, the scores computed again from the sums, the skipped images
    in dataset order. Raises :class:`MergeError` naming what is missing or differs."""
    from ssrseg.metrics import ConfusionMatrix

    for path, data in parts:
        if SHARD_KEY not in data:
            raise MergeError(f"{path}: not a shard metrics file (written with --shard K/N)")
    count = parts[0][1][SHARD_KEY]["count"]
    seen = sorted(data[SHARD_KEY]["index"] for _, data in parts)
    if seen != list(range(count)) or any(d[SHARD_KEY]["count"] != count for _, d in parts):
        missing = sorted(set(range(count)) - set(seen))
        raise MergeError(
            f"--merge needs each of the {count} shards exactly once; got shards {seen}"
            + (f" (missing {missing})" if missing else "")
        )
    first_path, first = parts[0]
    fixed = [k for k in first if k not in (SHARD_KEY, "no_crf", "crf", "skipped")]
    for path, data in parts[1:]:
        for key in fixed:
            if data.get(key) != first.get(key):
                raise MergeError(f"{path}: {key!r} differs from {first_path}; not the same run")
    merged = {k: v for k, v in first.items() if k != SHARD_KEY}
    for key in first[SHARD_KEY]["counts"]:
        cm = ConfusionMatrix(len(first[key]["class_names"]))
        for _, data in parts:
            got = data[SHARD_KEY]["counts"][key]
            cm.hist += np.asarray(got["hist"], dtype=np.int64)
            cm.pred_ignored += np.asarray(got["pred_ignored"], dtype=np.int64)
            cm.images += int(got["images"])
        result = cm.compute()
        result["class_names"] = first[key]["class_names"]
        merged[key] = result
    skipped = [
        (pos, item)
        for _, data in parts
        for pos, item in zip(data[SHARD_KEY]["skipped_positions"], data["skipped"], strict=True)
    ]
    merged["skipped"] = [item for _, item in sorted(skipped, key=lambda pair: pair[0])]
    return merged


def run_merge(args: argparse.Namespace) -> int:
    """``ssrseg evaluate --merge SHARD_JSON... --out M``."""
    parts = []
    for name in args.merge:
        path = Path(name)
        try:
            parts.append((path, json.loads(path.read_text())))
        except (OSError, ValueError) as exc:
            raise MergeError(f"{path}: cannot read the shard metrics ({exc})") from None
    if args.out is None:
        raise MergeError("--merge needs --out (where the merged metrics JSON goes)")
    merged = merge_shard_results(parts)
    for key in ("no_crf", "crf"):
        if key in merged:
            print(f"== {merged['dataset']} {merged['split']}, {key} ==")
            print_result(merged[key])
    out = write_result_json(args.out, merged)
    print(f"wrote {out}")
    return 0
