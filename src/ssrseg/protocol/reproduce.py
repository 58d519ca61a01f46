"""``ssrseg reproduce``: the paper's protocol as resumable stages, with a report against the
paper's numbers. ``ssrseg demo`` is the same run on the toy world.

Stages, in order (each writes ``OUT/<stage>/`` with a ``stage.json``):

- ``render`` (toy world only): draw the world's train and held-out splits into ``OUT/data``;
- ``check``: weights, dataset layout, split sizes, tags, classes, CRF; stops before any work;
- ``seeds``: the Table 3 rows (raw CLIP space, before and after PAR) on the pseudo-label
  evaluation split, P / R / mIoU; ``seeds/labels/`` holds the pseudo labels as PNGs;
- ``train``: SSR training (in this process, or ``torchrun`` with ``--gpus N``); resumes;
- ``cmpa``: Table 3 in the CMPA-projected space from the trained heads (its first row is
  Table 4's CMPA initial CAM);
- ``eval``: the val split, multi-scale + flip, without and with CRF from one forward per image;
- ``export``: VOC test predictions in the evaluation server's layout, archived, when the test
  split is present (with and without CRF: two archives);
- ``fully_supervised`` (toy world only): the same decoder on ground-truth masks, evaluated
  like ``eval`` (the denominator of the share of fully supervised);
- ``variants`` (toy world only): extra SSR trainings (:data:`ssrseg.protocol.variants.VARIANTS`);
- ``eval_in_distribution`` (toy world only): the in-distribution val split (drawn like train:
  the paper's protocol) rendered and scored with every trained segmentation model
  (:mod:`ssrseg.protocol.in_distribution`);
- ``report``: ``report.md``, ``report.json`` and ``figures/``; always rewritten.

A stage is skipped when its ``stage.json`` says it finished with the same *record*: the part
of the effective configuration that shapes its outputs (:data:`STAGE_CONFIG`), its options,
and the tokens of the stages it reads. A stage that runs gets a new token, so the stages
reading it run again; changing ``train.iterations`` therefore redoes train, cmpa, eval and
export but not seeds, and changing ``sgc.theta`` redoes seeds and train (and what reads
train). An unfinished stage with the same record resumes (seed rows are cached per row,
training from its last checkpoint, eval and export per image); one with another record is
deleted and redone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssrseg.config import SSRConfig, save_config
from ssrseg.protocol.check import CheckError, run_check
from ssrseg.protocol.in_distribution import stage_eval_in_distribution
from ssrseg.protocol.plan import (
    WORK_STAGES,
    ReproduceError,
    ReproducePlan,
    Run,
    execute,
    plan_work,
    resolve_crf,
    resolve_device,
    resolve_seed_split,
    write_state,
)
from ssrseg.protocol.report_stage import build_report
from ssrseg.protocol.stages import (
    stage_cmpa,
    stage_eval,
    stage_export,
    stage_fully_supervised,
    stage_render,
    stage_seeds,
    stage_train,
)
from ssrseg.protocol.variants import run_variants


def stage_variants(run: Run, resumed: bool) -> dict[str, Any]:
    """Toy world: the variants' trainings and rows
    (:func:`ssrseg.protocol.variants.run_variants`)."""
    return run_variants(run, resumed)


STAGE_FUNCTIONS: dict[str, Callable[[Run, bool], dict[str, Any]]] = {
    "render": stage_render,
    "seeds": stage_seeds,
    "train": stage_train,
    "cmpa": stage_cmpa,
    "eval": stage_eval,
    "export": stage_export,
    "fully_supervised": stage_fully_supervised,
    "variants": stage_variants,
    "eval_in_distribution": stage_eval_in_distribution,
}


# ----------------------------------------------------------------------------------------------
# Check


def check_roles(run: Run) -> dict[str, tuple[str, bool, bool, bool]]:
    """Splits to check: ``{role: (split, masks, tags, full file check)}``."""
    cfg, st = run.cfg, run.status
    seed_split, _ = resolve_seed_split(cfg, run.plan)
    runs = {s for s, v in st.items() if v == "run"}
    return {
        "pseudo-label evaluation": (
            seed_split,
            True,
            True,
            bool(runs & {"seeds", "cmpa", "variants"}),
        ),
        "training": (
            cfg.data.train_split,
            False,
            True,
            bool(runs & {"train", "fully_supervised", "variants"}),
        ),
        "evaluation": (
            cfg.data.val_split,
            True,
            False,
            bool(runs & {"eval", "fully_supervised", "variants"}),
        ),
    }


def stage_check(run: Run) -> dict[str, Any]:
    t0 = time.perf_counter()
    runs = {s for s, v in run.status.items() if v == "run"}
    try:
        res = run_check(
            run.cfg,
            check_roles(run),
            need_weights=bool(runs - {"render"}),
            test_split=run.status.get("export") in ("run", "reuse"),
        )
    except CheckError as exc:
        raise ReproduceError(str(exc)) from None
    for w in res.warnings:
        print(f"  warning: {w}")
    run.check = res.as_dict()
    folder = run.folder("check")
    state = {
        "stage": "check",
        "status": "done",
        "result": run.check,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_state(folder, state)
    run.states["check"] = state
    return run.check


# ----------------------------------------------------------------------------------------------
# Entry point


def run_reproduce(cfg: SSRConfig, out_dir: str | Path, plan: ReproducePlan) -> dict[str, Any]:
    """Run the chosen stages into ``out_dir``; returns the report dict (also written)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(plan.device)
    crf_modes, crf_note = resolve_crf(plan.crf)
    run = Run(cfg, out, plan, device, crf_modes)
    if crf_note:
        run.notes["eval"] = crf_note
        print(f"note: {crf_note}")
    save_config(cfg, out)
    t0 = time.perf_counter()
    status = plan_work(run)
    run.status = dict(status)
    print(
        "stages: "
        + ", ".join(f"{s} {v}" for s, v in status.items() if v != "n/a")
        + f" (output: {out})"
    )
    if status.get("render") == "run":  # the toy world must exist before it can be checked
        execute(run, "render", stage_render)
        status = plan_work(run)
        run.status.update({k: v for k, v in status.items() if k != "render"})
    stage_check(run)
    if run.status.get("export") == "run" and not run.check.get("has_test"):
        run.status["export"] = "n/a"
        run.notes["export"] = "no VOC test split: nothing to export"
    for stage in WORK_STAGES:
        if stage == "render" or run.status.get(stage) != "run":
            continue
        execute(run, stage, STAGE_FUNCTIONS[stage])
    report = build_report(run, time.perf_counter() - t0)
    return report
