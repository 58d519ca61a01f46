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
- ``variants`` (toy world only): extra SSR trainings (:data:`ssrseg.engine.demo.VARIANTS`);
- ``eval_in_distribution`` (toy world only): the in-distribution val split (drawn like train:
  the paper's protocol) rendered and scored with every trained segmentation model
  (:mod:`ssrseg.engine.in_distribution`);
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

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssrseg.config import SSRConfig, atomic_write_text, config_to_dict, save_config
from ssrseg.data.toy import IN_DISTRIBUTION_SPLIT
from ssrseg.engine.cam_rows import (
    AFTER_PAR_ROWS,
    EXTRA_ROWS,
    TABLE3_ROWS,
    RowHook,
    merge_config,
)

STAGES: tuple[str, ...] = (
    "render",
    "check",
    "seeds",
    "train",
    "cmpa",
    "eval",
    "export",
    "fully_supervised",
    "variants",
    "eval_in_distribution",
    "report",
)
# Stages with outputs other stages read (check and report are always run, never cached).
WORK_STAGES = (
    "render",
    "seeds",
    "train",
    "cmpa",
    "eval",
    "export",
    "fully_supervised",
    "variants",
    "eval_in_distribution",
)
UPSTREAM: dict[str, tuple[str, ...]] = {
    "render": (),
    "seeds": ("render",),
    "train": ("render",),
    "cmpa": ("train",),
    "eval": ("train",),
    "export": ("train",),
    "fully_supervised": ("render",),
    "variants": ("render",),
    # the stage renders its own split into the world's folder and scores the trained models
    "eval_in_distribution": ("render", "train", "fully_supervised", "variants"),
}
# (config keys that shape a stage's outputs, keys left out). A key is a section or
# "section.field". The pseudo-label rows set the attention / mask / PAR switches themselves.
# Training keeps its whole section (even train.output_dir and the logging keys): a checkpoint
# resumes only under the identical train / cmpa config, so any change there starts it afresh.
# Everything an SSR training reads (train and the toy variants); loader settings that do not
# change what is computed are left out.
_TRAINING_SECTIONS = (
    "backbone",
    "prompts",
    "cam",
    "affinity",
    "sgc",
    "par",
    "pseudo",
    "cmpa",
    "decoder",
    "loss",
    "data",
    "train",
)
_NOT_SHAPING = ("data.num_workers", "data.allow_skipped")
STAGE_CONFIG: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "render": ((), ()),
    "seeds": (
        ("backbone", "prompts", "cam", "affinity", "sgc", "par", "pseudo", "data"),
        (
            "cam.projected",
            "affinity.use_clip_attention",
            "affinity.use_dino_attention",
            "affinity.mask",
            "affinity.decoder_affinity",
            "par.enabled",
            "data.train_split",
            "data.val_split",
            "data.crop_size",
            "data.scale_range",
            "data.hflip",
            "data.num_workers",
            "data.allow_skipped",
            "data.superpixels",
        ),
    ),
    "train": (_TRAINING_SECTIONS, _NOT_SHAPING),
    # cmpa reads the checkpoint (train's token) and scores with the train config's labeller
    "cmpa": ((), ()),
    "eval": (("infer", "crf", "data.dataset", "data.root", "data.val_split"), ()),
    "export": (("infer", "crf", "data.dataset", "data.root"), ()),
    "fully_supervised": (
        ("backbone", "prompts", "cam", "decoder", "loss", "data", "train", "infer", "crf"),
        _NOT_SHAPING,
    ),
    # toy world: extra trainings from the train config (ssrseg.engine.demo.VARIANTS), scored
    # like cmpa / eval
    "variants": ((*_TRAINING_SECTIONS, "infer", "crf"), _NOT_SHAPING),
    "eval_in_distribution": (("infer", "crf", "data.dataset", "data.root"), ()),
}
# Pseudo-label evaluation split and default number of images per dataset: VOC train (1,464)
# [convention of the field]; COCO's first 5,000 train images [decision: all 82,081 would take
# longer than the training itself]; the toy world's train split.
SEED_SPLITS: dict[str, tuple[str, int | None]] = {
    "voc": ("train", None),
    "coco": ("train", 5000),
    "toy": ("train", None),
}
# Rows whose labels the toy world's context-leak hook measures.
LEAK_ROWS = ("initial CAM", "+ DINO attention (box mask)", "+ SGC mask")
STATE_FILE = "stage.json"


