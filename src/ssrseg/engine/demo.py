"""The toy-world demo (``ssrseg demo`` / ``make demo``): ``ssrseg reproduce`` on the toy preset.

:func:`run_demo` renders the toy world as its first stage, then runs the same stages as a VOC
reproduction (check, seeds, train, cmpa, eval, report; see :mod:`ssrseg.engine.reproduce`)
plus the toy-only rows defined here: trivial baselines, the background over-activation split
by home context (the failure SGC targets) and the fully supervised bound (the same decoder on
ground-truth masks) with SSR's share of it, on the debiased split (robustness to context) and
on the in-distribution split (the paper's protocol; :mod:`ssrseg.engine.in_distribution`).
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

import numpy as np

from ssrseg.engine.cam_rows import EXTRA_ROWS, TABLE3_ROWS, score_labeler

__all__ = [
    "EXTRA_ROWS",
    "QUICK_PLAN",
    "TABLE3_ROWS",
    "VARIANTS",
    "DemoPlan",
    "baseline_scores",
    "default_config_path",
    "demo_setup",
    "run_demo",
    "run_variants",
    "score_labeler",
]


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

# The variants stage's extra trainings [decision]: (config overrides, what is scored).
# "segmentation": the val split like `eval` (without and with CRF); "cmpa_cam": Table 4's CMPA
# initial CAM on the seed split, like the first row of `cmpa`.
VARIANTS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    # WeCLIP+'s DINO decoder branch (ssrseg.model.dino_branch), with the toy DINO
    "dino_branch": ({"decoder": {"dino_branch": True}}, ("segmentation",)),
    # the paper's CMPA: K-means prototypes (cmpa.prototypes=kmeans)
    "kmeans": ({"cmpa": {"prototypes": "kmeans"}}, ("cmpa_cam",)),
    # plain SSR: the reference when the variants train for fewer iterations than `train`
    "plain": ({}, ("segmentation", "cmpa_cam")),
    # both in one training: its segmentation is the DINO branch's row, its CMPA CAM the K-means
    # row. Valid while cam.projected is false (the toy preset): the pseudo labels then never
    # read the CMPA heads, so the prototypes cannot reach the decoder, and the heads' loss never
    # reads the decoder; with cam.projected the stage runs the two separately.
    "dino_branch+kmeans": (
        {"decoder": {"dino_branch": True}, "cmpa": {"prototypes": "kmeans"}},
        ("segmentation", "cmpa_cam"),
    ),
}
# Which row a combined variant's outputs stand for.
ROLE_OF = {"segmentation": "dino_branch", "cmpa_cam": "kmeans"}


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
        variants=tuple(plan.variants),
        variant_iterations=plan.variant_iterations,
        grouping_images=plan.grouping_images,
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
    from ssrseg.engine.reproduce import run_reproduce

    cfg, rplan = demo_setup(out_dir, plan, config, overrides, device, stages)
    return run_reproduce(cfg, out_dir, rplan)


def run_variants(run: Any, resumed: bool) -> dict[str, Any]:
    """The ``variants`` stage: each variant of ``run.plan.variants`` trained from the train
    config with its overrides (same seed, ``plan.variant_iterations``) into
    ``variants/<name>/train`` and scored as :data:`VARIANTS` says.

    When the variants train for fewer iterations than ``train``, the plain configuration is
    trained at that length too, so each variant has a reference of its own length. Every part
    resumes: training from its checkpoint, evaluation per image, the CAM row from its cache.
    """
    from ssrseg.engine.cam_rows import merge_config, score_rows
    from ssrseg.engine.checkpoint import load_model
    from ssrseg.engine.report import row_summary
    from ssrseg.engine.reproduce import (
        ReproduceError,
        _evaluate_stage,
        open_dataset,
        resolve_seed_split,
        seed_indices,
        train_into,
    )

    cfg, plan = run.cfg, run.plan
    unknown = sorted(set(plan.variants) - set(VARIANTS))
    if unknown:
        raise ReproduceError(
            f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}"
        )
    iterations = plan.variant_iterations or cfg.train.iterations
    names = list(dict.fromkeys(plan.variants))
    if cfg.cam.projected and "dino_branch+kmeans" in names:  # the heads then feed the decoder
        at = names.index("dino_branch+kmeans")
        names[at : at + 1] = [n for n in ("dino_branch", "kmeans") if n not in names]
    if iterations != cfg.train.iterations and "plain" not in names:
        names.append("plain")
    out: dict[str, Any] = {"iterations": iterations, "variants": {}}
    for name in names:
        overrides, scored = VARIANTS[name]
        vcfg = merge_config(cfg, {**overrides, "train": {"iterations": iterations}})
        folder = run.folder("variants") / name
        print(f"  variant {name}: {overrides or 'plain SSR'}, {iterations} iterations")
        entry: dict[str, Any] = {
            "overrides": overrides,
            "train": train_into(run, vcfg, folder / "train"),
        }
        if "segmentation" in scored:
            entry["segmentation"] = _evaluate_stage(run, folder / "train", folder)
        if "cmpa_cam" in scored:
            model, _ = load_model(folder / "train", run.device)
            if model.cmpa is None:
                entry["cmpa_cam"] = None
            else:
                split, _ = resolve_seed_split(cfg, plan)
                dataset = open_dataset(cfg, split, labels=True)
                indices = seed_indices(cfg, plan, dataset)
                row = ("initial CAM", {**TABLE3_ROWS[0][1], "cam": {"projected": True}})
                rows = score_rows(
                    model.labeler,
                    vcfg,
                    [row],
                    dataset,
                    indices,
                    folder / "rows",
                    batch=plan.seed_batch,
                    cmpa=model.cmpa.eval(),
                    long_side=plan.long_side,
                    progress=plan.progress,
                )
                entry["cmpa_cam"] = {
                    "split": split,
                    "images": len(indices),
                    **row_summary(rows["initial CAM"]["result"]),
                }
        if "+" in name:  # a combined run: each output stands for its own variant's row
            for key, role in ROLE_OF.items():
                out["variants"][role] = {
                    "overrides": overrides,
                    "train": entry["train"],
                    "trained_as": name,
                    key: entry[key],
                }
        else:
            out["variants"][name] = entry
    return out
