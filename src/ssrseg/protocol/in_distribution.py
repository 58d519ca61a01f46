"""The toy world's in-distribution val split beside the debiased one: the
``eval_in_distribution`` stage of ``ssrseg reproduce`` / ``ssrseg demo`` and its headline rows.

The paper scores VOC / COCO val, drawn from the training distribution, and its Table 6 share
(SSR = 97.4% of fully supervised) is measured there. The demo's ``eval`` stage scores the
debiased split (context and pair biases broken): a test of robustness to context, a different
question. This stage renders ``plan.in_distribution_images`` scenes of
:data:`~ssrseg.data.toy.IN_DISTRIBUTION_SPLIT` (train's generator and biases, a stream of its
own, only ever scored) and scores on them every segmentation model the run trained: SSR, the
WeCLIP+ DINO-branch variant (and the plain reference of the variants' length when they train
shorter) and the fully supervised decoder, without and with CRF. It runs after the stages it
reads and changes none of their outputs, so the debiased numbers stay what they were; an old run
folder gains the stage without redoing any other.

The report then gives the Table 6 share on both splits, each labelled by what it measures
(:data:`SPLIT_ROLES`), and their gap in percentage points: how much of SSR's share depends on
context the debiased test no longer offers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ssrseg.data.toy import IN_DISTRIBUTION_SPLIT, write_toy_dataset
from ssrseg.protocol import report as R
from ssrseg.protocol.plan import Run
from ssrseg.protocol.stages import evaluate_checkpoint

STAGE = "eval_in_distribution"
# What each toy split's segmentation score measures (the headline rows' labels).
SPLIT_ROLES: dict[str, str] = {
    IN_DISTRIBUTION_SPLIT: "the paper's protocol",
    "debiased": "robustness to context",
}
CRF_LABELS = (("no_crf", "without CRF"), ("crf", "with CRF"))
# Variants whose segmentation the stage scores again on the in-distribution split.
SEGMENTED_VARIANTS = ("dino_branch", "plain")


def _current(run: Run, stage: str) -> bool:
    """The stage finished in this run or earlier with this run's record."""
    status = str(run.status.get(stage, "n/a"))
    return status == "reuse" or status.startswith("ran")


def model_folders(run: Run) -> dict[str, Path]:
    """Checkpoint folder of each model to score, by role: ``ssr`` (the train stage),
    ``dino_branch`` / ``plain`` (the variants stage's segmentation runs) and
    ``fully_supervised``; only those whose stage is current in this run."""
    out: dict[str, Path] = {}
    if _current(run, "train"):
        out["ssr"] = run.folder("train")
    if _current(run, "variants"):
        result = (run.states.get("variants") or {}).get("result") or {}
        for name in SEGMENTED_VARIANTS:
            entry = result.get("variants", {}).get(name)
            if entry and entry.get("segmentation"):
                trained = entry.get("trained_as", name)
                out[name] = run.folder("variants") / trained / "train"
    if _current(run, "fully_supervised"):
        out["fully_supervised"] = run.folder("fully_supervised") / "train"
    return out


def stage_eval_in_distribution(run: Run, resumed: bool) -> dict[str, Any]:
    """Render the in-distribution split (when its listing lacks images) and score every
    trained segmentation model on it, like ``eval``; per model and image resumable."""
    world, n = run.plan.world, run.plan.in_distribution_images
    assert world is not None and n > 0
    root = Path(run.cfg.data.root)
    listing = root / "ImageSets" / "Segmentation" / f"{IN_DISTRIBUTION_SPLIT}.txt"
    # like the render stage: an earlier attempt's images are kept only when resuming it (a
    # finished listing); with another record (e.g. another world seed) they are drawn again
    if not (resumed and listing.is_file() and len(listing.read_text().split()) == n):
        write_toy_dataset(root, n, split=IN_DISTRIBUTION_SPLIT, seed=world.seed,
                          image_size=world.image_size, progress=run.plan.progress)  # fmt: skip
    models = {}
    for name, ckpt in model_folders(run).items():
        print(f"  {name}: {ckpt.relative_to(run.out)}")
        models[name] = evaluate_checkpoint(
            run, ckpt, run.folder(STAGE) / name, IN_DISTRIBUTION_SPLIT, n
        )
    return {"split": IN_DISTRIBUTION_SPLIT, "images": n, "models": models}