class ReproduceError(RuntimeError):
    """The run cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class WorldPlan:
    """Toy world to render into ``OUT/data`` (the demo's first stage)."""

    n_train: int
    n_val: int
    seed: int = 0
    image_size: int = 128
    val_split: str = "debiased"


@dataclass(frozen=True)
class ReproducePlan:
    """Options of a run that are not config fields."""

    stages: tuple[str, ...] | None = None  # None: every stage that applies
    redo: tuple[str, ...] = ()  # stages to redo even when finished
    gpus: int = 1  # > 1: training through torchrun on this machine
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed_split: str | None = None  # None: SEED_SPLITS[dataset]
    seed_images: int | None = None  # None: SEED_SPLITS' default; 0: the whole split
    seed_batch: int = 16  # same-size images per labeller call
    val_images: int | None = None  # None: the whole val split
    long_side: int = 1024  # labeller: shrink larger images first (as `ssrseg pseudo-labels`)
    crf: str = "auto"  # auto (both if installed) | on (both, required) | off
    panels: int = 6  # example panels in the report
    world: WorldPlan | None = None  # toy world to render first
    fully_supervised_iterations: int = 0  # > 0: the toy world's fully supervised bound
    toy_rows: bool = False  # toy-only rows: trivial baselines, context leak
    # toy world: extra trainings of the variants stage (names in ssrseg.engine.demo.VARIANTS)
    variants: tuple[str, ...] = ()
    variant_iterations: int = 0  # their training iterations (0: train.iterations)
    grouping_images: int = 0  # > 0: toy attention grouping table on that many `val` scenes
    # > 0 (toy world): render that many in-distribution val images (drawn like train: the
    # paper's protocol) and score every trained segmentation model on them too
    in_distribution_images: int = 0
    title: str | None = None
    progress: bool = True


# ----------------------------------------------------------------------------------------------
# Records (pure)


def config_subset(cfg: SSRConfig, include: Sequence[str], exclude: Sequence[str]) -> dict:
    """The parts of ``cfg`` named by ``include`` without those named by ``exclude``."""
    full = config_to_dict(cfg)
    out: dict[str, Any] = {}
    for key in include:
        section, _, name = key.partition(".")
        if name:
            out.setdefault(section, {})[name] = full[section][name]
        else:
            out[section] = dict(full[section])
    for key in exclude:
        section, _, name = key.partition(".")
        out.get(section, {}).pop(name, None)
    return out


def resolve_seed_split(cfg: SSRConfig, plan: ReproducePlan) -> tuple[str, int | None]:
    """(split, number of images or None for all) of the pseudo-label evaluation."""
    split, images = SEED_SPLITS.get(cfg.data.dataset, (cfg.data.train_split, None))
    if plan.seed_split is not None:
        split = plan.seed_split
    if plan.seed_images is not None:
        images = plan.seed_images or None
    return split, images


def stage_options(
    stage: str, cfg: SSRConfig, plan: ReproducePlan, device_type: str, crf_modes: Sequence[bool]
) -> dict[str, Any]:
    """Options (not config fields) that shape ``stage``'s outputs."""
    split, images = resolve_seed_split(cfg, plan)
    seeds = {"split": split, "images": images, "long_side": plan.long_side}
    seed_opts: dict[str, Any] = {**seeds, "toy_rows": plan.toy_rows, "device": device_type}
    if plan.grouping_images:  # only then, so records of runs without it keep their hash
        seed_opts["grouping_images"] = plan.grouping_images
    opts: dict[str, dict[str, Any]] = {
        "render": {"world": dataclasses.asdict(plan.world) if plan.world else None},
        "seeds": seed_opts,
        "train": {"gpus": plan.gpus, "device": device_type},
        "cmpa": {**seeds, "device": device_type},
        "eval": {"crf": list(crf_modes), "images": plan.val_images, "device": device_type},
        "export": {"crf": list(crf_modes), "device": device_type},
        "fully_supervised": {
            "iterations": plan.fully_supervised_iterations,
            "crf": list(crf_modes),
            "images": plan.val_images,
            "device": device_type,
        },
        "variants": {
            **seeds,
            "variants": list(plan.variants),
            "iterations": plan.variant_iterations or cfg.train.iterations,
            "crf": list(crf_modes),
            "val_images": plan.val_images,
            "device": device_type,
        },
        "eval_in_distribution": {
            "split": IN_DISTRIBUTION_SPLIT,
            "images": plan.in_distribution_images,
            "world": dataclasses.asdict(plan.world) if plan.world else None,
            "crf": list(crf_modes),
            "device": device_type,
        },
    }
    return opts[stage]


def stage_record(
    stage: str,
    cfg: SSRConfig,
    plan: ReproducePlan,
    device_type: str,
    crf_modes: Sequence[bool],
    upstream: dict[str, str],
) -> dict[str, Any]:
    """What made ``stage``'s outputs: its config subset, options and upstream tokens."""
    from ssrseg.runrecord import make_record

    include, exclude = STAGE_CONFIG[stage]
    options = stage_options(stage, cfg, plan, device_type, crf_modes)
    options["after"] = dict(sorted(upstream.items()))
    record = make_record(None, options)
    record["config"] = config_subset(cfg, include, exclude)
    record["stage"] = stage
    return record


# ----------------------------------------------------------------------------------------------
# Stage state on disk


def read_state(folder: Path) -> dict[str, Any] | None:
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a torn write: the stage is redone
    return data if isinstance(data, dict) else None


def write_state(folder: Path, state: dict[str, Any]) -> None:
    from ssrseg.metrics import json_safe

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / STATE_FILE, json.dumps(json_safe(state), indent=1) + "\n")


