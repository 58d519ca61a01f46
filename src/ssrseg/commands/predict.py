"""``ssrseg predict``: segment image files, folders or list files with a trained checkpoint.

Writes ``OUT/<name>.png`` (palette PNG: 0 background, c + 1 class c), optionally
``OUT/overlays/<name>.jpg`` and ``OUT/panels/<name>.png``; images this job already wrote (their
mask carries the job's stamp) are skipped (resumable); unreadable images are skipped and listed
at the end. ``--out`` may not be or hold an input, nor be, hold or lie inside an input folder.
Under ``torchrun`` every rank (and with ``--shard K/N`` every process) segments its share of the
inputs (balanced by pixel count); the files equal one process's. The CRF runs in
``--crf-workers`` processes while the next batch's forward runs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssrseg.commands.common import (
    add_parallel_args,
    crf_workers,
    non_negative_int,
    positive_float,
    positive_int,
    refuse_overlap,
    require_crf,
    resolve_device,
    run_folder,
    split_overrides,
    with_crf_labels,
    with_overrides,
)
from ssrseg.errors import BadInputError

# lazy: `ssrseg --help` imports every command module, so the library (and torch) is imported
# inside the functions that run a command.

EXIT_USAGE = 2  # bad command line, checkpoint or input list


@dataclass(frozen=True)
class Item:
    """One image to segment: its source file and the output name (no extension)."""

    path: Path
    name: str


class InputListError(ValueError):
    """The inputs cannot be turned into a list of images (message names the file)."""


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    description = (
        "Segment images with a trained checkpoint. Writes OUT/<name>.png (palette PNG: 0 "
        "background, c + 1 class c), optionally OUT/overlays/<name>.jpg and "
        "OUT/panels/<name>.png. Images this job already wrote are skipped (resumable); unreadable "
        "images are skipped and listed at the end (exit 3 unless --allow-skipped)."
    )
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=description)
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively) or .txt list files (one image path "
        "per line, relative to the list file's folder); KEY=VALUE config overrides (infer.*, "
        "crf.*) may be given among them, e.g. infer.scales=[1.0]",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint folder, run folder (its last checkpoint) or released model name",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overlays", action="store_true", help="also write OUT/overlays/<name>.jpg")
    p.add_argument("--panels", action="store_true", help="also write OUT/panels/<name>.png")
    p.add_argument(
        "--crf",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="dense CRF post-processing (default: the checkpoint's infer.crf)",
    )
    p.add_argument(
        "--scales", type=positive_float, nargs="+", help="inference scales (default 1.0 0.75)"
    )
    p.add_argument("--no-flip", action="store_true", help="no horizontal-flip averaging")
    p.add_argument(
        "--long-side", type=non_negative_int, help="resize the long side first (0: keep size)"
    )
    p.add_argument(
        "--batch-size", type=positive_int, help="images per forward (same-size images only)"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument(
        "--overwrite", action="store_true", help="redo every image, also those this job wrote"
    )
    p.add_argument(
        "--allow-skipped", action="store_true", help="exit 0 even if bad images were skipped"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_parallel_args(p)
    return p


# ------------------------------------------------------------------------------- inputs


def _is_image(path: Path) -> bool:
    from ssrseg.data.base import IMAGE_EXTENSIONS

    return path.suffix.lower() in {e.lower() for e in IMAGE_EXTENSIONS}


def collect_inputs(inputs: list[str]) -> list[Item]:
    """Expand files, folders (recursive; output names keep the sub-folders) and ``.txt`` list
    files into items. Paths that do not exist stay in the list: reading them fails later and
    they are reported as skipped. Raises :class:`InputListError` if two inputs would write the
    same output file."""
    items: list[Item] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_image(p))
            items += [Item(p, p.relative_to(path).with_suffix("").as_posix()) for p in found]
        elif path.suffix.lower() == ".txt" and path.is_file():
            try:
                lines = path.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise InputListError(f"{path}: cannot read the list file ({exc})") from None
            for line in lines:
                entry = line.strip()
                if not entry or entry.startswith("#"):
                    continue
                target = Path(entry) if Path(entry).is_absolute() else path.parent / entry
                items.append(Item(target, target.stem))
        else:
            items.append(Item(path, path.stem))
    unique: dict[Path, Item] = {}
    for item in items:
        unique.setdefault(item.path.resolve(), item)  # the same file named twice runs once
    by_name: dict[str, list[Path]] = {}
    for item in unique.values():
        by_name.setdefault(item.name, []).append(item.path)
    clashes = {n: ps for n, ps in by_name.items() if len(ps) > 1}
    if clashes:
        lines = [f"  {n}.png <- {', '.join(str(p) for p in ps)}" for n, ps in clashes.items()]
        raise InputListError(
            "several inputs would write the same output file; rename them or pass their "
            "folder instead:\n" + "\n".join(lines[:20])
        )
    return list(unique.values())


# ------------------------------------------------------------------------------- outputs


def output_paths(out: Path, name: str, overlays: bool, panels: bool) -> dict[str, Path]:
    """The files one image produces."""
    paths = {"mask": out / f"{name}.png"}
    if overlays:
        paths["overlay"] = out / "overlays" / f"{name}.jpg"
    if panels:
        paths["panel"] = out / "panels" / f"{name}.png"
    return paths


def blend(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``H x W x 3`` uint8 image and colour map -> their mix (``alpha`` of the colours)."""
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(mixed.round(), 0, 255).astype(np.uint8)


