"""The toy world's ``variants`` stage: extra SSR trainings (WeCLIP+'s DINO decoder branch,
K-means CMPA prototypes), each scored beside the plain run."""

from __future__ import annotations

from typing import Any

from ssrseg.engine.checkpoint import load_model
from ssrseg.protocol.cam_rows import TABLE3_ROWS, merge_config, score_rows
from ssrseg.protocol.plan import ReproduceError, open_dataset, resolve_seed_split, seed_indices
from ssrseg.protocol.report import row_summary
from ssrseg.protocol.stages import _evaluate_stage, train_into

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


def run_variants(run: Any, resumed: bool) -> dict[str, Any]:
    """The ``variants`` stage: each variant of ``run.plan.variants`` trained from the train
    config with its overrides (same seed, ``plan.variant_iterations``) into
    ``variants/<name>/train`` and scored as :data:`VARIANTS` says.

    When the variants train for fewer iterations than ``train``, the plain configuration is
    trained at that length too, so each variant has a reference of its own length. Every part
    resumes: training from its checkpoint, evaluation per image, the CAM row from its cache.
    """
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
