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
        "--gpus", type=positive_int, default=1, help="training processes on this machine (torchrun)"
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


def run(args: argparse.Namespace) -> int:
    from ssrseg.config import ConfigError, load_config
    from ssrseg.protocol.plan import ReproduceError, ReproducePlan
    from ssrseg.protocol.reproduce import run_reproduce

    resolve_device(args.device)  # --device cuda without CUDA: one line before any stage folder
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
            gpus=max(1, args.gpus),
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
