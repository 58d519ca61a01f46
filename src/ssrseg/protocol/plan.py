"""The plan and bookkeeping of a ``reproduce`` run: the stages and what each reads, the
record that decides whether a finished stage is reused, ``stage.json`` on disk, the
:class:`Run` the stages share and the datasets they open. See :mod:`ssrseg.protocol.reproduce`."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssrseg.atomic import remove_stale_temporaries
from ssrseg.config import SSRConfig, atomic_write_text, config_to_dict
from ssrseg.data import build_dataset
from ssrseg.data.toy import IN_DISTRIBUTION_SPLIT
from ssrseg.engine.distributed import (
    StageContext,
    barrier,
    broadcast_object,
    solo_view,
)
from ssrseg.engine.infer import check_crf
from ssrseg.metrics import json_safe
from ssrseg.runrecord import diff_records, make_record, record_hash

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
WORK_STAGES = tuple(s for s in STAGES if s not in ("check", "report"))
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
    # toy world: extra trainings from the train config (ssrseg.protocol.variants.VARIANTS), scored
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
    gpus: int = 1  # > 1: training on that many processes (torchrun)
    crf_workers: int | None = None  # CRF processes per rank (None: its cores; 0: in-process)
    # SLIC processes per rank in seeds / cmpa (None: its cores; 0: the labeller's one thread)
    superpixel_workers: int | None = None
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
    # toy world: extra trainings of the variants stage (names in ssrseg.protocol.variants.VARIANTS)
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
    # this process's share of the data-parallel stages (every rank of a torchrun job runs the
    # protocol; the main rank alone writes stage states, records and merged metrics)
    view: StageContext = field(default_factory=solo_view)

    @property
    def is_main(self) -> bool:
        return self.view.is_main

    def main_only(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the main rank, then every rank goes on (barrier); its value on the
        main rank, None elsewhere."""
        result = fn() if self.view.is_main else None
        barrier(self.view.dist)
        return result

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
    folder = run.folder(stage)
    state = read_state(folder)
    if state is not None and stage not in run.plan.redo:
        if state.get("hash") == record_hash(record) and state.get("status") == "running":
            print(f"[{stage}] resuming the unfinished run in {folder}")
            # a process killed mid-write (kill -9) leaves its temporary beside the file it
            # wrote; none of this job's processes writes yet, so each is stale
            stale = remove_stale_temporaries(folder)
            if stale:
                print(f"[{stage}] removed {len(stale)} temporary file(s) of a killed process")
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


def execute(
    run: Run, stage: str, fn: Callable[[Run, bool], dict[str, Any]], parallel: bool = True
) -> None:
    """Run one stage with its record, wall time and peak memory; the token comes last.

    Under torchrun every rank calls this: the main rank prepares the folder and writes the
    states, every rank runs ``fn`` when ``parallel`` (it splits its images between the ranks),
    else the main rank runs it as one plain process while the others wait."""
    record = run.record(stage)
    view = run.view
    resumed = bool(broadcast_object(
        _prepare_folder(run, stage, record) if view.is_main else None, view.dist
    ))  # fmt: skip
    state: dict[str, Any] = {
        "stage": stage,
        "status": "running",
        "record": record,
        "hash": record_hash(record),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    run.main_only(lambda: write_state(run.folder(stage), state))
    if view.is_main:
        print(f"\n[{stage}] {'resumed' if resumed else 'running'}")
    _reset_peaks(run.device)
    t0 = time.perf_counter()
    if parallel:
        result = fn(run, resumed)
    else:
        run.view = solo_view()
        try:
            result = fn(run, resumed) if view.is_main else {}
        finally:
            run.view = view
        result = broadcast_object(result, view.dist)
    state.update(
        status="done",
        token=uuid.uuid4().hex[:12],
        result=result,
        wall_s=round(time.perf_counter() - t0, 1),
        peak_memory=_peaks(run.device),
        finished=time.strftime("%Y-%m-%d %H:%M:%S"),
        resumed=resumed,
    )
    # the main rank's token (and timings) on every rank: later records read the token
    state = broadcast_object(state, view.dist)
    run.main_only(lambda: write_state(run.folder(stage), state))
    run.states[stage] = state
    run.tokens[stage] = state["token"]
    run.status[stage] = "ran" + (" (resumed)" if resumed else "")
    if view.is_main:
        print(f"[{stage}] done in {state['wall_s']:.1f} s")


# ----------------------------------------------------------------------------------------------
# Datasets


def open_dataset(cfg: SSRConfig, split: str, labels: bool, masks: bool = True) -> Any:
    d = cfg.data
    kwargs: dict[str, Any] = {"require_labels": labels}
    if masks:
        kwargs["with_masks"] = True
    return build_dataset(d.dataset, d.root, split, d.tag_file, **kwargs)


def seed_indices(cfg: SSRConfig, plan: ReproducePlan, dataset: Any) -> list[int]:
    _, images = resolve_seed_split(cfg, plan)
    n = len(dataset) if images is None else min(images, len(dataset))
    return list(range(n))
