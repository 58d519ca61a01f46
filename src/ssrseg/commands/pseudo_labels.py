"""``ssrseg pseudo-labels``: write pseudo-label PNGs for a dataset split.

Each image runs through the :class:`~ssrseg.pseudo.labeler.PseudoLabeler` (Grad-CAM, affinity
refinement with the configured mask, background score, PAR, argmax) at its size rounded up to a
multiple of the patch size (CLIP-ES); the scores are resized back to the image and written as
``OUT/<id>.png`` (palette PNG: 0 background, c + 1 class c, 255 ignore). Finished images are
skipped (resumable), files are written atomically, the resolved config is saved as
``OUT/config.yaml``, ``--eval`` prints the metrics table against the ground-truth masks.
While one image runs, a background thread reads and resizes the next ones and their SLIC
superpixels (``affinity.mask=sgc``) are computed in ``--superpixel-workers`` processes (0: on
that thread); the outputs are the same as without it (``--no-prefetch``).
Under ``torchrun`` every rank (and with ``--shard K/N`` every process) takes its share of the
images (balanced by pixel count); the files equal one process's, ``--eval`` sums the confusion
matrices of all ranks. ``--crf`` runs in ``--crf-workers`` processes while the next image runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssrseg.commands.common import (
    add_dataset_args,
    add_job_args,
    add_parallel_args,
    apply_dataset_args,
    command_parser,
    crf_workers,
    input_paths,
    non_negative_int,
    plain_doc,
    positive_int,
    refuse_overlap,
    require_crf,
    resolve_device,
    resolve_split,
    superpixel_workers,
    with_crf_labels,
)

if TYPE_CHECKING:
    import torch

    from ssrseg.commands.prefetch import PrefetchedDataset, Prepared
    from ssrseg.config import SSRConfig
    from ssrseg.data.base import Sample, SegDataset, SkipLog
    from ssrseg.engine.distributed import StageContext
    from ssrseg.engine.superpixel_pool import SuperpixelPool
    from ssrseg.pseudo.labeler import PseudoLabeler, PseudoLabelOutput

# lazy: `ssrseg --help` imports every command module, so the library (and torch) is imported
# inside the functions that run a command.

EXIT_USAGE = 2


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``cams`` and ``pseudo-labels``."""
    p.add_argument("--config", help="YAML preset (configs/voc.yaml ...); defaults if omitted")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--eval", action="store_true", help="print metrics against the GT masks")
    p.add_argument(
        "--overlays", type=non_negative_int, default=0, metavar="N", help="figures for N images"
    )
    p.add_argument(
        "--checkpoint",
        help="training checkpoint whose CMPA heads give projected-space CAMs (cam.projected)",
    )
    p.add_argument(
        "--long-side",
        type=non_negative_int,
        default=1024,
        help="shrink images whose long side exceeds this first (0: never; default 1024; VOC and "
        "COCO images are smaller, so they run at their own size)",
    )
    p.add_argument("--limit", type=positive_int, help="only the first N images of the split")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    add_job_args(p, "redo every image, also those this job finished (and a folder made with "
                 "other settings)")  # fmt: skip
    ahead = p.add_mutually_exclusive_group()
    ahead.add_argument(
        "--no-prefetch",
        action="store_true",
        help="read, resize and SLIC each image in the main thread just before it runs, instead "
        "of the next image on a background thread while the current one runs (same outputs)",
    )
    ahead.add_argument(
        "--superpixel-workers",
        type=non_negative_int,
        default=None,
        metavar="W",
        help="processes computing the SLIC superpixels (affinity.mask=sgc) of the next 2 W "
        "images while the current one runs (default: this process's cores split between the "
        "ranks on this machine, an eighth of them with --crf; 0: one background thread; same "
        "outputs)",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. sgc.theta=0.6"
    )
    add_dataset_args(p, "split to process (default: data.train_split; folder datasets: all)")


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = command_parser(sub, name, help_text, plain_doc(__doc__))
    add_common_arguments(p)
    p.add_argument(
        "--crf",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="dense CRF on the pseudo-label scores (needs the 'crf' extra)",
    )
    add_parallel_args(p)
    return p


# ------------------------------------------------------------------------------- shared


