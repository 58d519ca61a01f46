"""``ssrseg cams``: write per-image CAMs for a dataset split.

``OUT/<id>.npz`` holds ``cams`` (float16, ``K x H x W`` at the image's size, compressed) and
``classes`` (the K 0-based class ids, int64). ``--kind refined`` (default) writes the CAM seeds
(affinity refinement with the configured mask); ``--kind initial`` the Grad-CAMs upsampled
bilinearly. Resumable, atomic writes, resolved config in ``OUT/config.yaml``; ``--eval``
scores ``argmax([(1 - max_c cam_c) ** power, cams])`` (no PAR) against the ground truth.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from ssrseg.commands.common import plain_doc
from ssrseg.commands.pseudo_labels import (
    Tally,
    add_common_arguments,
    atomic_save_npz,
    iterate,
    print_metrics,
    resize_maps,
    run_labeler,
    setup_job,
    write_overlay,
)


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=plain_doc(__doc__)
    )
    add_common_arguments(p)
    p.add_argument(
        "--kind",
        choices=("refined", "initial"),
        default="refined",
        help="refined CAM seeds (default) or initial Grad-CAMs",
    )
    return p


def read_cams(path: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """Read back a CAM file: (``K x H x W`` float32, class ids)."""
    with np.load(path) as data:
        return data["cams"].astype(np.float32), tuple(int(c) for c in data["classes"])


def run(args: argparse.Namespace) -> int:
    import torch

    from ssrseg.data.base import SkipLog
    from ssrseg.metrics import ConfusionMatrix
    from ssrseg.rectify.labels import scores_to_labels

    job = setup_job(args, "cams", {"kind": args.kind})
    skip_log = SkipLog()
    conf = ConfusionMatrix(job.dataset.num_classes)
    overlays_left = args.overlays
    tally = Tally()
    for sample in iterate(job, skip_log, args.limit, not args.no_progress):
        dest = job.out / f"{sample.image_id}.npz"
        if tally.count(dest.is_file() and not args.overwrite):
            cams, classes = read_cams(dest)
        else:
            out = run_labeler(job, sample)
            size = sample.image.shape[:2]
            chosen = out.refined[0] if args.kind == "refined" else out.cams[0]
            cams = resize_maps(chosen, size).clamp(0, 1).cpu().numpy()
            classes = tuple(dict.fromkeys(sample.labels))
            atomic_save_npz(
                dest, cams=cams.astype(np.float16), classes=np.asarray(classes, dtype=np.int64)
            )
            if overlays_left > 0:
                overlays_left -= 1
                labels = scores_to_labels(torch.from_numpy(cams), classes, job.cfg.pseudo)
                write_overlay(
                    job.out / "overlays" / f"{sample.image_id}.png",
                    sample,
                    resize_maps(out.cams[0], size).cpu().numpy(),
                    resize_maps(out.refined[0], size).cpu().numpy(),
                    labels.numpy().astype(np.uint8),
                )
        if args.eval and sample.mask is not None:
            labels = scores_to_labels(
                torch.from_numpy(cams.astype(np.float32)), classes, job.cfg.pseudo
            )
            conf.update(labels.numpy(), sample.mask)
    tally.report(job.out)
    skip_log.report()
    if args.eval:
        if conf.compute()["pixels"]:
            print_metrics(conf, list(job.dataset.class_names), f"{args.kind} CAMs vs ground truth")
        else:
            print("--eval: no ground-truth masks in this split", file=sys.stderr)
    return skip_log.exit_code(args.allow_skipped or job.cfg.data.allow_skipped)
