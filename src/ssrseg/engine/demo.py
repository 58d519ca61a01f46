"""The toy-world demo (``ssrseg demo`` / ``make demo``): ``ssrseg reproduce`` on the toy preset.

:func:`run_demo` renders the toy world as its first stage, then runs the same stages as a VOC
reproduction (check, seeds, train, cmpa, eval, report; see :mod:`ssrseg.engine.reproduce`)
plus the toy-only rows defined here: trivial baselines, the background over-activation split
by home context (the failure SGC targets) and the fully supervised bound (the same decoder on
ground-truth masks) with SSR's share of it. The default plan fits in about 10 minutes on 2 CPU
cores; a second run into the same folder reuses every finished stage.

Nothing here is toy-specific maths: the stages call the same ``PseudoLabeler``, ``Trainer``
and ``Segmenter`` as the VOC / COCO commands; only the data and weights are the toy world's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssrseg.engine.cam_rows import EXTRA_ROWS, TABLE3_ROWS, score_labeler

__all__ = [
    "EXTRA_ROWS",
    "QUICK_PLAN",
    "TABLE3_ROWS",
    "DemoPlan",
    "baseline_scores",
    "context_leak",
    "default_config_path",
    "demo_setup",
    "run_demo",
    "score_labeler",
]


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run. The defaults fit in about 10 minutes on 2 CPU cores."""

    n_train: int = 800  # rendered training images (biased world)
    n_score: int = 100  # training images whose CAMs / pseudo labels are scored (VOC-train role)
    n_val: int = 150  # held-out images of the debiased split, for segmentation
    iterations: int = 240  # SSR training iterations
    gt_iterations: int = 240  # fully supervised upper bound iterations
    panels: int = 6  # figure panels written
    batch: int = 16  # images per pseudo-labeller call while scoring
    seed: int = 0
    crf: bool = True  # also score with dense CRF (needs the crf extra)


QUICK_PLAN = DemoPlan(
    n_train=24, n_score=8, n_val=8, iterations=4, gt_iterations=4, panels=2, batch=8
)


def baseline_scores(dataset: Any, indices: Sequence[int]) -> dict[str, Any]:
    """All-background and a centred-Gaussian prior painted with the true tags."""
    from ssrseg.metrics import ConfusionMatrix

    allbg = ConfusionMatrix(dataset.num_classes)
    centre = ConfusionMatrix(dataset.num_classes)
    for i in indices:
        s = dataset[i]
        h, w = s.mask.shape
        allbg.update(np.zeros_like(s.mask), s.mask)
        yy, xx = np.mgrid[0:h, 0:w]
        g = np.exp(-(((yy - h / 2) / (0.25 * h)) ** 2 + ((xx - w / 2) / (0.25 * w)) ** 2) / 2)
        pred = np.zeros_like(s.mask)
        if s.labels:
            pred[g > 0.5] = s.labels[0] + 1
        centre.update(pred, s.mask)
    return {"all background": allbg, "centre prior (true tags)": centre}


def context_leak(dataset: Any, indices: Sequence[int], preds: dict[str, np.ndarray]) -> dict:
    """Share of a class's predicted pixels that fall on ground-truth background, split by
    whether the image shows the class's home context (the failure SGC targets)."""
    from ssrseg.data.toy import HOME

    captions = json.loads((Path(dataset.root) / "captions.json").read_text())
    names = dataset.class_names
    acc = {"home": [0, 0], "elsewhere": [0, 0]}
    for i in indices:
        s = dataset[i]
        if s.image_id not in preds:
            continue
        # the caption ends "... on <context>."
        context = re.findall(r"[a-z]+", captions.get(s.image_id, "").lower())[-1:]
        pred = preds[s.image_id]
        for c in s.labels:
            home = HOME.get(names[c])
            if home is None:
                continue
            where = "home" if context == [home] else "elsewhere"
            on_class = pred == c + 1
            acc[where][0] += int((on_class & (s.mask == 0)).sum())
            acc[where][1] += int(on_class.sum())
    return {k: (100 * v[0] / v[1] if v[1] else float("nan")) for k, v in acc.items()}


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
    from ssrseg.config import load_config
    from ssrseg.engine.reproduce import ReproducePlan, WorldPlan

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
    from ssrseg.engine.reproduce import run_reproduce

    cfg, rplan = demo_setup(out_dir, plan, config, overrides, device, stages)
    return run_reproduce(cfg, out_dir, rplan)