@dataclass
class Job:
    """What both commands set up: config, dataset, labeller, CMPA heads, device."""

    cfg: SSRConfig
    dataset: SegDataset
    labeler: PseudoLabeler
    cmpa: Any
    device: torch.device
    out: Path
    long_side: int
    view: StageContext  # this process's share (torchrun rank and/or --shard)


def setup_job(args: argparse.Namespace, command: str, options: dict[str, Any] | None = None) -> Job:
    """Config (+ overrides), dataset split, labeller and optional CMPA heads; checks the output
    folder's run record (:mod:`ssrseg.runrecord`) before anything heavy is loaded.

    ``command`` names the job in the record; ``options`` adds command-specific options that
    shape the outputs (e.g. ``--crf``, ``--kind``).
    """
    import dataclasses

    import torch

    from ssrseg.cam.prompts import check_prompt_classes, prompts_from_config
    from ssrseg.config import load_config
    from ssrseg.data import build_dataset
    from ssrseg.engine.distributed import main_then_all, stage_context, stage_device
    from ssrseg.pseudo.labeler import build_pseudo_labeler
    from ssrseg.runrecord import check_output, prepare_output

    view = stage_context(getattr(args, "shard", None))
    cfg = apply_dataset_args(load_config(args.config, list(args.overrides)), args)
    cfg = with_crf_labels(cfg, args)
    device = torch.device(stage_device(resolve_device(args.device), view.dist))
    # CAMs come from the CMPA-projected space only when a checkpoint gives trained heads;
    # the record says what was actually used
    projected = bool(args.checkpoint)
    if cfg.cam.projected and not projected:
        print(
            "note: cam.projected is true but no --checkpoint gives CMPA heads: raw-CLIP CAMs "
            "are used (recorded as cam.projected: false)",
            file=sys.stderr,
        )
    cfg = dataclasses.replace(cfg, cam=dataclasses.replace(cfg.cam, projected=projected))
    refuse_overlap(args.out, "--out", *input_paths(cfg, args))
    split = resolve_split(args.split, cfg, "train")
    dataset = build_dataset(
        cfg.data.dataset, cfg.data.root, split, cfg.data.tag_file, class_names=args.classes
    )
    p = cfg.prompts
    prompts = prompts_from_config(
        p.dataset, p.template, p.background_words, p.use_background_words, data_root=cfg.data.root
    )
    check_prompt_classes(
        prompts, dataset.class_names, p.dataset, f"{cfg.data.dataset} at {cfg.data.root}"
    )
    record_options: dict[str, Any] = {
        "command": command,
        "split": split,
        "classes": args.classes,
        "long_side": args.long_side,
        "checkpoint": None,
        **(options or {}),
    }
    if args.checkpoint:
        from ssrseg.engine.checkpoint import check_compatible, checkpoint_identity

        # before anything heavy: the heads must come from this CLIP and these classes
        check_compatible(args.checkpoint, cfg, dataset.num_classes, need_cmpa=True)
        record_options["checkpoint"] = checkpoint_identity(args.checkpoint)
    out = Path(args.out)
    name = f"ssrseg {command}"
    check_output(out, cfg, record_options, overwrite=args.overwrite, command=name)
    cmpa = load_cmpa(args.checkpoint, device) if args.checkpoint else None
    labeler = build_pseudo_labeler(cfg, device)
    main_then_all(
        view,
        lambda: prepare_output(out, cfg, record_options, overwrite=args.overwrite, command=name),
    )
    return Job(cfg, dataset, labeler, cmpa, device, out, args.long_side, view)


def load_cmpa(path: str, device: torch.device) -> Any:
    """CMPA heads of a training checkpoint (eval mode; no backbones are loaded)."""
    from ssrseg.engine.checkpoint import load_cmpa_heads

    return load_cmpa_heads(path, device)


def labeler_images(job: Job, sample: Sample) -> torch.Tensor:
    """``1 x 3 x h x w`` in [0, 1]: the image resized to its work size (the labeller's input)."""
    h, w = sample.image.shape[:2]
    from ssrseg.data.resize import resize_to_tensor01, work_size  # lazy: torch, for --help speed

    size = work_size(h, w, job.labeler.patch_size, job.long_side)
    return resize_to_tensor01(sample.image, size, job.cfg.cam.input_resize, job.device)


