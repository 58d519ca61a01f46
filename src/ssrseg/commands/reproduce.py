"""``ssrseg reproduce``: the paper's whole protocol in one resumable command, with a report
against the published numbers.

  ssrseg reproduce --config configs/voc.yaml --root data/VOCdevkit --out runs/repro-voc
  ssrseg reproduce --config configs/coco.yaml --root data/coco --out runs/repro-coco --gpus 4

Stages: check (weights, data, split sizes; stops before any work), seeds (Table 3 rows on
VOC train), train (torchrun with --gpus N > 1), cmpa (Table 3 in the CMPA space, Table 4),
eval (val, multi-scale + flip, with and without CRF), export (VOC test archives for the
server), report (report.md, report.json, figures/). Rerunning the same command skips finished
stages and resumes an interrupted one; a changed configuration redoes the stages it affects.
See docs/reproduce.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ssrseg.commands.common import (
    command_parser,
    non_negative_int,
    positive_int,
    refuse_overlap,
    resolve_device,
)

# lazy: `ssrseg --help` imports every command module, so the library (and torch) is imported
# inside the functions that run a command.


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = command_parser(sub, name, help_text, __doc__, raw=True)
    p.add_argument("--config", required=True, help="preset: configs/voc.yaml, coco.yaml, ...")
    p.add_argument("--root", default=None, help="dataset root (sets data.root)")
    p.add_argument("--out", required=True, help="run folder (one sub-folder per stage)")
    p.add_argument(
        "--gpus",
        type=positive_int,
        default=None,
        help="processes on this machine: every stage runs on N ranks under torchrun (default: "
        "1; inside a torchrun job its size, or 1 to train in the main process only)",
    )
    p.add_argument(
        "--crf-workers",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="processes running the dense CRF of eval / export while the next image's forward "
        "runs (default: this process's cores split between the ranks on this machine; 0: in "
        "the main process)",
    )
    p.add_argument(
        "--superpixel-workers",
        type=non_negative_int,
        default=None,
        metavar="W",
        help="processes computing the SLIC superpixels of seeds / cmpa (the SGC rows) for the "
        "next 2 W images while the labeller runs (default: this process's cores split between "
        "the ranks on this machine; 0: one background thread)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--stages",
        default=None,
        help="comma-separated stages to run, e.g. seeds,train,eval (default: all; check and "
        "report always run)",
    )
    p.add_argument("--redo", default=None, help="comma-separated stages to redo even when finished")
    p.add_argument(
        "--crf",
        choices=("auto", "on", "off"),
        default="auto",
        help="score with and without dense CRF (auto: when pydensecrf2 is installed)",
    )
    p.add_argument(
        "--seed-split", default=None, help="pseudo-label evaluation split (default: train)"
    )
    p.add_argument(
        "--seed-images",
        type=non_negative_int,
        default=None,
        help="images of that split to score (default: all; COCO 5000; 0: all)",
    )
    p.add_argument(
        "--val-images", type=positive_int, default=None, help="evaluate the first N only"
    )
    p.add_argument(
        "--panels", type=non_negative_int, default=6, help="example panels in the report"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="config overrides key.path=value")
    return p


def _names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(s.strip() for s in text.split(",") if s.strip())


def relaunch_command(args: argparse.Namespace) -> list[str]:
    """``torchrun --standalone --nproc_per_node N -m ssrseg.cli reproduce ...`` with this
    command's options, for ``--gpus N`` outside a torchrun job."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(args.gpus), "-m", "ssrseg.cli", "reproduce"]  # fmt: skip
    for option in ("config", "root", "out", "gpus", "device", "stages", "redo", "crf",
                   "seed_split", "seed_images", "val_images", "panels", "crf_workers",
                   "superpixel_workers"):  # fmt: skip
        value = getattr(args, option)
        if value is not None:
            cmd += ["--" + option.replace("_", "-"), str(value)]
    if args.no_progress:
        cmd.append("--no-progress")
    return cmd + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from ssrseg.config import ConfigError, load_config
    from ssrseg.protocol.plan import ReproduceError, ReproducePlan
    from ssrseg.protocol.reproduce import run_reproduce

    resolve_device(args.device)  # --device cuda without CUDA: one line before any stage folder
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and (args.gpus or 1) > 1:
        # every stage on N processes: this command again, under torchrun
        cmd = relaunch_command(args)
        print("  " + " ".join(cmd), flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        code = subprocess.run(cmd, env=env, check=False).returncode
        if code:
            print(
                f"ssrseg reproduce: error: torchrun exited with status {code} (the failed rank "
                f"and image are named above); rerun the same command to resume in {args.out}",
                file=sys.stderr,
            )
        return 2 if code else 0
    overrides = list(args.overrides)
    if args.root:
        overrides.append(f"data.root={args.root}")
    try:
        cfg = load_config(args.config, overrides)
        # the run folder may hold the dataset (the toy world is rendered into OUT/data) but
        # never be it or lie inside it
        refuse_overlap(args.out, "--out", [("dataset folder (data.root)", cfg.data.root)],
                       holds_ok=True)  # fmt: skip
        plan = ReproducePlan(
            stages=_names(args.stages),
            redo=_names(args.redo) or (),
            gpus=args.gpus or world,
            crf_workers=args.crf_workers,
            superpixel_workers=args.superpixel_workers,
            device=args.device,
            seed_split=args.seed_split,
            seed_images=args.seed_images,
            val_images=args.val_images,
            crf=args.crf,
            panels=args.panels,
            progress=not args.no_progress,
        )
        run_reproduce(cfg, args.out, plan)
    except (ReproduceError, ConfigError) as exc:
        print(f"ssrseg reproduce: error: {exc}", file=sys.stderr)
        return 2
    return 0