def save_rgb(path: Path, image: np.ndarray) -> None:
    """Write an RGB image atomically (format from the suffix)."""
    from PIL import Image

    from ssrseg.atomic import atomic_path

    options = {"quality": 92} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(
            tmp, format=Image.registered_extensions()[path.suffix], **options
        )


def write_outputs(
    paths: dict[str, Path],
    image: np.ndarray,
    mask: np.ndarray,
    palette: np.ndarray,
    text: dict[str, str] | None = None,
) -> None:
    """Mask PNG (last, so its presence means the image is done; ``text``: its PNG text chunks,
    the job stamp), overlay and panel."""
    from ssrseg.viz import save_label_png, save_panel

    colours = palette[mask]
    if "overlay" in paths:
        save_rgb(paths["overlay"], blend(image, colours))
    if "panel" in paths:
        paths["panel"].parent.mkdir(parents=True, exist_ok=True)
        save_panel(
            paths["panel"],
            [("image", image), ("prediction", colours), ("overlay", blend(image, colours))],
        )
    save_label_png(paths["mask"], mask, palette, text)


# ------------------------------------------------------------------------------- run


def infer_overrides(args: argparse.Namespace, base: Any) -> Any:
    """The checkpoint's InferConfig with the command-line choices applied."""
    import dataclasses

    from ssrseg.config import ConfigError

    changes: dict[str, Any] = {}
    scales = getattr(args, "scales", None)
    if scales:
        if any(s <= 0 for s in scales):
            raise ConfigError(f"--scales must be positive, got {scales}")
        changes["scales"] = tuple(scales)
    if getattr(args, "no_flip", False):
        changes["flip"] = False
    if getattr(args, "long_side", None) is not None:
        changes["long_side"] = args.long_side
    batch_size = getattr(args, "batch_size", None)
    if batch_size is not None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        changes["batch_size"] = batch_size
    if isinstance(getattr(args, "crf", None), bool):
        changes["crf"] = args.crf
    return dataclasses.replace(base, **changes)


def checkpoint_folder(checkpoint: str) -> str:
    """A checkpoint / run folder as given, or the local folder of a released model name."""
    from ssrseg.engine.infer import RELEASES, resolve_release

    if not Path(checkpoint).exists() and checkpoint in RELEASES:
        return resolve_release(checkpoint)
    return checkpoint


def describe_checkpoint(checkpoint: str) -> tuple[Any, dict[str, Any]]:
    """(saved SSRConfig, identity for the run record) of a checkpoint, without loading it."""
    from ssrseg.engine.checkpoint import checkpoint_identity, read_config, resolve_checkpoint

    folder = checkpoint_folder(checkpoint)
    return read_config(resolve_checkpoint(folder)), checkpoint_identity(folder)