def variant_view(result: dict[str, Any], var: dict[str, Any] | None) -> dict[str, Any] | None:
    """The variants stage's result with each scored variant's ``segmentation`` replaced by its
    in-distribution scores (so the segmentation table's variant rows read them)."""
    if var is None:
        return None
    variants = {}
    for name, entry in var.get("variants", {}).items():
        seg = result["models"].get(name) if name in SEGMENTED_VARIANTS else None
        if seg:
            variants[name] = {**entry, "segmentation": seg}
    return {**var, "variants": variants}


# ----------------------------------------------------------------------------------------------
# Table 6 on both splits (pure)


def table6_shares(ev: dict[str, Any], fs: dict[str, Any]) -> dict[str, float]:
    """SSR's mIoU over the fully supervised decoder's, in %, per CRF mode both have:
    ``{"without CRF": share, "with CRF": share}``."""
    out = {}
    for key, label in CRF_LABELS:
        if key in ev["rows"] and key in fs["rows"]:
            den = fs["rows"][key]["miou"]
            out[label] = 100 * ev["rows"][key]["miou"] / den if den > 0 else math.nan
    return out


def share_gaps(protocol: dict[str, float], other: dict[str, float]) -> dict[str, float]:
    """``protocol - other`` in percentage points, per CRF mode both have."""
    return {label: protocol[label] - other[label] for label in protocol if label in other}


def share_name(split: str | None, label: str) -> str:
    """Headline row name of a split's share; a split without a role (VOC val) keeps the plain
    name."""
    role = SPLIT_ROLES.get(split or "")
    if role is None:
        return f"share of fully supervised ({label})"
    return f"share of fully supervised, {split} split: {role} ({label})"


def gap_name(split: str, label: str) -> str:
    return f"share gap, {IN_DISTRIBUTION_SPLIT} - {split} ({label})"


def share_rows(
    measured: list[tuple[str, dict[str, Any], dict[str, Any]]], dataset: str
) -> list[dict[str, Any]]:
    """Headline rows from ``[(split, SSR's segmentation result, the fully supervised one)]``:
    per CRF mode, each split's share of the fully supervised decoder beside the paper's 97.4
    (VOC's: shown, not subtracted on another dataset), then, when the in-distribution split
    and another are both given, the gap between their shares in percentage points."""
    paper = R.PAPER["share_fully_supervised"]
    note = (
        "denominator: the same decoder trained on ground-truth masks (the paper: a fully "
        f"supervised CLIP ViT-B, {paper['denominator']})"
    )
    shares = {split: table6_shares(ev, fs) for split, ev, fs in measured}
    rows = []
    for _, label in CRF_LABELS:
        for split, values in shares.items():
            if label in values:
                rows.append(
                    R.summary_row(
                        share_name(split, label),
                        values[label],
                        paper["value"],
                        paper["dataset"],
                        dataset,
                        note,
                    )
                )
        if IN_DISTRIBUTION_SPLIT not in shares:
            continue
        for split, values in shares.items():
            gap = share_gaps(shares[IN_DISTRIBUTION_SPLIT], values).get(label)
            if split == IN_DISTRIBUTION_SPLIT or gap is None:
                continue
            rows.append(
                R.summary_row(
                    gap_name(split, label),
                    gap,
                    None,
                    None,
                    dataset,
                    "percentage points: how much of SSR's share of the fully supervised decoder "
                    f"depends on context the {split} test no longer offers",
                )
            )
    return rows
