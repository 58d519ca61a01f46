"""``ssrseg demo``: the whole SSR pipeline on the toy world, with the paper's tables."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=help_text
        + ". Renders the toy world, scores the Table 3 / Table 4 rows, trains SSR and a fully "
        "supervised decoder, evaluates with and without CRF and writes a report folder.",
    )
    p.add_argument("--out", default="runs/demo", help="report folder (default: runs/demo)")
    p.add_argument("--config", default=None, help="preset (default: configs/toy.yaml)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    p.add_argument("--n-train", type=int, default=None, help="rendered training images")
    p.add_argument("--n-score", type=int, default=None, help="training images scored per row")
    p.add_argument("--n-val", type=int, default=None, help="held-out (debiased) images")
    p.add_argument("--iterations", type=int, default=None, help="SSR training iterations")
    p.add_argument("--gt-iterations", type=int, default=None, help="upper-bound iterations")
    p.add_argument("--no-crf", action="store_true", help="skip the CRF rows")
    p.add_argument("--seed", type=int, default=None, help="world and training seed")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("overrides", nargs="*", help="config overrides key.path=value")
    return p


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ssrseg.engine.demo import QUICK_PLAN, DemoPlan, run_demo

    plan = QUICK_PLAN if args.quick else DemoPlan()
    changes = {
        field: getattr(args, field)
        for field in ("n_train", "n_score", "n_val", "iterations", "gt_iterations", "seed")
        if getattr(args, field) is not None
    }
    if args.no_crf:
        changes["crf"] = False
    plan = dataclasses.replace(plan, **changes)
    run_demo(args.out, plan, args.config, args.overrides, args.device)
    return 0
