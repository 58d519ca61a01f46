"""The toy-world demo (``ssrseg demo`` / ``make demo``): ``ssrseg reproduce`` on the toy preset.

:func:`run_demo` renders the toy world as its first stage, then runs the same stages as a VOC
reproduction (check, seeds, train, cmpa, eval, report; see :mod:`ssrseg.protocol.reproduce`)
plus the toy-only rows defined here: trivial baselines, the background over-activation split
by home context (the failure SGC targets) and the fully supervised bound (the same decoder on
ground-truth masks) with SSR's share of it, on the debiased split (robustness to context) and
on the in-distribution split (the paper's protocol; :mod:`ssrseg.protocol.in_distribution`).
The default plan fits in about 10 minutes on 2 CPU cores; a second run into the same folder
reuses every finished stage.

Nothing here is toy-specific maths: the stages call the same ``PseudoLabeler``, ``Trainer``
and ``Segmenter`` as the VOC / COCO commands; only the data and weights are the toy world's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssrseg.config import load_config
from ssrseg.protocol.plan import ReproducePlan, WorldPlan
from ssrseg.protocol.reproduce import run_reproduce

__all__ = ["QUICK_PLAN", "DemoPlan", "default_config_path", "demo_setup", "run_demo"]


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run. The defaults fit in about 10 minutes on 2 CPU cores."""

    n_train: int = 800  # rendered training images (biased world)
    n_score: int = 100  # training images whose CAMs / pseudo labels are scored (VOC-train role)
    n_val: int = 150  # held-out images of the debiased split, for segmentation
    # held-out images of the in-distribution split (drawn like train: the paper's protocol),
    # scored with SSR, the DINO-branch variant and the fully supervised decoder (0: none)
    n_val_id: int = 150
    iterations: int = 240  # SSR training iterations
    gt_iterations: int = 240  # fully supervised upper bound iterations
    panels: int = 6  # figure panels written
    batch: int = 16  # images per pseudo-labeller call while scoring
    seed: int = 0
    crf: bool = True  # also score with dense CRF (needs the crf extra)
    # variants stage: extra SSR trainings (VARIANTS), each scored beside the plain run; one
    # run with both switches halves the stage (see VARIANTS for why they do not interact)
    variants: tuple[str, ...] = ("dino_branch+kmeans",)
    variant_iterations: int = 0  # 0: the same as `iterations` (then the plain run is the reference)
    grouping_images: int = 64  # `val` scenes of the attention grouping table (0: none)
    progress: bool = True  # progress bars (the stages' and the training's)


QUICK_PLAN = DemoPlan(
    n_train=24,
    n_score=8,
    n_val=8,
    n_val_id=6,
    iterations=4,
    gt_iterations=4,
    panels=2,
    batch=8,
    grouping_images=4,
)


def default_config_path() -> Path:
    """``configs/toy.yaml`` of the working directory, else of the source checkout."""
    candidates = [Path.cwd() / "configs" / "toy.yaml"]
    parents = Path(__file__).resolve().parents
    if len(parents) > 3:
        candidates.append(parents[3] / "configs" / "toy.yaml")
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        "the toy preset configs/toy.yaml was not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); pass --config PATH"
    )


def demo_setup(
    out_dir: str | Path,
    plan: DemoPlan = DemoPlan(),
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    device: str = "cpu",
    stages: Sequence[str] | None = None,
) -> tuple[Any, Any]:
    """(config, reproduce plan) of a demo run: the toy preset with the world in
    ``out_dir/data``, the plan's seed and iterations, periodic validation off."""
    out = Path(out_dir)
    extra = [
        f"data.root={out / 'data'}",
        f"train.seed={plan.seed}",
        f"train.iterations={plan.iterations}",
        "train.val_every=0",
        *overrides,
    ]
    cfg = load_config(config if config is not None else default_config_path(), extra)
    rplan = ReproducePlan(
        stages=tuple(stages) if stages else None,
        device=device,
        seed_split=cfg.data.train_split,
        seed_images=plan.n_score,
        seed_batch=plan.batch,
        crf="auto" if plan.crf else "off",
        panels=plan.panels,
        world=WorldPlan(plan.n_train, plan.n_val, plan.seed, val_split=cfg.data.val_split),
        fully_supervised_iterations=plan.gt_iterations,
        toy_rows=True,
        variants=tuple(plan.variants),
        variant_iterations=plan.variant_iterations,
        grouping_images=plan.grouping_images,
        progress=plan.progress,
        in_distribution_images=plan.n_val_id,
        title="SSR on the toy world",
    )
    return cfg, rplan


def run_demo(
    out_dir: str | Path,
    plan: DemoPlan = DemoPlan(),
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    device: str = "cpu",
    stages: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns the report dict (also ``out_dir/report.json``)."""
    cfg, rplan = demo_setup(out_dir, plan, config, overrides, device, stages)
    return run_reproduce(cfg, out_dir, rplan)