def load_segmenter(checkpoint: str, device: str) -> Any:
    """A Segmenter from a checkpoint/run folder, or from a released name if no such folder."""
    from ssrseg.engine.infer import Segmenter

    return Segmenter.from_checkpoint(checkpoint_folder(checkpoint), device=device)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from tqdm import tqdm

    from ssrseg.data.base import SkipLog, read_image
    from ssrseg.engine import distributed as dp
    from ssrseg.engine.crf_pool import OrderedPool, crf_mask
    from ssrseg.engine.shard import pixel_costs
    from ssrseg.runrecord import STAMP_KEY, check_output, job_stamp, prepare_output, written_by

    view = dp.stage_context(getattr(args, "shard", None))
    out = Path(args.out)
    args.inputs, overrides = split_overrides(list(args.inputs))
    if not args.inputs:
        raise InputListError("no INPUT given (only KEY=VALUE overrides)")
    items = collect_inputs(args.inputs)
    if not items:
        raise InputListError(f"no images found in {' '.join(args.inputs)}")
    # before any work: the outputs must not land among the inputs (or replace them)
    given = [Path(raw) for raw in args.inputs]
    folders: list[tuple[str, Path | None]] = [("input folder", p) for p in given if p.is_dir()]
    folders.append(("checkpoint's run folder", run_folder(args.checkpoint)))
    files = [("input list", p) for p in given if p.is_file() and p.suffix.lower() == ".txt"]
    files += [("input image", it.path) for it in items]  # --out may not hold any of them
    refuse_overlap(out, "--out", folders, files)
    # the record (checkpoint config with this command's inference settings) is checked
    # before the model is loaded
    saved, identity = describe_checkpoint(args.checkpoint)
    # before any work: overrides checked (and applied) first, then the options on top
    saved = with_overrides(saved, overrides, ("infer", "crf"), "ssrseg predict")
    cfg = dataclasses.replace(saved, infer=infer_overrides(args, saved.infer))
    cfg = with_crf_labels(cfg, args)
    if cfg.infer.crf:
        require_crf(cfg.crf)  # fail now, not after the first batch
    options = {"command": "predict", "checkpoint": identity}
    name = "ssrseg predict"
    # every rank checks; the main rank writes the record; the stamp is the record's (the same
    # on every rank)
    record = check_output(out, cfg, options, overwrite=args.overwrite, command=name)
    segmenter = load_segmenter(
        args.checkpoint, dp.stage_device(resolve_device(args.device), view.dist)
    )
    segmenter.infer, segmenter.crf_cfg = cfg.infer, cfg.crf
    dp.main_then_all(
        view, lambda: prepare_output(out, cfg, options, overwrite=args.overwrite, command=name)
    )
    stamp = job_stamp(record)

    def finished(paths: dict[str, Path]) -> bool:
        # the mask, written last, carries the job's stamp: "done" is "written by this job"
        return written_by(paths["mask"], stamp) and all(v.is_file() for v in paths.values())

    mine = dp.share_list(items, view, pixel_costs(lambda i: items[i].path))
    jobs = [(it, output_paths(out, it.name, args.overlays, args.panels)) for it in mine]
    todo = [(it, p) for it, p in jobs if args.overwrite or not finished(p)]
    if len(todo) < len(jobs):
        print(f"{len(jobs) - len(todo)} of {len(jobs)} images already done, skipping them")
    skip_log = SkipLog()
    batch: list[tuple[Item, np.ndarray, dict[str, Path]]] = []
    use_crf = bool(segmenter.infer.crf)

    def write(results: Any) -> None:
        for (item, image, paths), mask in results:
            with dp.guard_image(view, str(item.path)):
                write_outputs(paths, image, mask, segmenter.palette, {STAMP_KEY: stamp})

    workers = crf_workers(args, view.dist.local_world_size)
    with dp.guard_image(view), OrderedPool[Any](workers) as pool:

        def flush() -> None:
            with dp.guard_image(view, ", ".join(str(it.path) for it, _, _ in batch)):
                found = segmenter.predict_batch(
                    [image for _, image, _ in batch], return_probs=True, crf=False
                )
            for key, (mask, probs) in zip(batch, found, strict=True):
                if use_crf:
                    write(pool.submit(key, crf_mask, key[1], probs, segmenter.crf_cfg))
                else:
                    write(pool.put(key, mask))
            batch.clear()

        for item, paths in tqdm(todo, desc="predict", unit="img", disable=args.no_progress):
            notes: list[str] = []
            try:
                image = read_image(item.path, notes)
            except BadInputError as exc:
                skip_log.skip(str(item.path), exc)
                continue
            for note in notes:  # listed at the end with the skipped files
                skip_log.note(str(item.path), note)
            batch.append((item, image, paths))
            if len(batch) >= segmenter.infer.batch_size:
                flush()
        if batch:
            flush()
        write(pool.drain())
    done = len(todo) - len(skip_log)
    print(f"wrote {done} prediction(s) to {out}" + (f" ({view.label})" if view.label else ""))
    order = [str(it.path) for it in items]
    skip_log.skipped = dp.gather_skipped(skip_log.skipped, order, view.dist)
    skip_log.notes = dp.gather_skipped(skip_log.notes, order, view.dist)  # conversion notes
    dp.barrier(view.dist)
    if not view.is_main:
        return 0
    skip_log.report()
    return skip_log.exit_code(args.allow_skipped)