def prepare(job: Job, sample: Sample, pool: SuperpixelPool | None = None) -> Prepared:
    """The labeller's inputs of one image: its resized tensor and, with the SGC mask, its SLIC
    superpixels computed as the labeller would (for the prefetch thread): here, or started in
    ``pool`` (pending until the labeller needs them)."""
    from ssrseg.commands.prefetch import Prepared, superpixels_for

    images01 = labeler_images(job, sample)
    if pool is not None and job.cfg.affinity.mask == "sgc":
        return Prepared(images01, None, pool.submit([sample.image_id], images01, job.cfg))
    return Prepared(images01, superpixels_for(images01, job.cfg))


def run_labeler(job: Job, sample: Sample, prepared: Prepared | None = None) -> PseudoLabelOutput:
    """One image through the labeller at its work size; its refined CAMs, scores and labels
    come back at the image's own size (``pseudo.output_resize``). ``prepared``: its inputs from
    :func:`prepare` (None: resized here, superpixels computed by the labeller)."""
    import torch

    h, w = sample.image.shape[:2]
    if prepared is None:
        images01, superpixels = labeler_images(job, sample), None
    else:
        images01, superpixels = prepared.images01, prepared.ready_superpixels()
    with torch.no_grad():
        return job.labeler(
            images01, [sample.labels], superpixels=superpixels, cmpa=job.cmpa, out_size=(h, w)
        )


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``K x h x w`` -> ``K x H x W`` bilinear (float32)."""
    import torch.nn.functional as F

    if tuple(maps.shape[-2:]) == size:
        return maps.float()
    return F.interpolate(maps[None].float(), size=size, mode="bilinear", align_corners=False)[0]


def iterate(
    job: Job,
    skip_log: SkipLog,
    order: list[int],
    progress: bool,
    prefetched: PrefetchedDataset | None = None,
) -> Iterator[Sample]:
    """The valid samples at the indices ``order`` (:func:`loop_order`), in order (bad ones go
    to ``skip_log``); read through ``prefetched`` when given (same samples, same reports)."""
    from typing import cast

    from ssrseg.data.base import SegDataset, iter_valid

    # the stand-in offers what iter_valid uses: len, ids, name, split, indexing
    dataset = job.dataset if prefetched is None else cast(SegDataset, prefetched)
    return iter_valid(dataset, skip_log, order, progress=progress, desc=job.out.name)


def loop_order(job: Job, limit: int | None) -> list[int]:
    """Indices the loop visits: this process's share (by pixel count) of the first ``limit``
    images (all when None), in dataset order."""
    from ssrseg.engine.shard import pixel_costs, share_indices

    first = range(len(job.dataset) if limit is None else min(limit, len(job.dataset)))
    dataset = job.dataset
    costs = pixel_costs(lambda i: dataset.image_path(dataset.ids[i]))
    return share_indices(first, job.view.share, costs)


def write_overlay(
    path: Path, sample: Sample, cams: np.ndarray, refined: np.ndarray, labels: np.ndarray
) -> None:
    """Panel: image, initial CAM (max over classes), refined CAM, labels, ground truth."""
    from ssrseg.viz import colorize, overlay_cam, save_panel

    def peak(maps: np.ndarray) -> np.ndarray:
        return maps.max(axis=0) if maps.shape[0] else np.zeros(sample.image.shape[:2], np.float32)

    items = [
        ("image", sample.image),
        ("initial CAM", overlay_cam(sample.image, peak(cams))),
        ("refined CAM", overlay_cam(sample.image, peak(refined))),
        ("labels", colorize(labels)),
    ]
    if sample.mask is not None:
        items.append(("ground truth", colorize(sample.mask)))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_panel(path, items)


def print_metrics(conf: Any, class_names: list[str], title: str) -> None:
    from ssrseg.metrics import format_table

    print(title)
    print(format_table(conf.compute(), class_names))


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` to a temporary file in the same folder, then rename."""
    from ssrseg.atomic import atomic_path

    with atomic_path(path, suffix=".npz.tmp") as tmp, tmp.open("wb") as handle:
        np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]


