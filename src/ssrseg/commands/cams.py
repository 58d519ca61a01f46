"""``ssrseg cams``: write per-image CAMs for a dataset split.

``OUT/<id>.npz`` holds ``cams`` (float16, ``K x H x W`` at the image's size, compressed) and
``classes`` (the K 0-based class ids, int64). ``--kind refined`` (default) writes the CAM seeds
(affinity refinement with the configured mask); ``--kind initial`` the Grad-CAMs upsampled
bilinearly. Resumable, atomic writes, resolved config in ``OUT/config.yaml``; ``--eval``
scores ``argmax([(1 - max_c cam_c) ** power, cams])`` (no PAR) against the ground truth.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ssrseg.commands.common import add_parallel_args, command_parser, plain_doc
from ssrseg.commands.pseudo_labels import (
    add_common_arguments,
    atomic_save_npz,
    resize_maps,
    run_job,
    setup_job,
)

# lazy: `ssrseg --help` imports every command module, so the library (and torch) is imported
# inside the functions that run a command.


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = command_parser(sub, name, help_text, plain_doc(__doc__))
    add_common_arguments(p)
    p.add_argument(
        "--kind",
        choices=("refined", "initial"),
        default="refined",
        help="refined CAM seeds (default) or initial Grad-CAMs",
    )
    add_parallel_args(p, crf=False)
    return p


def read_cams(path: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """Read back a CAM file: (``K x H x W`` float32, class ids)."""
    with np.load(path) as data:
        return data["cams"].astype(np.float32), tuple(int(c) for c in data["classes"])


def cam_labels(cams: np.ndarray, classes: tuple[int, ...], cfg: Any) -> np.ndarray:
    """The labels ``--eval`` scores (:func:`ssrseg.rectify.labels.stored_cam_labels`)."""
    from ssrseg.rectify.labels import stored_cam_labels

    return stored_cam_labels(cams, classes, cfg.pseudo)


def run(args: argparse.Namespace) -> int:
    from ssrseg.runrecord import STAMP_KEY, output_stamp

    job = setup_job(args, "cams", {"kind": args.kind})
    stamp = np.asarray(output_stamp(job.out) or "")  # marks each file as this job's

    def make(sample: Any, out: Any, dest: Any) -> np.ndarray:
        chosen = out.refined[0] if args.kind == "refined" else out.cams[0]
        cams = resize_maps(chosen, sample.image.shape[:2]).clamp(0, 1).cpu().numpy()
        classes = tuple(dict.fromkeys(sample.labels))
        atomic_save_npz(
            dest,
            cams=cams.astype(np.float16),
            classes=np.asarray(classes, dtype=np.int64),
            **{STAMP_KEY: stamp},
        )
        return cam_labels(cams, classes, job.cfg)

    def read(dest: Any) -> np.ndarray:
        return cam_labels(*read_cams(dest), job.cfg)

    return run_job(args, job, ".npz", f"{args.kind} CAMs vs ground truth", read, make)
