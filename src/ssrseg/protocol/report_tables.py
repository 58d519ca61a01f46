"""The tables of the ``report`` stage: the stages' results as rows beside the paper's numbers
(:mod:`ssrseg.protocol.report`), the toy variants' rows and the summary.

Only stages whose outputs are current (finished with the run's configuration) contribute
numbers."""

from __future__ import annotations

from typing import Any

from ssrseg.protocol import report as R
from ssrseg.protocol.in_distribution import (
    CRF_LABELS,
    SPLIT_ROLES,
    share_rows,
    table6_shares,
    variant_view,
)
from ssrseg.toy.diagnostics import best_last_k


def _result(run: Any, stage: str) -> dict[str, Any] | None:
    """A current stage's result dict (None when it did not run or is stale)."""
    if run.status.get(stage) not in ("reuse",) and not str(run.status.get(stage, "")).startswith(
        "ran"
    ):
        return None
    state = run.states.get(stage)
    if not state or state.get("status") != "done":
        return None
    result = state.get("result")
    if not isinstance(result, dict) or "skipped" in result:
        return None
    return result


def _tables(run: Any, report: dict[str, Any]) -> None:
    cfg = run.cfg
    dataset = cfg.data.dataset
    seeds, cmpa = _result(run, "seeds"), _result(run, "cmpa")
    ev, fs = _result(run, "eval"), _result(run, "fully_supervised")
    var = _result(run, "variants")
    t3_set, t3_paper = R.paper_rows("table3")
    t4_set, t4_paper = R.paper_rows("table4")

    if seeds and "baselines" in seeds:
        rows = [R.make_row(k, v) for k, v in seeds["baselines"].items()]
        R.add_table(
            report,
            R.make_table("baselines", f"Trivial baselines ({seeds['split']} images)", rows),
        )
    if seeds:
        rows = []
        for name, values in seeds["rows"].items():
            paper = t4_paper["raw CLIP CAM"] if name == "initial CAM" else None
            rows.append(R.make_row(name, values, paper, t4_set, dataset))
        tab = R.make_table(
            "table3_raw",
            f"Table 3, raw CLIP space ({seeds['split']} split, {seeds['images']:,} images)",
            rows,
            note="CAM-seed rows are scored before PAR with the background score (1 - max CAM), "
            "the 'after PAR' rows and '+ PAR (pseudo labels)' after it. The paper's Table 3 is "
            "in the CMPA space (next tables); its raw initial CAM is Table 4's 58.6.",
        )
        tab["short"] = "T3 raw"
        R.add_table(report, tab)
    if seeds or cmpa:
        raw = seeds["rows"].get("initial CAM") if seeds else None
        proj = cmpa["rows"].get("initial CAM") if cmpa else None
        rows = [
            R.make_row("raw CLIP CAM", raw, t4_paper["raw CLIP CAM"], t4_set, dataset),
            R.make_row(
                "direct feature fine-tuning",
                None,
                t4_paper["direct feature fine-tuning"],
                t4_set,
                dataset,
                "paper only",
            ),
            R.make_row(
                "intra-modal contrastive",
                None,
                t4_paper["intra-modal contrastive"],
                t4_set,
                dataset,
                "paper only",
            ),
            R.make_row("CMPA CAM", proj, t4_paper["CMPA CAM"], t4_set, dataset),
        ]
        rows += _kmeans_rows(var, run.cfg.train.iterations, t4_paper["CMPA CAM"], t4_set, dataset)
        note = ""
        if var and "kmeans" in var["variants"]:
            rows[3]["note"] = "class-mean prototypes, ssrseg's variant"
            note = (
                "CMPA CAM: the class-mean prototypes (the image-level class is the positive); "
                "K-means: the paper's prototypes (K-means clusters of the image and text "
                f"features, refreshed every cmpa.refresh_every = {run.cfg.cmpa.refresh_every} "
                "iterations; a sample's cluster is its positive), trained in the variants "
                "stage with the same seed."
            )
            if "+" in var["variants"]["kmeans"].get("trained_as", ""):
                note += _COMBINED
        tab = R.make_table("table4", "Table 4: initial CAM", rows, note=note)
        tab["short"] = "T4"
        R.add_table(report, tab)
    if cmpa:
        rows = [
            R.make_row(name, values, t3_paper.get(name), t3_set, dataset)
            for name, values in cmpa["rows"].items()
        ]
        tab = R.make_table(
            "table3_cmpa",
            f"Table 3, CMPA-projected space ({cmpa['split']} split, {cmpa['images']:,} images)",
            rows,
            note="The paper's Table 3 rows; its last row (+ SGC mask) is the paper's "
            "'CAM seeds' figure 78.7.",
        )
        tab["short"] = "T3 CMPA"
        R.add_table(report, tab)
    if seeds and seeds.get("attention_grouping"):
        R.add_table(report, _grouping_table(run, seeds["attention_grouping"]))
    if seeds and seeds.get("context_leak"):
        rows = [R.make_row(k, v) for k, v in seeds["context_leak"].items()]
        R.add_table(
            report,
            R.make_table(
                "context_leak",
                "Background over-activation",
                rows,
                columns=("home", "elsewhere"),
                note="Share (%) of a class's predicted pixels on ground-truth background, for "
                "images showing the class's home context vs elsewhere.",
            ),
        )
    if ev or fs:
        R.add_table(report, _segmentation_table(run, "segmentation", ev, fs, var))
    ind = _result(run, "eval_in_distribution")
    if ind:
        models = ind["models"]
        R.add_table(
            report,
            _segmentation_table(
                run,
                "segmentation_in_distribution",
                models.get("ssr"),
                models.get("fully_supervised"),
                variant_view(ind, var),
            ),
        )