@dataclass
class Tally:
    """How many images a resumable job found done and how many it wrote."""

    done: int = 0
    written: int = 0

    def count(self, already_done: bool) -> bool:
        """Count one image; returns ``already_done``."""
        if already_done:
            self.done += 1
        else:
            self.written += 1
        return already_done

    def report(self, out: Path) -> None:
        total = self.done + self.written
        if total and self.done == total:
            print(f"{total} of {total} images already done in {out}: nothing left to do "
                  "(--overwrite redoes them)")  # fmt: skip
        elif self.done:
            print(f"{self.done} of {total} images already done; wrote {self.written} to {out}")
        else:
            print(f"wrote {self.written} of {total} images to {out}")


def read_label_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img)


# ------------------------------------------------------------------------------- run


@dataclass(frozen=True)
class Deferred:
    """What ``make`` returns when the rest of an image's work runs in the CPU pool:
    ``finish(fn(*args))`` gives its ``H x W`` labels (``fn`` a module-level function)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    finish: Callable[[Any], np.ndarray]


def run_job(
    args: argparse.Namespace,
    job: Job,
    suffix: str,
    title: str,
    read: Callable[[Path], np.ndarray],
    make: Callable[[Sample, PseudoLabelOutput, Path], np.ndarray | Deferred],
) -> int:
    """The loop ``cams`` and ``pseudo-labels`` share: finished images are skipped (their labels
    read back for ``--eval``), the others run through the labeller and ``make`` writes
    ``OUT/<id><suffix>`` and returns the ``H x W`` labels (or a :class:`Deferred` whose CPU
    work, e.g. the CRF, runs in ``--crf-workers`` processes while the next image's forward
    runs; results are handled in order); the first ``--overlays`` images get a figure;
    ``--eval`` scores the labels (confusion matrices summed over torchrun ranks); skipped
    inputs are reported. This process handles only its share (:func:`loop_order`). Unless
    ``--no-prefetch``, the next image is read and prepared (:func:`prepare`) on a background
    thread while the current one runs; with ``--superpixel-workers W`` > 0 the next ``2 W``
    images, their SLIC in ``W`` processes. Returns the exit code."""
    from concurrent.futures import ThreadPoolExecutor

    from ssrseg.commands.prefetch import PrefetchedDataset
    from ssrseg.data.base import SkipLog
    from ssrseg.engine.crf_pool import OrderedPool
    from ssrseg.engine.distributed import barrier, gather_skipped, guard_image, sum_arrays
    from ssrseg.engine.superpixel_pool import SuperpixelPool
    from ssrseg.metrics import ConfusionMatrix
    from ssrseg.runrecord import output_stamp, written_by

    view = job.view

    def destination(sample: Sample) -> Path:
        return job.out / f"{sample.image_id}{suffix}"

    stamp = output_stamp(job.out)  # the job of OUT/run.json: its files are the done ones

    def done(sample: Sample) -> bool:
        return not args.overwrite and written_by(destination(sample), stamp)

    sp_workers = 0 if args.no_prefetch else superpixel_workers(args, view.dist.local_world_size)
    slic = SuperpixelPool(sp_workers) if sp_workers else None

    def prepare_unless_done(sample: Sample) -> Prepared | None:
        return None if done(sample) else prepare(job, sample, slic)

    skip_log = SkipLog()
    conf = ConfusionMatrix(job.dataset.num_classes)
    overlays_left = args.overlays
    tally = Tally()
    order = loop_order(job, args.limit)
    pool = None if args.no_prefetch else ThreadPoolExecutor(1, thread_name_prefix="prefetch")
    prefetched = (
        None
        if pool is None
        else PrefetchedDataset(
            job.dataset, order, prepare_unless_done, pool, slic.lookahead if slic else 1
        )
    )

    def handle(key: tuple[Sample, Any], labels: np.ndarray | None) -> None:
        nonlocal overlays_left
        sample, out = key
        if out is not None and labels is not None and overlays_left > 0:
            overlays_left -= 1
            size = sample.image.shape[:2]
            write_overlay(
                job.out / "overlays" / f"{sample.image_id}.png",
                sample,
                resize_maps(out.cams[0], size).cpu().numpy(),
                resize_maps(out.refined[0], size).cpu().numpy(),
                labels,
            )
        if args.eval and sample.mask is not None and labels is not None:
            conf.update(labels, sample.mask)

    def handled(results: Iterator[tuple[Any, Any]]) -> None:
        for (sample, out, finish), value in results:
            with guard_image(view, sample.image_id):
                handle((sample, out), value if finish is None else finish(value))

    workers = crf_workers(args, view.dist.local_world_size)
    try:
        with guard_image(view), OrderedPool[Any](workers) as cpu:
            for sample in iterate(job, skip_log, order, not args.no_progress, prefetched):
                with guard_image(view, sample.image_id):
                    dest = destination(sample)
                    labels: np.ndarray | None = None
                    out: PseudoLabelOutput | None = None
                    if tally.count(done(sample)):
                        if args.eval and sample.mask is not None:
                            labels = read(dest)
                        made: np.ndarray | Deferred | None = labels
                    else:
                        ready = None if prefetched is None else prefetched.prepared(sample)
                        out = run_labeler(job, sample, ready)
                        made = make(sample, out, dest)
                if isinstance(made, Deferred):
                    handled(cpu.submit((sample, out, made.finish), made.fn, *made.args))
                else:
                    handled(cpu.put((sample, out, None), made))
            handled(cpu.drain())
    finally:
        if prefetched is not None:
            prefetched.cancel()  # an early exit (error, Ctrl-C) leaves nothing queued
        if pool is not None:
            pool.shutdown(wait=True)
        if slic is not None:  # after the thread that submits to it
            slic.close()
    tally.report(job.out)
    # exact merge: integer counts summed over ranks (never averaged scores)
    conf.hist, conf.pred_ignored, images = sum_arrays(
        [conf.hist, conf.pred_ignored, np.asarray([conf.images])], view.dist
    )
    conf.images = int(images[0])
    skip_log.skipped = gather_skipped(skip_log.skipped, list(job.dataset.ids), view.dist)
    barrier(view.dist)
    if not view.is_main:
        return skip_log.exit_code(True)
    skip_log.report()
    if args.eval:
        if conf.compute()["pixels"]:
            if not view.shard.whole:
                title += f" (shard {view.shard.index}/{view.shard.count} only: score all "
                title += f"shards with `ssrseg evaluate --pred {job.out}`)"
            print_metrics(conf, list(job.dataset.class_names), title)
        else:
            print("--eval: no ground-truth masks in this split", file=sys.stderr)
    return skip_log.exit_code(args.allow_skipped or job.cfg.data.allow_skipped)


def run(args: argparse.Namespace) -> int:
    import torch

    from ssrseg.engine.crf_pool import crf_probs
    from ssrseg.rectify.labels import scores_to_labels
    from ssrseg.runrecord import STAMP_KEY, output_stamp
    from ssrseg.viz import save_label_png

    if args.crf:
        require_crf()  # before anything is loaded
    job = setup_job(args, "pseudo-labels", {"crf": bool(args.crf)})
    stamp = {STAMP_KEY: output_stamp(job.out) or ""}  # marks each file as this job's

    def finish(scores: torch.Tensor | np.ndarray, sample: Sample, dest: Path) -> np.ndarray:
        labels = scores_to_labels(torch.as_tensor(scores), sample.labels, job.cfg.pseudo)
        labels_np: np.ndarray = labels.cpu().numpy().astype(np.uint8)
        save_label_png(dest, labels_np, text=stamp)
        return labels_np

    def make(sample: Sample, out: PseudoLabelOutput, dest: Path) -> np.ndarray | Deferred:
        scores = resize_maps(out.scores[0], sample.image.shape[:2])
        if args.crf:
            probs = scores / scores.sum(dim=0, keepdim=True).clamp_min(1e-8)
            image, values = np.array(sample.image), probs.cpu().numpy()
            return Deferred(
                crf_probs, (image, values, job.cfg.crf), lambda q: finish(q, sample, dest)
            )
        return finish(scores, sample, dest)

    return run_job(args, job, ".png", "pseudo labels vs ground truth", read_label_png, make)
