"""The toy-world demo: SSR end to end on a CPU in minutes (``ssrseg demo`` / ``make demo``).

Stages, each with a progress bar:
1. render the toy world (train split for training and scoring, ``debiased`` held-out split);
2. trivial baselines and the spec's Table 3 rows (initial CAM; + CLIP attention; + DINO
   attention; + SGC mask; + PAR) scored against the ground truth of training images;
3. SSR training (CMPA heads + decoder on online pseudo labels), the real trainer;
4. Table 4 (raw CLIP CAM vs CMPA CAM) and Table 3 again in the CMPA-projected space;
5. segmentation of the held-out split with and without CRF, the same decoder trained on
   ground-truth masks (the fully supervised upper bound) and SSR's share of it (Table 6);
6. a report folder: ``report.json``, ``report.md`` and figure panels.

Nothing here is toy-specific maths: the stages call the same ``PseudoLabeler``, ``Trainer``
and ``Segmenter`` as the VOC / COCO commands; only the data and weights are the toy world's.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssrseg.config import SSRConfig, atomic_write_text, config_to_dict, load_config, save_config

# The spec's Table 3 rows as config overrides of the pseudo labeller. CAM-seed rows are scored
# before PAR (a [decision]: the paper does not say); the last row is the full pseudo label.
TABLE3_ROWS: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "initial CAM",
        {
            "affinity": {"use_clip_attention": False, "use_dino_attention": False, "mask": "none"},
            "par": {"enabled": False},
        },
    ),
    (
        "+ CLIP attention (box mask)",
        {
            "affinity": {"use_clip_attention": True, "use_dino_attention": False, "mask": "box"},
            "par": {"enabled": False},
        },
    ),
    (
        "+ DINO attention (box mask)",
        {
            "affinity": {"use_clip_attention": True, "use_dino_attention": True, "mask": "box"},
            "par": {"enabled": False},
        },
    ),
    (
        "+ SGC mask",
        {
            "affinity": {"use_clip_attention": True, "use_dino_attention": True, "mask": "sgc"},
            "par": {"enabled": False},
        },
    ),
    (
        "+ PAR (pseudo labels)",
        {
            "affinity": {"use_clip_attention": True, "use_dino_attention": True, "mask": "sgc"},
            "par": {"enabled": True},
        },
    ),
)

# Diagnostic rows: attention refinement without any column mask, to show what the masks fix.
EXTRA_ROWS: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "CLIP+DINO attention, no mask",
        {
            "affinity": {"use_clip_attention": True, "use_dino_attention": True, "mask": "none"},
            "par": {"enabled": False},
        },
    ),
)


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


def _merge(base: SSRConfig, overrides: dict[str, Any]) -> SSRConfig:
    changes = {}
    for section, values in overrides.items():
        changes[section] = dataclasses.replace(getattr(base, section), **values)
    return dataclasses.replace(base, **changes)


def _batches(indices: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def _images01(samples: Sequence[Any], device: torch.device) -> torch.Tensor:
    arr = np.stack([s.image for s in samples])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255).to(device)


def score_labeler(
    labeler: torch.nn.Module,
    dataset: Any,
    indices: Sequence[int],
    batch: int,
    cmpa: Any = None,
    desc: str = "score",
    keep: Callable[[str, Any], None] | None = None,
) -> Any:
    """Run ``labeler`` over ``dataset[indices]`` (same-size images) and score its labels.

    Returns a ``ConfusionMatrix``; ``keep(image_id, output_row)`` sees each image's output.
    """
    from tqdm import tqdm

    from ssrseg.metrics import ConfusionMatrix

    device = next(iter(labeler.buffers())).device
    conf = ConfusionMatrix(dataset.num_classes)
    bar = tqdm(total=len(indices), desc=desc, leave=False)
    for chunk in _batches(indices, batch):
        samples = [dataset[i] for i in chunk]
        out = labeler(_images01(samples, device), [s.labels for s in samples], cmpa=cmpa)
        labels = out.labels.cpu().numpy()
        for j, sample in enumerate(samples):
            conf.update(labels[j], sample.mask)
            if keep is not None:
                keep(sample.image_id, (sample, out, j))
        bar.update(len(samples))
    bar.close()
    return conf


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


def row_summary(result: dict[str, Any]) -> dict[str, float]:
    """P / R / mIoU of a metrics dict (class means), in percent."""
    return {
        "precision": 100 * float(result["precision"]),
        "recall": 100 * float(result["recall"]),
        "miou": 100 * float(result["miou"]),
    }


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


def _table_md(title: str, rows: list[tuple[str, dict[str, float]]], note: str = "") -> str:
    lines = [f"### {title}", "", "| row | P | R | mIoU |", "|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['precision']:.1f} | {r['recall']:.1f} | {r['miou']:.1f} |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _print_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> None:
    print(f"\n{title}")
    print(f"  {'row':<34} {'P':>6} {'R':>6} {'mIoU':>6}")
    for name, r in rows:
        print(f"  {name:<34} {r['precision']:6.1f} {r['recall']:6.1f} {r['miou']:6.1f}")


def run_demo(
    out_dir: str | Path,
    plan: DemoPlan = DemoPlan(),
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    device: str = "cpu",
) -> dict[str, Any]:
    """Run every stage; returns the report dict (also written to ``out_dir/report.json``)."""
    from ssrseg.data import build_dataset
    from ssrseg.data.toy import write_toy_dataset
    from ssrseg.engine.infer import Segmenter, evaluate_dataset
    from ssrseg.engine.train import Trainer
    from ssrseg.model.ssr import SSRModel
    from ssrseg.pseudo.labeler import PseudoLabeler, build_pseudo_labeler

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = out / "data"
    extra = [f"data.root={root}", f"train.seed={plan.seed}", *overrides]
    cfg = load_config(config if config is not None else default_config_path(), extra)
    save_config(cfg, out)
    torch.manual_seed(plan.seed)
    dev = torch.device(device)
    timings: dict[str, float] = {}

    def lap(name: str, start: float) -> None:
        timings[name] = round(time.perf_counter() - start, 1)

    # 1. data ----------------------------------------------------------------------------------
    start = time.perf_counter()
    print("[1/6] rendering the toy world")
    for split, n in (("train", plan.n_train), ("debiased", plan.n_val)):
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file() or len(listing.read_text().split()) != n:
            write_toy_dataset(root, n, split=split, seed=plan.seed, progress=True)
    train_set = build_dataset("toy", str(root), "train")
    val_set = build_dataset("toy", str(root), "debiased")
    score_idx = list(range(min(plan.n_score, len(train_set))))
    lap("data", start)

    # 2. baselines and Table 3 in the raw CLIP space --------------------------------------------
    start = time.perf_counter()
    print("[2/6] CAMs and pseudo labels: the Table 3 rows (raw CLIP space)")
    base_labeler = build_pseudo_labeler(cfg, dev)
    clip, tok, dino = base_labeler.clip, base_labeler.tokenizer, base_labeler.dino
    prompts = base_labeler.prompts

    def labeler_for(overrides_: dict[str, Any], cfg_: SSRConfig = cfg) -> PseudoLabeler:
        return PseudoLabeler(clip, tok, dino, prompts, _merge(cfg_, overrides_)).to(dev)

    report: dict[str, Any] = {"plan": dataclasses.asdict(plan), "config": config_to_dict(cfg)}
    baselines = {
        k: row_summary(v.compute()) for k, v in baseline_scores(train_set, score_idx).items()
    }
    raw_rows: list[tuple[str, dict[str, float]]] = []
    raw_preds: dict[str, dict[str, np.ndarray]] = {}
    for name, ov in (*TABLE3_ROWS, *EXTRA_ROWS):
        preds: dict[str, np.ndarray] = {}

        def keep(image_id: str, row: Any, store: dict[str, np.ndarray] = preds) -> None:
            _, o, j = row
            store[image_id] = o.labels[j].cpu().numpy()

        conf = score_labeler(
            labeler_for(ov), train_set, score_idx, plan.batch, desc=name, keep=keep
        )
        raw_rows.append((name, row_summary(conf.compute())))
        raw_preds[name] = preds
    report["baselines"] = baselines
    report["table3_raw"] = dict(raw_rows)
    report["context_leak"] = {
        name: context_leak(train_set, score_idx, raw_preds[name])
        for name in ("initial CAM", "+ DINO attention (box mask)", "+ SGC mask")
    }
    _print_table("Baselines (train images)", list(baselines.items()))
    _print_table("Table 3, raw CLIP space (train images)", raw_rows)
    lap("table3_raw", start)

    # 3. SSR training ----------------------------------------------------------------------------
    start = time.perf_counter()
    print(f"[3/6] SSR training: {plan.iterations} iterations")
    train_cfg = _merge(
        cfg,
        {"train": {"iterations": plan.iterations, "val_every": 0, "output_dir": str(out / "ssr")}},
    )
    model = SSRModel(train_cfg, labeler_for({}, train_cfg), train_set.num_classes).to(dev)
    trainer = Trainer(train_cfg, model, train_set, out / "ssr", val_set=None)
    trainer.fit()
    lap("train_ssr", start)

    # 4. Table 4 and Table 3 in the CMPA space ------------------------------------------------
    start = time.perf_counter()
    print("[4/6] CMPA: Table 4 (raw vs CMPA initial CAM) and Table 3 in the projected space")
    cmpa = model.cmpa
    cmpa_rows: list[tuple[str, dict[str, float]]] = []
    if cmpa is not None:
        cmpa.eval()
        for name, ov in TABLE3_ROWS:
            ov2 = {**ov, "cam": {"projected": True}}
            conf = score_labeler(
                labeler_for(ov2), train_set, score_idx, plan.batch, cmpa=cmpa, desc=name
            )
            cmpa_rows.append((name, row_summary(conf.compute())))
        table4 = [("raw CLIP CAM", raw_rows[0][1]), ("CMPA CAM", cmpa_rows[0][1])]
        report["table4"] = dict(table4)
        report["table3_cmpa"] = dict(cmpa_rows)
        _print_table("Table 4: initial CAM (train images)", table4)
        _print_table("Table 3, CMPA-projected space (train images)", cmpa_rows)
    lap("table3_cmpa", start)

    # 5. segmentation, CRF, fully supervised upper bound -------------------------------------
    start = time.perf_counter()
    print("[5/6] segmentation of the held-out (debiased) split; fully supervised upper bound")
    modes: tuple[bool, ...] = (False, True) if plan.crf else (False,)
    if plan.crf:
        try:
            from ssrseg.engine.infer import check_crf

            check_crf(cfg.crf)
        except RuntimeError as exc:
            print(f"CRF rows skipped: {exc}")
            modes = (False,)

    def segment_scores(m: SSRModel) -> dict[str, dict[str, float]]:
        m.eval()
        seg = Segmenter(
            m.segment,
            train_set.num_classes,
            m.patch_size,
            cfg.infer,
            class_names=train_set.class_names,
            crf=cfg.crf,
            device=dev,
        )
        mats = evaluate_dataset(seg, val_set, modes, progress=True)
        return {
            ("with CRF" if k else "without CRF"): row_summary(v.compute()) for k, v in mats.items()
        }

    ssr_seg = segment_scores(model)
    gt_cfg = _merge(
        cfg,
        {
            "train": {
                "iterations": plan.gt_iterations,
                "val_every": 0,
                "supervision": "gt",
                "output_dir": str(out / "gt"),
            },
            "cmpa": {"enabled": False},
        },
    )
    gt_model = SSRModel(gt_cfg, labeler_for({}, gt_cfg), train_set.num_classes).to(dev)
    Trainer(gt_cfg, gt_model, train_set, out / "gt", val_set=None).fit()
    gt_seg = segment_scores(gt_model)
    share = {
        k: 100 * ssr_seg[k]["miou"] / gt_seg[k]["miou"] if gt_seg[k]["miou"] > 0 else float("nan")
        for k in ssr_seg
    }
    report["segmentation"] = {"ssr": ssr_seg, "fully_supervised": gt_seg, "share_percent": share}
    _print_table(
        "Segmentation, held-out debiased split",
        [(f"SSR {k}", v) for k, v in ssr_seg.items()]
        + [(f"fully supervised {k}", v) for k, v in gt_seg.items()],
    )
    for k, v in share.items():
        print(f"  SSR / fully supervised ({k}): {v:.1f}% (denominator: same decoder on GT masks)")
    lap("segmentation", start)

    # 6. figures and report --------------------------------------------------------------------
    start = time.perf_counter()
    print("[6/6] figures and report")
    write_panels(out / "panels", train_set, score_idx[: plan.panels], labeler_for({}), model)
    timings["total"] = round(time.perf_counter() - t0, 1)
    report["timings_s"] = timings
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=float))
    atomic_write_text(out / "report.md", report_markdown(report))
    lap("report", start)
    print(f"\nreport: {out / 'report.md'} (total {timings['total']:.0f} s)")
    return report


def write_panels(
    folder: Path, dataset: Any, indices: Sequence[int], labeler: Any, model: Any
) -> None:
    """image | CAM | refined | pseudo label | prediction | truth, one PNG per image."""
    import torch.nn.functional as F

    from ssrseg.viz import colorize, overlay_cam, save_panel

    device = next(iter(labeler.buffers())).device
    for i in indices:
        s = dataset[i]
        img = _images01([s], device)
        out = labeler(img, [s.labels])
        h, w = s.mask.shape
        cam = F.interpolate(out.cams[0][None], size=(h, w), mode="bilinear", align_corners=False)
        cam_max = cam[0].max(0).values.cpu().numpy() if len(s.labels) else np.zeros((h, w))
        ref_max = out.refined[0].max(0).values.cpu().numpy() if len(s.labels) else np.zeros((h, w))
        with torch.no_grad():
            logits = model.segment(img)
            pred = F.interpolate(logits, size=(h, w), mode="bilinear").argmax(1)[0].cpu().numpy()
        save_panel(
            folder / f"{s.image_id}.png",
            [
                ("image", s.image),
                ("initial CAM", overlay_cam(s.image, cam_max)),
                ("refined CAM", overlay_cam(s.image, ref_max)),
                ("pseudo label", colorize(out.labels[0].cpu().numpy().astype(np.uint8))),
                ("prediction", colorize(pred.astype(np.uint8))),
                ("ground truth", colorize(s.mask)),
            ],
        )


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    parts = ["# SSR on the toy world\n"]
    parts.append(_table_md("Trivial baselines (train images)", list(report["baselines"].items())))
    parts.append(
        _table_md(
            "Table 3, raw CLIP space (train images)",
            list(report["table3_raw"].items()),
            "CAM-seed rows are scored before PAR, with the background score (1 - max CAM).",
        )
    )
    if "table4" in report:
        parts.append(
            _table_md("Table 4: initial CAM (train images)", list(report["table4"].items()))
        )
        parts.append(
            _table_md(
                "Table 3, CMPA-projected space (train images)", list(report["table3_cmpa"].items())
            )
        )
    leak = report["context_leak"]
    lines = [
        "### Background over-activation",
        "",
        "Share (%) of a class's predicted pixels on ground-truth background, for images "
        "showing the class's home context vs elsewhere.",
        "",
        "| row | home context | elsewhere |",
        "|---|---|---|",
    ]
    for name, v in leak.items():
        lines.append(f"| {name} | {v['home']:.1f} | {v['elsewhere']:.1f} |")
    parts.append("\n".join(lines) + "\n")
    seg = report["segmentation"]
    rows = [(f"SSR, {k}", v) for k, v in seg["ssr"].items()] + [
        (f"fully supervised, {k}", v) for k, v in seg["fully_supervised"].items()
    ]
    note = "; ".join(
        f"SSR / fully supervised ({k}): {v:.1f}%" for k, v in seg["share_percent"].items()
    )
    parts.append(
        _table_md(
            "Segmentation, held-out debiased split",
            rows,
            note + " (denominator: the same decoder trained on ground-truth masks).",
        )
    )
    parts.append(
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in report["timings_s"].items()) + "\n"
    )
    return "\n".join(parts)


def default_config_path() -> Path:
    """``configs/toy.yaml`` of the working directory, else of the source checkout."""
    candidates = [Path.cwd() / "configs" / "toy.yaml"]
    candidates.append(Path(__file__).resolve().parents[3] / "configs" / "toy.yaml")
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        "the toy preset configs/toy.yaml was not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); pass --config PATH"
    )