def _segmentation_table(
    run: Any,
    key: str,
    ev: dict[str, Any] | None,
    fs: dict[str, Any] | None,
    var: dict[str, Any] | None,
) -> dict[str, Any]:
    """SSR, the variants' segmentation rows and the fully supervised decoder on one split,
    with SSR's share of the latter and the DINO branch's reading in the note."""
    dataset = run.cfg.data.dataset
    paper_val = R.PAPER["val"].get(dataset)
    val_set = dataset if paper_val else "voc"
    paper_val = paper_val or R.PAPER["val"]["voc"]
    rows = []
    split = (ev or fs or {}).get("split", run.cfg.data.val_split)
    for mode, label in CRF_LABELS:
        if ev and mode in ev["rows"]:
            rows.append(
                R.make_row(f"SSR {label}", ev["rows"][mode], paper_val[label], val_set, dataset)
            )
    rows += _branch_rows(var, ev)  # beside the plain SSR rows
    for mode, label in CRF_LABELS:
        if fs and mode in fs["rows"]:
            rows.append(R.make_row(f"fully supervised {label}", fs["rows"][mode]))
    note = ""
    if ev and fs:
        shares = table6_shares(ev, fs)
        note = "; ".join(f"SSR / fully supervised ({k}): {v:.1f}%" for k, v in shares.items())
        note += " (denominator: the same decoder trained on ground-truth masks)."
    reading = _branch_reading(var, ev, run.cfg.train.iterations)
    if reading:
        note = f"{note} {reading}".strip()
    n = (ev or fs or {}).get("images", 0)
    role = SPLIT_ROLES.get(split)
    title = f"Segmentation, {split} split ({n:,} images)" + (f": {role}" if role else "")
    tab = R.make_table(key, title, rows, note=note)
    tab["short"] = "seg" if key == "segmentation" else "seg in-dist."
    return tab


