"""Output folders for the ``ssrseg view`` tests, built from the real toy world (``ssrseg toy
render``): a demo-like run folder in the layout ``ssrseg reproduce`` writes, whose pseudo labels
and predictions are the ground truth with a top band erased (a different share per image, so
the per-image mIoUs differ and can be recomputed independently), and helpers to read masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ssrseg.cli import main
from ssrseg.config import config_to_dict, load_config, save_config
from ssrseg.data.toy import IN_DISTRIBUTION_SPLIT
from ssrseg.protocol.report import PAPER, make_row, make_table
from ssrseg.viz import save_label_png

REPO = Path(__file__).resolve().parents[2]
TRAIN, VAL, IN_DIST = "train", "debiased", IN_DISTRIBUTION_SPLIT


def render_toy(root: Path, split: str, n: int, seed: int = 0) -> list[str]:
    """``ssrseg toy render``; returns the split's ids."""
    code = main(["toy", "render", "--root", str(root), "--split", split, "--n", str(n),
                 "--seed", str(seed)])  # fmt: skip
    assert code == 0
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def read_labels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def degrade(gt: np.ndarray, index: int, n: int) -> np.ndarray:
    """The ground truth with the top ``index / (n + 1)`` of its objects' rows set to background
    (ignore pixels kept): the larger ``index``, the worse."""
    pred = gt.copy()
    rows = np.nonzero(((gt > 0) & (gt < 255)).any(axis=1))[0]
    if rows.size:
        top = int(rows[0])
        cut = top + (index * (int(rows[-1]) + 1 - top)) // (n + 1)
        band = pred[top:cut]
        band[band != 255] = 0
    return pred


def write_stage(folder: Path, result: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stage.json").write_text(
        json.dumps({"stage": folder.name, "status": "done", "result": result})
    )


def make_run(out: Path, n_train: int = 5, n_val: int = 4, n_id: int = 0) -> dict[str, list[str]]:
    """A finished-run folder: rendered data, ``config.yaml``, seeds (pseudo labels), eval
    (predictions without / with CRF), with ``n_id`` the in-distribution stage (SSR's and the
    fully supervised decoder's predictions), and a ``report.json`` with a Table 3 row beside
    the paper's. Returns ``{split: ids}``."""
    data = out / "data"
    ids = {TRAIN: render_toy(data, TRAIN, n_train), VAL: render_toy(data, VAL, n_val, seed=1)}
    groups = [(TRAIN, ("seeds/labels",)), (VAL, ("eval/pred/no_crf", "eval/pred/crf"))]
    if n_id:
        ids[IN_DIST] = render_toy(data, IN_DIST, n_id, seed=2)
        stage = "eval_in_distribution"
        groups.append(
            (IN_DIST, (f"{stage}/ssr/pred/no_crf", f"{stage}/fully_supervised/pred/no_crf"))
        )
        write_stage(out / stage, {"split": IN_DIST, "images": n_id})
    cfg = load_config(REPO / "configs" / "toy.yaml", [f"data.root={data}"])
    save_config(cfg, out)
    for split, folders in groups:
        for k, sub in enumerate(folders):
            for i, image_id in enumerate(ids[split]):
                gt = read_labels(data / "SegmentationClass" / f"{image_id}.png")
                # the CRF folder erases a different band, so the two layers differ
                pred = degrade(gt, (i + 2 * k) % len(ids[split]), len(ids[split]))
                save_label_png(out / sub / f"{image_id}.png", pred)
    write_stage(out / "seeds", {"split": TRAIN, "images": n_train})
    write_stage(out / "eval", {"split": VAL, "images": n_val})
    paper = PAPER["table3"]["rows"]["initial CAM"]
    measured = {"precision": 50.0, "recall": 60.0, "miou": 40.0}
    row = make_row("initial CAM", measured, paper, "voc", "toy")
    report = {
        "dataset": "toy",
        "tables": [make_table("table3_raw", "Table 3, raw CLIP space", [row])],
        "config": config_to_dict(cfg),
    }
    (out / "report.json").write_text(json.dumps(report))
    return ids


def iou_by_hand(pred: np.ndarray, gt: np.ndarray) -> float:
    """Per-image mIoU written out class by class (independent of ssrseg.metrics)."""
    valid = (gt != 255) & (pred != 255)
    values = []
    for c in sorted(set(np.unique(gt[valid])) | set(np.unique(pred[valid]))):
        inter = np.sum((pred == c) & (gt == c) & valid)
        union = np.sum(((pred == c) | (gt == c)) & valid)
        values.append(inter / union)
    return float(np.mean(values))
