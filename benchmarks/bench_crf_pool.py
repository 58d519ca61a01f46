"""Dense CRF on every core: ``evaluate``'s loop (:func:`ssrseg.engine.infer.evaluate_dataset`)
with the CRF in 0 (main process), 1 and 2 worker processes, and ``crf.labels: all`` vs
``present``.

A VOC-layout dataset of ``--images`` random images at ``--size`` (default 40 x 500 x 375, VOC's
typical size) is written to a temporary folder; the model is a cheap random convolution with
``--labels`` outputs (21: VOC; 81: COCO) whose logits vary smoothly, so the forward costs little
and the CRF (``--iterations``, 10 as WeCLIP) is what is timed: this is the CRF stage's scaling,
not a model benchmark. Each setting runs the whole loop once per round, interleaved with the
others (``--repeats`` rounds). The masks of every setting are checked equal to the serial
path's. The target of issue 24 is ``workers_1 / workers_2 >= 1.7`` on an idle 2-core machine.

    python benchmarks/bench_crf_pool.py                 # 40 VOC-size images, 21 labels
    python benchmarks/bench_crf_pool.py --labels 81     # COCO's label count
    python benchmarks/bench_crf_pool.py --smoke         # 4 tiny images (checks the script)

JSON: ``benchmarks/results/crf_pool_cpu.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

# The CRF workers are spawned processes, which import this script again (as __mp_main__):
# torch and the model code are imported inside the functions, so a worker starts in the time
# ssrseg's own workers take (numpy + pydensecrf), not in the seconds torch takes to load.
if TYPE_CHECKING:
    from ssrseg.engine.infer import Segmenter

RESULTS = Path(__file__).parent / "results"


def write_voc(root: Path, n: int, h: int, w: int, labels: int) -> None:
    """``n`` random smooth images and masks in the VOC layout (val split)."""
    from ssrseg.viz import save_label_png  # see the note at the imports

    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    ids = []
    for i in range(n):
        base = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR))
        Image.fromarray(image).save(root / "JPEGImages" / f"{i:06d}.jpg", quality=95)
        mask = rng.integers(0, min(labels, 4), (h, w)).astype(np.uint8)
        save_label_png(root / "SegmentationClass" / f"{i:06d}.png", mask)
        ids.append(f"{i:06d}")
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "val.txt").write_text("\n".join(ids) + "\n")


def segmenter(labels: int, crf: Any) -> Segmenter:
    import torch  # see the note at the imports

    from ssrseg.config import InferConfig
    from ssrseg.engine.infer import Segmenter

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, labels, 16, stride=16).eval()
    with torch.no_grad():
        net.weight.mul_(30.0)
    infer = InferConfig(scales=(1.0,), flip=False, long_side=0)
    return Segmenter(net, labels, 16, infer, crf=crf)


def main() -> int:
    import torch  # see the note at the imports

    from _timing import load_average, machine_info, write_json
    from ssrseg.config import CRFConfig
    from ssrseg.data import build_dataset
    from ssrseg.engine.infer import evaluate_dataset

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--size", default="500x375", help="W x H")
    p.add_argument("--labels", type=int, default=21)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="4 images of 64 x 48, 1 round")
    p.add_argument("--out", default=str(RESULTS / "crf_pool_cpu.json"))
    args = p.parse_args()
    if args.smoke:
        args.images, args.size, args.repeats, args.iterations = 4, "64x48", 1, 2
    w, h = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(1)  # the main process's forward is cheap; the pool is measured
    results: dict[str, Any] = {"settings": vars(args), "machine": machine_info(torch.device("cpu"))}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "VOC2012"
        write_voc(root, args.images, h, w, args.labels)
        dataset = build_dataset("voc", root, "val", require_labels=False)
        crf_all = CRFConfig(iterations=args.iterations)
        legs = {f"workers_{n}": (n, crf_all) for n in args.workers}
        legs["present_workers_0"] = (0, dataclasses.replace(crf_all, labels="present"))
        times: dict[str, list[float]] = {k: [] for k in legs}
        masks: dict[str, Any] = {}
        load_before = load_average()
        for _ in range(args.repeats):
            for name, (workers, crf) in legs.items():
                seg = segmenter(args.labels, crf)
                out = Path(tmp) / name
                start = time.perf_counter()
                matrices = evaluate_dataset(
                    seg, dataset, (True,), progress=False, pred_dir=out, crf_workers=workers
                )
                times[name].append(time.perf_counter() - start)
                masks[name] = (
                    matrices[True].hist.copy(),
                    [(out / f"{i}.png").read_bytes() for i in dataset.ids],
                )
        serial = masks[f"workers_{args.workers[0]}"]
        for name in legs:
            if name.startswith("workers_"):
                same = (masks[name][0] == serial[0]).all() and masks[name][1] == serial[1]
                assert same, f"{name} differs from the serial path"
        best = {k: min(v) for k, v in times.items()}
        results["seconds"] = {k: {"min": min(v), "all": v} for k, v in times.items()}
        results["per_image_s"] = {k: v / args.images for k, v in best.items()}
        if "workers_1" in best and "workers_2" in best:
            results["speedup_2_vs_1_workers"] = best["workers_1"] / best["workers_2"]
        # `present` runs in the main process, so its reference is the serial `all` leg: without
        # `--workers 0` there is nothing to compare it with
        if "workers_0" in best:
            results["present_vs_all_speedup"] = best["workers_0"] / best["present_workers_0"]
            hist_all, hist_present = masks["workers_0"][0], masks["present_workers_0"][0]
            results["present_vs_all_pixels_changed_share"] = float(
                1 - np.trace(hist_present) / max(1, hist_present.sum())
            ) - float(1 - np.trace(hist_all) / max(1, hist_all.sum()))
        results["load_average"] = {"before": load_before, "after": load_average()}
    write_json(Path(args.out), results)
    print({k: round(v, 3) for k, v in best.items()}, file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