def _variant(var: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    return (var or {}).get("variants", {}).get(name)


def _kmeans_rows(
    var: dict[str, Any] | None,
    iterations: int,
    paper: dict[str, float],
    paper_set: str,
    dataset: str,
) -> list[dict[str, Any]]:
    """Table 4 rows of the variants stage: the K-means CMPA CAM (and, when the variants trained
    shorter than ``train``, the class-mean reference of the same length)."""
    km = _variant(var, "kmeans")
    if var is None or km is None:
        return []
    n = var["iterations"]
    length = "" if n == iterations else f", {n} iterations"
    rows = [
        R.make_row(
            f"CMPA CAM, K-means prototypes{length}",
            km.get("cmpa_cam"),
            paper,
            paper_set,
            dataset,
            "the paper's variant",
        )
    ]
    plain = _variant(var, "plain")
    if plain is not None and length:
        rows.append(
            R.make_row(
                f"CMPA CAM, class-mean prototypes{length}",
                plain.get("cmpa_cam"),
                paper,
                paper_set,
                dataset,
                "reference",
            )
        )
    return rows


def _branch_rows(var: dict[str, Any] | None, ev: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Segmentation rows of WeCLIP+'s DINO branch (and of the plain reference of the same
    length when the variants trained shorter than ``train``)."""
    out = []
    n = (var or {}).get("iterations")
    for name, label in (
        ("plain", f"SSR, {n} iterations (reference)"),
        ("dino_branch", "SSR + DINO branch (WeCLIP+)"),
    ):
        entry = _variant(var, name)
        seg = (entry or {}).get("segmentation")
        if not seg:
            continue
        for key, crf in (("no_crf", "without CRF"), ("crf", "with CRF")):
            if key in seg["rows"]:
                out.append(R.make_row(f"{label} {crf}", seg["rows"][key]))
    return out


def _branch_reading(var: dict[str, Any] | None, ev: dict[str, Any] | None, iterations: int) -> str:
    """One line: the DINO branch's mIoU change against plain SSR of the same length and seed."""
    branch = (_variant(var, "dino_branch") or {}).get("segmentation")
    if var is None or not branch:
        return ""
    plain = (_variant(var, "plain") or {}).get("segmentation")
    ref = plain if plain else (ev if var["iterations"] == iterations else None)
    if not ref:
        return ""
    parts = []
    for key, crf in (("no_crf", "without CRF"), ("crf", "with CRF")):
        if key in branch["rows"] and key in ref["rows"]:
            b, r = branch["rows"][key], ref["rows"][key]
            text = f"{b['miou'] - r['miou']:+.1f} mIoU {crf}"
            if "precision" in b and "precision" in r:  # which way it moves: P / R
                text += (
                    f" (P {r['precision']:.1f} -> {b['precision']:.1f}, "
                    f"R {r['recall']:.1f} -> {b['recall']:.1f})"
                )
            parts.append(text)
    if not parts:
        return ""
    text = (
        "DINO branch vs plain SSR (same seed, "
        f"{var['iterations']} iterations each, {branch['images']:,} images): "
        + ", ".join(parts)
        + "; one seed, so a difference of this size is a single measurement, not a noise-"
        "bounded effect."
    )
    if "+" in (_variant(var, "dino_branch") or {}).get("trained_as", ""):
        text += _COMBINED
    return text


_COMBINED = (
    " The DINO branch and the K-means prototypes were trained in one run: with cam.projected "
    "false the pseudo labels never read the CMPA heads and the heads' loss never reads the "
    "decoder, so each row differs from the plain run in its own switch (and the random draws)."
)


def _grouping_table(run: Any, grouping: dict[str, Any]) -> dict[str, Any]:
    """Per-block same-object attention mass / chance of the CLIP and DINO backbones."""
    rows_in = grouping["rows"]
    columns = [
        c
        for c in ("clip", "dino", "clip_transition", "dino_transition")
        if any(c in v for v in rows_in.values())
    ]
    rows = [R.make_row(name, values) for name, values in rows_in.items()]
    aff = run.cfg.affinity
    picks = []
    for name, used in (("clip", aff.clip_layers), ("dino", aff.dino_layers)):
        k = best_last_k(
            {r: {"v": v.get(f"{name}_transition", float("nan"))} for r, v in rows_in.items()}, "v"
        )
        if k is not None:
            picks.append(f"{name.upper()} k = {k} (this run: {used})")
    tab = R.make_table(
        "attention_grouping",
        f"Attention grouping ({grouping['split']} split, {grouping['images']:,} images, "
        "never scored)",
        rows,
        columns=columns,
        note="Same-object attention mass over chance (1.0 = uniform attention) of foreground "
        "patches: the share of a patch's attention on patches of its own label, divided by "
        "those patches' share of the image. 'last k blocks' averages the last k blocks' "
        "attentions as affinity.clip_layers / affinity.dino_layers = k do; 'transition' is "
        "after the CLIP-ES transition (Sinkhorn, symmetrised, squared) the affinity uses. "
        "Best k after the transition: " + ("; ".join(picks) or "-") + ".",
    )
    tab["digits"] = 2
    return tab


def _summary(run: Any, report: dict[str, Any]) -> None:
    dataset = run.cfg.data.dataset
    add = report["summary"].append
    seeds, cmpa = _result(run, "seeds"), _result(run, "cmpa")
    ev, fs, ex = _result(run, "eval"), _result(run, "fully_supervised"), _result(run, "export")
    p = R.PAPER
    if cmpa and "+ SGC mask" in cmpa["rows"]:
        add(
            R.summary_row(
                "CAM seeds (CMPA CAM + CLIP / DINO attention + SGC mask), mIoU",
                cmpa["rows"]["+ SGC mask"]["miou"],
                p["seeds_miou"]["value"],
                p["seeds_miou"]["dataset"],
                dataset,
                f"{cmpa['split']} split, {cmpa['images']:,} images",
            )
        )
    if seeds and "+ PAR (pseudo labels)" in seeds["rows"]:
        add(
            R.summary_row(
                "pseudo labels (raw space, + PAR), mIoU",
                seeds["rows"]["+ PAR (pseudo labels)"]["miou"],
                None,
                None,
                dataset,
                "the paper gives none",
            )
        )
    t4_set, t4 = R.paper_rows("table4")
    for stage, space, paper_row in (
        (seeds, "raw CLIP", "raw CLIP CAM"),
        (cmpa, "CMPA", "CMPA CAM"),
    ):
        if stage and "initial CAM" in stage["rows"]:
            add(
                R.summary_row(
                    f"Table 4: {space} initial CAM, mIoU",
                    stage["rows"]["initial CAM"]["miou"],
                    t4[paper_row]["miou"],
                    t4_set,
                    dataset,
                )
            )
    paper_val = p["val"].get(dataset)
    val_set = dataset if paper_val else "voc"
    paper_val = paper_val or p["val"]["voc"]
    ind = _result(run, "eval_in_distribution")
    ind_ssr = (ind or {}).get("models", {}).get("ssr")
    for seg in (ind_ssr, ev):
        if not seg:
            continue
        role = SPLIT_ROLES.get(seg["split"])
        for key, label in (("crf", "with CRF"), ("no_crf", "without CRF")):
            if key in seg["rows"]:
                add(
                    R.summary_row(
                        f"{seg['split']} mIoU, {label}",
                        seg["rows"][key]["miou"],
                        paper_val[label]["miou"],
                        val_set,
                        dataset,
                        f"{seg['images']:,} images, multi-scale + flip"
                        + (f"; {role}" if role else ""),
                    )
                )
    if dataset == "voc":
        for key, label in (("crf", "with CRF"), ("no_crf", "without CRF")):
            archive = (ex or {}).get("archives", {}).get(key)
            note = (
                f"upload {archive} to the evaluation server"
                if archive
                else "needs the test split (export stage)"
            )
            add(
                R.summary_row(
                    f"test mIoU, {label}",
                    None,
                    p["test"]["voc"][label]["miou"],
                    "voc",
                    dataset,
                    note,
                )
            )
    share = p["share_fully_supervised"]
    measured = []
    ind_fs = (ind or {}).get("models", {}).get("fully_supervised")
    if ind_ssr and ind_fs:
        measured.append((ind_ssr["split"], ind_ssr, ind_fs))
    if ev and fs:
        measured.append((ev["split"], ev, fs))
    if measured:
        report["summary"] += share_rows(measured, dataset)
    elif ev and dataset == "voc" and "crf" in ev["rows"]:
        add(
            R.summary_row(
                "share of fully supervised (with CRF)",
                100 * ev["rows"]["crf"]["miou"] / share["denominator"],
                share["value"],
                share["dataset"],
                dataset,
                f"denominator: the paper's fully supervised {share['denominator']} mIoU",
            )
        )
