"""``ssrseg demo``: ``ssrseg reproduce`` on the toy world, with the paper's tables."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ssrseg.commands.common import non_negative_int, positive_int, resolve_device, seed_int

# lazy: `ssrseg --help` imports every command module, so the library (and torch) is imported
# inside the functions that run a command.


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=help_text
        + ". The toy world's `ssrseg reproduce`: renders the world, scores the Table 3 / Table 4 "
        "rows, trains SSR and a fully supervised decoder, evaluates with and without CRF on the "
        "debiased split (robustness to context) and the in-distribution split (the paper's "
        "protocol) and writes a report folder. Rerunning into the same folder reuses the "
        "finished stages.",
    )
    p.add_argument("--out", default="runs/demo", help="report folder (default: runs/demo)")
    p.add_argument("--config", default=None, help="preset (default: configs/toy.yaml)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    p.add_argument("--n-train", type=positive_int, default=None, help="rendered training images")
    p.add_argument(
        "--n-score", type=positive_int, default=None, help="training images scored per row"
    )
    p.add_argument("--n-val", type=positive_int, default=None, help="held-out (debiased) images")
    p.add_argument(
        "--n-val-id",
        type=non_negative_int,
        default=None,
        help="held-out in-distribution images (drawn like train: the paper's protocol; 0: none)",
    )
    p.add_argument("--iterations", type=positive_int, default=None, help="SSR training iterations")
    p.add_argument(
        "--gt-iterations", type=positive_int, default=None, help="upper-bound iterations"
    )
    p.add_argument("--no-crf", action="store_true", help="skip the CRF rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--seed", type=seed_int, default=None, help="world and training seed")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--stages",
        default=None,
        help="comma-separated stages to run (default: all; see `ssrseg reproduce --help`)",
    )
    p.add_argument("overrides", nargs="*", help="config overrides key.path=value")
    return p


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ssrseg.config import ConfigError
    from ssrseg.protocol.demo import QUICK_PLAN, DemoPlan, run_demo
    from ssrseg.protocol.plan import ReproduceError

    resolve_device(args.device)  # --device cuda without CUDA: one line before any folder
    plan = QUICK_PLAN if args.quick else DemoPlan()
    changes = {
        field: getattr(args, field)
        for field in (
            "n_train",
            "n_score",
            "n_val",
            "n_val_id",
            "iterations",
            "gt_iterations",
            "seed",
        )
        if getattr(args, field) is not None
    }
    if args.no_crf:
        changes["crf"] = False
    if args.no_progress:
        changes["progress"] = False
    plan = dataclasses.replace(plan, **changes)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    try:
        run_demo(args.out, plan, args.config, args.overrides, args.device, stages)
    except (ReproduceError, ConfigError, FileNotFoundError) as exc:
        print(f"ssrseg demo: error: {exc}", file=sys.stderr)
        return 2
    # the last step: a page to look at the run image by image (`ssrseg view`)
    from ssrseg.commands.view import build_page
    from ssrseg.view.discover import ViewInputError

    try:
        build_page(args.out)
    except ViewInputError as exc:  # e.g. --stages without seeds or eval: nothing to show
        print(f"note: no page built: {exc}", file=sys.stderr)
    return 0
