"""``crf.labels: present`` against ``all`` (WeCLIP's): speed and mIoU.

Part 1, the small worlds of the data-parallel tests (tests/parallel_fakes.py): the toy CLI world
(3 images, 2 classes) and the fake VOC (2 val images, 21 classes), each scored by
``evaluate_dataset`` with its random-weight checkpoint and the CRF at 10 iterations, once per
mode: seconds and mIoU with the CRF. The checkpoints are untrained, so the mIoU values only show
whether the mode changes the scores, not how good they are.

Part 2, COCO's label count: ``--coco-images`` synthetic 640 x 480 images with 81-label
probabilities where, as in a real COCO image, background and a few classes (``--classes``)
carry almost all the mass: CRF seconds per image in each mode and the share of pixels whose
label differs between the modes.

    python benchmarks/bench_crf_labels.py            # JSON: benchmarks/results/crf_labels_cpu.json
    python benchmarks/bench_crf_labels.py --smoke    # part 1 + one small part-2 image
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _timing import RESULTS, load_average, machine_info, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from parallel_fakes import toy_world, voc_world
from ssrseg.config import CRFConfig
from ssrseg.data import build_dataset
from ssrseg.engine.crf import dense_crf
from ssrseg.engine.infer import Segmenter, evaluate_dataset


def world_part(tmp: Path, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, make in (("toy", toy_world), ("fake_voc", voc_world)):
        world = make(tmp / name)
        args = dict(zip(world.dataset[::2], world.dataset[1::2], strict=True))
        dataset = build_dataset(args["--dataset"], args["--root"], args["--split"],
                                require_labels=False)  # fmt: skip
        row: dict[str, Any] = {"images": len(dataset)}
        for mode in ("all", "present"):
            seg = Segmenter.from_checkpoint(world.checkpoint)
            seg.crf_cfg = dataclasses.replace(seg.crf_cfg, iterations=10, labels=mode)
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                cm = evaluate_dataset(seg, dataset, (True,), progress=False)[True]
                best = min(best, time.perf_counter() - start)
            row[mode] = {"seconds": best, "miou_crf": cm.compute()["miou"]}
        row["speedup"] = row["all"]["seconds"] / row["present"]["seconds"]
        row["miou_change"] = row["present"]["miou_crf"] - row["all"]["miou_crf"]
        out[name] = row
    return out


def coco_like(seed: int, h: int, w: int, k: int, present: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random image and ``k``-label probabilities dominated by background and
    ``present`` classes in blobs (the other labels share a little mass)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8)
    image = np.ascontiguousarray(np.kron(small, np.ones((32, 32, 1), dtype=np.uint8))[:h, :w])
    logits = rng.normal(size=(k, h // 16 + 1, w // 16 + 1)) * 0.5
    chosen = rng.choice(np.arange(1, k), size=present, replace=False)
    logits[0] += 3.0
    for c in chosen:
        logits[c] += 6.0 * (rng.random(logits.shape[1:]) > 0.6)
    full = np.kron(logits, np.ones((16, 16)))[:, :h, :w]
    probs = np.exp(full - full.max(axis=0))
    return image, (probs / probs.sum(axis=0)).astype(np.float32)


def coco_part(n: int, size: tuple[int, int], present: int) -> dict[str, Any]:
    h, w = size
    times = {"all": 0.0, "present": 0.0}
    changed = 0.0
    for i in range(n):
        image, probs = coco_like(i, h, w, 81, present)
        labels = {}
        for mode in times:
            start = time.perf_counter()
            q = dense_crf(image, probs, CRFConfig(labels=mode))
            times[mode] += time.perf_counter() - start
            labels[mode] = q.argmax(axis=0)
        changed += float((labels["all"] != labels["present"]).mean())
    return {
        "images": n,
        "size_hw": [h, w],
        "labels": 81,
        "classes_per_image": present,
        "seconds_per_image": {k: v / n for k, v in times.items()},
        "speedup": times["all"] / times["present"],
        "pixels_changed_share": changed / n,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--coco-images", type=int, default=3)
    p.add_argument("--classes", type=int, default=3, help="foreground classes per COCO image")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "crf_labels_cpu.json"))
    args = p.parse_args()
    size = (120, 160) if args.smoke else (480, 640)
    if args.smoke:
        args.coco_images, args.repeats = 1, 1
    torch.set_num_threads(1)
    report: dict[str, Any] = {"settings": vars(args), "machine": machine_info(torch.device("cpu"))}
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        report["worlds"] = world_part(Path(tmp), args.repeats)
    report["coco_like"] = coco_part(args.coco_images, size, args.classes)
    report["load_average"] = {"before": load_before, "after": load_average()}
    write_json(Path(args.out), report)
    print(report["worlds"], report["coco_like"], file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