# ----------------------------------------------------------------------------------------------
# Memory


def _reset_peaks(device: torch.device) -> None:
    try:  # Linux: writing 5 resets the peak resident set size of this process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peaks(device: torch.device) -> dict[str, float]:
    import resource

    peaks: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks["cpu_rss_mb"] = int(line.split()[1]) / 1024
    except OSError:
        peaks["cpu_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if children > 0:
        peaks["children_rss_mb"] = children
    if device.type == "cuda":
        peaks["gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peaks


# ----------------------------------------------------------------------------------------------
# The run


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_crf(choice: str) -> tuple[tuple[bool, ...], str]:
    """CRF modes for ``--crf`` and a note; ``on`` without pydensecrf2 is an error."""
    from ssrseg.engine.infer import check_crf

    if choice == "off":
        return (False,), "CRF off (--crf off)"
    if choice not in ("auto", "on"):
        raise ReproduceError(f"--crf must be auto | on | off, got {choice!r}")
    try:
        check_crf()
    except RuntimeError as exc:
        if choice == "on":
            raise ReproduceError(f"--crf on: {exc}") from None
        return (False,), f"CRF rows left out: {exc}"
    return (False, True), ""


@dataclass
class Run:
    """Everything the stages share."""

    cfg: SSRConfig
    out: Path
    plan: ReproducePlan
    device: torch.device
    crf_modes: tuple[bool, ...]
    status: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)

    def folder(self, stage: str) -> Path:
        return self.out / stage

    def upstream_tokens(self, stage: str) -> dict[str, str]:
        return {u: self.tokens[u] for u in UPSTREAM.get(stage, ()) if u in self.tokens}

    def record(self, stage: str) -> dict[str, Any]:
        return stage_record(
            stage,
            self.cfg,
            self.plan,
            self.device.type,
            self.crf_modes,
            self.upstream_tokens(stage),
        )


def applicable(stage: str, cfg: SSRConfig, plan: ReproducePlan) -> bool:
    if stage == "render":
        return plan.world is not None
    if stage == "fully_supervised":
        return plan.fully_supervised_iterations > 0
    if stage == "variants":
        return bool(plan.variants)
    if stage == "eval_in_distribution":
        return plan.world is not None and plan.in_distribution_images > 0
    if stage == "export":
        return cfg.data.dataset == "voc"
    return True


def selected_stages(cfg: SSRConfig, plan: ReproducePlan) -> set[str]:
    """The stages asked for (``--stages`` plus ``--redo``), checked against :data:`STAGES`."""
    names = set(plan.stages) if plan.stages is not None else set(STAGES)
    names |= set(plan.redo)
    unknown = sorted(names - set(STAGES))
    if unknown:
        raise ReproduceError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    return {s for s in names if applicable(s, cfg, plan)} | {"check", "report"}


def plan_work(run: Run) -> dict[str, str]:
    """Each work stage's fate: ``run``, ``reuse`` (finished with the same record), ``n/a``,
    or, for stages not asked for, ``missing`` / ``stale`` (outputs absent or made with another
    configuration). A chosen stage whose input stage is missing or stale is an error."""
    from ssrseg.runrecord import record_hash

    cfg, plan = run.cfg, run.plan
    chosen = selected_stages(cfg, plan)
    status: dict[str, str] = {}
    for stage in WORK_STAGES:
        if not applicable(stage, cfg, plan):
            status[stage] = "n/a"
            continue
        state = read_state(run.folder(stage))
        ups = [u for u in UPSTREAM[stage] if status.get(u, "n/a") != "n/a"]
        bad = [u for u in ups if status[u] in ("missing", "stale")]
        picked = stage in chosen
        if bad:
            if picked:
                raise ReproduceError(
                    f"stage {stage} reads the outputs of {', '.join(bad)}, which "
                    f"{'is' if len(bad) == 1 else 'are'} not there or made with another "
                    f"configuration: add {','.join(bad)} to --stages (or leave --stages out)"
                )
            status[stage] = "stale" if state else "missing"
            continue
        if any(status[u] == "run" for u in ups) or stage in plan.redo:
            status[stage] = "run" if picked else ("stale" if state else "missing")
            continue
        if state is not None:
            run.states[stage] = state
        current = (
            state is not None
            and state.get("status") == "done"
            and state.get("hash") == record_hash(run.record(stage))
        )
        if current:
            assert state is not None
            status[stage] = "reuse"
            run.tokens[stage] = state["token"]
        else:
            status[stage] = "run" if picked else ("stale" if state else "missing")
    return status


def _prepare_folder(run: Run, stage: str, record: dict[str, Any]) -> bool:
    """Make ``stage``'s folder ready; returns True when resuming an unfinished attempt."""
    from ssrseg.runrecord import diff_records, record_hash

    folder = run.folder(stage)
    state = read_state(folder)
    if state is not None and stage not in run.plan.redo:
        if state.get("hash") == record_hash(record) and state.get("status") == "running":
            print(f"[{stage}] resuming the unfinished run in {folder}")
            return True
        changes = diff_records(state.get("record", {}), record)
        after = "options.after."
        inputs = sorted({c[len(after) :].split(":")[0] for c in changes if c.startswith(after)})
        changes = [c for c in changes if not c.startswith(after)]
        if inputs:
            print(f"[{stage}] redoing: {', '.join(inputs)} ran again")
        if changes:
            shown = "\n    ".join(changes[:12])
            more = f"\n    ... and {len(changes) - 12} more" if len(changes) > 12 else ""
            print(f"[{stage}] configuration changed, redoing:\n    {shown}{more}")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return False


def execute(run: Run, stage: str, fn: Callable[[Run, bool], dict[str, Any]]) -> None:
    """Run one stage with its record, wall time and peak memory; the token comes last."""
    from ssrseg.runrecord import record_hash

    record = run.record(stage)
    resumed = _prepare_folder(run, stage, record)
    state: dict[str, Any] = {
        "stage": stage,
        "status": "running",
        "record": record,
        "hash": record_hash(record),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_state(run.folder(stage), state)
    print(f"\n[{stage}] {'resumed' if resumed else 'running'}")
    _reset_peaks(run.device)
    t0 = time.perf_counter()
    result = fn(run, resumed)
    state.update(
        status="done",
        token=uuid.uuid4().hex[:12],
        result=result,
        wall_s=round(time.perf_counter() - t0, 1),
        peak_memory=_peaks(run.device),
        finished=time.strftime("%Y-%m-%d %H:%M:%S"),
        resumed=resumed,
    )
    write_state(run.folder(stage), state)
    run.states[stage] = state
    run.tokens[stage] = state["token"]
    run.status[stage] = "ran" + (" (resumed)" if resumed else "")
    print(f"[{stage}] done in {state['wall_s']:.1f} s")


# ----------------------------------------------------------------------------------------------
# Datasets


def open_dataset(cfg: SSRConfig, split: str, labels: bool, masks: bool = True) -> Any:
    from ssrseg.data import build_dataset

    d = cfg.data
    kwargs: dict[str, Any] = {"require_labels": labels}
    if masks:
        kwargs["with_masks"] = True
    return build_dataset(d.dataset, d.root, split, d.tag_file, **kwargs)


def seed_indices(cfg: SSRConfig, plan: ReproducePlan, dataset: Any) -> list[int]:
    _, images = resolve_seed_split(cfg, plan)
    n = len(dataset) if images is None else min(images, len(dataset))
    return list(range(n))


# ----------------------------------------------------------------------------------------------
# Stages


def stage_render(run: Run, resumed: bool) -> dict[str, Any]:
    from ssrseg.data.toy import write_toy_dataset

    world = run.plan.world
    assert world is not None
    root = Path(run.cfg.data.root)
    for split, n in ((run.cfg.data.train_split, world.n_train), (world.val_split, world.n_val)):
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if resumed and listing.is_file() and len(listing.read_text().split()) == n:
            continue
        write_toy_dataset(root, n, split=split, seed=world.seed, image_size=world.image_size,
                          progress=run.plan.progress)  # fmt: skip
    return {"root": str(root), "n_train": world.n_train, "n_val": world.n_val}


def _base_labeler(cfg: SSRConfig, device: torch.device) -> Any:
    """Labeller whose backbones every row shares (DINO loaded when the config allows it)."""
    from ssrseg.pseudo.labeler import build_pseudo_labeler

    over: dict[str, Any] = {"cam": {"projected": False}}
    if cfg.backbone.use_dino:
        over["affinity"] = {"use_dino_attention": True}
    return build_pseudo_labeler(merge_config(cfg, over), device)


def _toy_hook() -> RowHook:
    from ssrseg.toy.diagnostics import context_leak

    def hook(name: str, dataset: Any, indices: Sequence[int], preds: dict) -> dict[str, Any]:
        return {"context_leak": context_leak(dataset, indices, preds)}

    return hook


def stage_seeds(run: Run, resumed: bool) -> dict[str, Any]:
    """Table 3 in the raw CLIP space (plus after-PAR rows), toy baselines when asked."""
    from ssrseg.engine.cam_rows import score_rows
    from ssrseg.engine.report import row_summary

    cfg, plan = run.cfg, run.plan
    torch.manual_seed(cfg.train.seed)
    split, _ = resolve_seed_split(cfg, plan)
    dataset = open_dataset(cfg, split, labels=True)
    indices = seed_indices(cfg, plan, dataset)
    base = _base_labeler(cfg, run.device)
    raw_cfg = merge_config(cfg, {"cam": {"projected": False}})
    rows = (*TABLE3_ROWS, *AFTER_PAR_ROWS, *EXTRA_ROWS)
    folder = run.folder("seeds")
    scored = score_rows(
        base,
        raw_cfg,
        rows,
        dataset,
        indices,
        folder / "rows",
        batch=plan.seed_batch,
        long_side=plan.long_side,
        hook=_toy_hook() if plan.toy_rows else None,
        hook_rows=LEAK_ROWS if plan.toy_rows else (),
        label_dir=folder / "labels",
        label_row="+ PAR (pseudo labels)",
        progress=plan.progress,
    )
    result: dict[str, Any] = {
        "split": split,
        "images": len(indices),
        "rows": {name: row_summary(e["result"]) for name, e in scored.items()},
        "iou": {name: e["result"]["iou"] for name, e in scored.items()},
        "class_names": list(dataset.class_names),
    }
    if plan.toy_rows:
        from ssrseg.engine.demo import baseline_scores

        result["baselines"] = {
            k: row_summary(v.compute()) for k, v in baseline_scores(dataset, indices).items()
        }
        result["context_leak"] = {
            name: scored[name]["extra"]["context_leak"] for name in LEAK_ROWS if name in scored
        }
    if plan.toy_rows and plan.grouping_images > 0:
        from ssrseg.toy.diagnostics import backbone_grouping

        # the world's `val` split: rendered on the fly, never scored (choose dino_layers here)
        seed = plan.world.seed if plan.world is not None else 0
        vits = {"clip": base.clip.visual, "dino": base.dino}
        result["attention_grouping"] = {
            "split": "val",
            "images": plan.grouping_images,
            "rows": backbone_grouping(vits, plan.grouping_images, seed),
        }
    _write_metrics(folder / "metrics.json", {k: v["result"] for k, v in scored.items()})
    return result


def _write_metrics(path: Path, results: dict[str, Any]) -> None:
    from ssrseg.metrics import json_safe

    atomic_write_text(path, json.dumps(json_safe(results), indent=1) + "\n")


def torchrun_command(
    config_file: Path, run_dir: Path, gpus: int, device_type: str, resume: bool
) -> list[str]:
    """``torchrun --nproc_per_node N -m ssrseg.cli train ...`` for this interpreter."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(gpus),
        "-m",
        "ssrseg.cli",
        "train",
        "--config",
        str(config_file),
        "--output-dir",
        str(run_dir),
        "--device",
        device_type,
    ]
    if resume:
        cmd += ["--resume", str(run_dir)]
    return cmd


def train_into(run: Run, cfg: SSRConfig, run_dir: Path, gpus: int = 1) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``, resuming from its last checkpoint when there is one."""
    from ssrseg.engine.checkpoint import LAST_FILE, resolve_checkpoint

    resume = (run_dir / LAST_FILE).is_file()
    if gpus > 1:
        config_file = save_config(cfg, run_dir, name="reproduce_train.yaml")
        cmd = torchrun_command(config_file, run_dir, gpus, run.device.type, resume)
        print("  " + " ".join(cmd))
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(cmd, env=env, check=False)
        if proc.returncode != 0:
            raise ReproduceError(
                f"torchrun training exited with status {proc.returncode}; rerun the same "
                "command to resume from the last checkpoint in " + str(run_dir)
            )
    else:
        from ssrseg.engine.distributed import cleanup, setup
        from ssrseg.engine.train import run_training

        ctx = setup(str(run.device))
        # seed before the model is built: its initialisation must not depend on earlier stages
        torch.manual_seed(cfg.train.seed)
        try:
            step = run_training(cfg, ctx, run_dir, run_dir if resume else None)
        finally:
            cleanup(ctx)
        if step < 0:
            raise ReproduceError(
                "training skipped unreadable items (listed above); fix them or set "
                "data.allow_skipped=true"
            )
    ckpt = resolve_checkpoint(run_dir)
    return {
        "checkpoint": str(ckpt.relative_to(run.out)),
        "iterations": cfg.train.iterations,
        "gpus": gpus,
        "effective_batch": gpus * cfg.train.batch_size,
    }


def stage_train(run: Run, resumed: bool) -> dict[str, Any]:
    cfg, plan = run.cfg, run.plan
    if plan.gpus > 1 and cfg.train.batch_size * plan.gpus != cfg.train.batch_size:
        print(
            f"  note: {plan.gpus} processes x train.batch_size {cfg.train.batch_size} = "
            f"effective batch {plan.gpus * cfg.train.batch_size}"
        )
    return train_into(run, cfg, run.folder("train"), plan.gpus)


def stage_cmpa(run: Run, resumed: bool) -> dict[str, Any]:
    """Table 3 in the CMPA-projected space (its first row is Table 4's CMPA initial CAM)."""
    from ssrseg.engine.cam_rows import score_rows
    from ssrseg.engine.checkpoint import load_model
    from ssrseg.engine.report import row_summary

    cfg, plan = run.cfg, run.plan
    model, _ = load_model(run.folder("train"), run.device)
    if model.cmpa is None:
        return {"skipped": "cmpa.enabled is false: no CMPA heads were trained"}
    cmpa = model.cmpa.eval()
    split, _ = resolve_seed_split(cfg, plan)
    dataset = open_dataset(cfg, split, labels=True)
    indices = seed_indices(cfg, plan, dataset)
    rows = [(name, {**ov, "cam": {"projected": True}}) for name, ov in TABLE3_ROWS]
    scored = score_rows(
        model.labeler,
        cfg,
        rows,
        dataset,
        indices,
        run.folder("cmpa") / "rows",
        batch=plan.seed_batch,
        cmpa=cmpa,
        long_side=plan.long_side,
        progress=plan.progress,
    )
    _write_metrics(run.folder("cmpa") / "metrics.json", {k: v["result"] for k, v in scored.items()})
    return {
        "split": split,
        "images": len(indices),
        "rows": {name: row_summary(e["result"]) for name, e in scored.items()},
        "iou": {name: e["result"]["iou"] for name, e in scored.items()},
    }


def _mode_name(mode: bool) -> str:
    return "crf" if mode else "no_crf"


def evaluate_into(
    seg: Any,
    dataset: Any,
    modes: Sequence[bool],
    pred_dir: Path,
    indices: Sequence[int],
    progress: bool,
) -> dict[bool, Any]:
    """Score ``dataset[indices]`` once per CRF mode from one multi-scale forward per image;
    predictions go to ``pred_dir/{no_crf,crf}/<id>.png`` and are read back on a resume."""
    from ssrseg.data.base import SkipLog, iter_valid
    from ssrseg.engine.infer import run_crf
    from ssrseg.metrics import ConfusionMatrix
    from ssrseg.viz import save_label_png

    log = SkipLog()
    matrices = {m: ConfusionMatrix(seg.num_classes) for m in modes}
    for sample in iter_valid(dataset, log, indices, progress=progress, desc="evaluate"):
        if sample.mask is None:
            raise ReproduceError(f"{sample.path}: the evaluation split has no ground-truth mask")
        paths = {m: pred_dir / _mode_name(m) / f"{sample.image_id}.png" for m in modes}
        if all(p.is_file() for p in paths.values()):
            from PIL import Image

            masks = {m: np.asarray(Image.open(p)) for m, p in paths.items()}
        else:
            _, probs = seg.predict(sample.image, return_probs=True, crf=False)
            masks = {}
            for m in modes:
                scores = run_crf(sample.image, probs, seg.crf_cfg) if m else probs
                masks[m] = scores.argmax(axis=0).astype(np.uint8)
                save_label_png(paths[m], masks[m], dataset.palette_name)
        for m in modes:
            matrices[m].update(masks[m], sample.mask)
    log.report()
    return matrices


def _evaluate_stage(run: Run, ckpt_dir: Path, folder: Path) -> dict[str, Any]:
    """The checkpoint in ``ckpt_dir`` scored on the val split into ``folder``."""
    return evaluate_checkpoint(run, ckpt_dir, folder, run.cfg.data.val_split, run.plan.val_images)


def evaluate_checkpoint(
    run: Run, ckpt_dir: Path, folder: Path, split: str, images: int | None
) -> dict[str, Any]:
    """The checkpoint in ``ckpt_dir`` scored on the first ``images`` (None: all) of ``split``
    in every CRF mode; predictions and ``metrics.json`` go to ``folder``."""
    from ssrseg.engine.infer import Segmenter
    from ssrseg.engine.report import row_summary

    cfg, plan = run.cfg, run.plan
    # this run's inference and CRF settings, not the ones saved with the checkpoint
    seg = Segmenter.from_checkpoint(ckpt_dir, run.device, infer=cfg.infer, crf=cfg.crf)
    dataset = open_dataset(cfg, split, labels=False)
    n = len(dataset) if images is None else min(images, len(dataset))
    matrices = evaluate_into(
        seg, dataset, run.crf_modes, folder / "pred", list(range(n)), plan.progress
    )
    results = {}
    for m, cm in matrices.items():
        res = cm.compute()
        res["class_names"] = ["background", *dataset.class_names]
        results[_mode_name(m)] = res
    settings = {"infer": config_to_dict(seg.infer), "crf_params": config_to_dict(seg.crf_cfg)}
    _write_metrics(folder / "metrics.json", {"split": dataset.split, **settings, **results})
    return {
        "split": dataset.split,
        "images": n,
        "rows": {k: row_summary(v) for k, v in results.items()},
        "iou": {k: v["iou"] for k, v in results.items()},
        "class_names": list(dataset.class_names),
    }


def stage_eval(run: Run, resumed: bool) -> dict[str, Any]:
    return _evaluate_stage(run, run.folder("train"), run.folder("eval"))


def stage_export(run: Run, resumed: bool) -> dict[str, Any]:
    """VOC test predictions, without and with CRF, each tree archived for the server."""
    from ssrseg.data.base import BadInputError, read_image
    from ssrseg.engine.export import (
        archive_voc_results,
        check_voc_mask,
        missing_voc_test,
        voc_test_path,
    )
    from ssrseg.engine.infer import Segmenter, run_crf
    from ssrseg.viz import save_label_png

    if not run.check.get("has_test"):
        return {"skipped": "no VOC test split"}
    cfg = run.cfg
    seg = Segmenter.from_checkpoint(run.folder("train"), run.device, infer=cfg.infer, crf=cfg.crf)
    test = open_dataset(cfg, "test", labels=False, masks=False)
    roots = {m: run.folder("export") / _mode_name(m) for m in run.crf_modes}
    from tqdm import tqdm

    for image_id in tqdm(test.ids, desc="VOC test export", disable=not run.plan.progress):
        targets = {m: voc_test_path(r, image_id) for m, r in roots.items()}
        if all(p.is_file() for p in targets.values()):
            continue
        try:
            image = read_image(test.image_path(image_id))
        except BadInputError as exc:
            raise ReproduceError(f"VOC test export: {exc}") from None
        _, probs = seg.predict(image, return_probs=True, crf=False)
        for m, path in targets.items():
            scores = run_crf(image, probs, seg.crf_cfg) if m else probs
            mask = scores.argmax(axis=0).astype(np.uint8)
            check_voc_mask(mask, image.shape, image_id)
            save_label_png(path, mask, seg.palette)
    archives = {}
    for m, r in roots.items():
        missing = missing_voc_test(r, test.ids)
        if missing:
            raise ReproduceError(f"VOC test export misses {len(missing)} image(s): {missing[:5]}")
        archives[_mode_name(m)] = str(archive_voc_results(r).relative_to(run.out))
    return {"images": len(test.ids), "archives": archives}


def stage_fully_supervised(run: Run, resumed: bool) -> dict[str, Any]:
    """The same decoder trained on ground-truth masks, evaluated like ``eval``."""
    cfg = merge_config(
        run.cfg,
        {
            "train": {
                "iterations": run.plan.fully_supervised_iterations,
                "val_every": 0,
                "supervision": "gt",
            },
            "cmpa": {"enabled": False},
        },
    )
    folder = run.folder("fully_supervised")
    train = train_into(run, cfg, folder / "train")
    return {**_evaluate_stage(run, folder / "train", folder), "train": train}


def stage_variants(run: Run, resumed: bool) -> dict[str, Any]:
    """Toy world: the variants' trainings and rows (:func:`ssrseg.engine.demo.run_variants`)."""
    from ssrseg.engine.demo import run_variants

    return run_variants(run, resumed)


def stage_eval_in_distribution(run: Run, resumed: bool) -> dict[str, Any]:
    """Toy world: the in-distribution val split
    (:func:`ssrseg.engine.in_distribution.stage_eval_in_distribution`)."""
    from ssrseg.engine.in_distribution import stage_eval_in_distribution as stage

    return stage(run, resumed)


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
    from ssrseg.engine.reproduce_check import CheckError, run_check

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
    from ssrseg.engine.reproduce_report import build_report

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
