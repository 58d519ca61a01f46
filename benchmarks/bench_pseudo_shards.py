"""``ssrseg pseudo-labels`` on a 2-core machine: one process with 2 torch threads against two
``torchrun`` ranks with 1 thread each (each rank labels its share of the images).

A VOC-layout dataset of ``--images`` random images at ``--size`` (default 8 x 500 x 375) and
random CLIP ViT-B/16 + DINO ViT-S/16 weights in their real files' layouts (``--weights full``:
real sizes; ``tiny`` for a smoke run) are written to a temporary folder; ``configs/voc.yaml``
labels the train split. Both legs run as fresh processes (start-up included: it is part of
what a user pays), interleaved round after round (``--repeats``), each into an empty folder.
The JSON says which leg won, the wall-clock seconds and whether the two legs' PNGs are
byte-identical (they may differ at a few pixels where a float sum over 2 threads rounds
differently from 1 thread; ranks with equal thread counts give identical files, see
tests/test_data_parallel.py).

    python benchmarks/bench_pseudo_shards.py               # real sizes, 8 images
    python benchmarks/bench_pseudo_shards.py --images 4 12  # + cost per image without start-up
    python benchmarks/bench_pseudo_shards.py --smoke       # tiny weights, 3 small images

JSON: ``benchmarks/results/pseudo_shards_cpu.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from _timing import RESULTS, load_average, machine_info, write_json
from ssrseg.backbones.random_weights import write_random_weights
from ssrseg.data.classes import VOC_CLASSES

REPO = Path(__file__).resolve().parents[1]


def write_voc(root: Path, n: int, w: int, h: int) -> None:
    """``n`` random smooth images with image-level tags (train split, with masks)."""
    rng = np.random.default_rng(0)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"2007_{i:06d}" for i in range(n)]
    tags = {}
    for image_id in ids:
        base = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR).save(
            root / "JPEGImages" / f"{image_id}.jpg", quality=95
        )
        mask = np.zeros((h, w), dtype=np.uint8)
        c = int(rng.integers(1, len(VOC_CLASSES) + 1))
        mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = c
        tags[image_id] = [VOC_CLASSES[c - 1]]
        Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{image_id}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "tags.json").write_text(json.dumps(tags))


def differing_share(a: Path, b: Path, names: list[str]) -> float:
    """Share of pixels whose label differs between the PNGs of folders ``a`` and ``b``."""
    diff = total = 0
    for name in names:
        x, y = np.asarray(Image.open(a / name)), np.asarray(Image.open(b / name))
        diff, total = diff + int((x != y).sum()), total + x.size
    return diff / max(total, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_leg(argv: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(
            f"{' '.join(argv[:6])} ...: exit {done.returncode}\n{done.stderr[-3000:]}"
        )
    return took


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--images", type=int, nargs="+", default=[8],
        help="one count, or several: the slope between them is the cost per image without start-up",
    )  # fmt: skip
    p.add_argument("--size", default="500x375", help="W x H")
    p.add_argument("--weights", choices=("full", "tiny"), default="full")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny weights, 3 images of 64 x 48")
    p.add_argument("--out", default=str(RESULTS / "pseudo_shards_cpu.json"))
    args = p.parse_args()
    if args.smoke:
        args.images, args.size, args.weights, args.repeats = [3], "64x48", "tiny", 1
    w, h = (int(v) for v in args.size.lower().split("x"))
    report: dict[str, Any] = {"settings": vars(args), "machine": machine_info(torch.device("cpu"))}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "VOC2012"
        write_voc(root, max(args.images), w, h)
        clip = write_random_weights(
            "clip_vit_b16.openai", tmp / "clip" / "ViT-B-16.pt", args.weights
        )[0]
        dino = tmp / "dino" / "dino_vits16.pth"
        write_random_weights("dino_vit_s16", dino, args.weights)
        state = torch.load(clip, map_location="cpu", weights_only=True)
        embed = int(state["text_projection"].shape[1])
        del state
        overrides = [
            f"backbone.clip={clip}", f"backbone.dino={dino}", f"data.root={root}",
            f"data.tag_file={root / 'tags.json'}",
            f"cmpa.in_dim={embed}", "backbone.half_precision=false",
        ]  # fmt: skip
        common = ["pseudo-labels", "--config", str(REPO / "configs" / "voc.yaml"), "--split"]
        common += ["train", "--device", "cpu", "--no-progress", *overrides]
        ssrseg = [sys.executable, "-m", "ssrseg.cli"]
        legs = ("1proc_x_2threads", "2procs_x_1thread")
        times: dict[str, dict[int, list[float]]] = {k: {n: [] for n in args.images} for k in legs}
        load_before = load_average()
        for r in range(args.repeats):
            for n in args.images:
                limit = ["--limit", str(n)] if n < max(args.images) else []
                one, two = tmp / f"one{r}_{n}", tmp / f"two{r}_{n}"
                leg = [*ssrseg, *common, *limit, "--out", str(one)]
                times[legs[0]][n].append(run_leg(leg, 2))
                torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
                torchrun += ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}"]
                torchrun += ["-m", "ssrseg.cli", *common, *limit, "--out", str(two)]
                times[legs[1]][n].append(run_leg(torchrun, 1))
        n_max = max(args.images)
        one0, two0 = tmp / f"one0_{n_max}", tmp / f"two0_{n_max}"
        pngs = sorted(p.name for p in one0.glob("*.png"))
        same = all((one0 / n).read_bytes() == (two0 / n).read_bytes() for n in pngs)
        best = {k: {n: min(v) for n, v in times[k].items()} for k in legs}
        report["seconds"] = {
            k: {str(n): {"min": min(v), "all": v} for n, v in times[k].items()} for k in legs
        }
        report["per_image_s"] = {k: best[k][n_max] / n_max for k in legs}
        score = report["per_image_s"]
        if len(args.images) > 1:  # the slope: start-up (imports, weights, prompts) cancels
            n_min = min(args.images)
            slope = {k: (best[k][n_max] - best[k][n_min]) / (n_max - n_min) for k in legs}
            report["marginal_per_image_s"] = slope
            report["startup_s"] = {k: best[k][n_min] - slope[k] * n_min for k in legs}
            score = slope
        report["ratio_1proc_over_2procs"] = score[legs[0]] / score[legs[1]]
        report["winner"] = min(legs, key=lambda k: score[k])
        report["png_bytes_identical"] = same
        report["pixels_differing_share"] = differing_share(one0, two0, pngs)
        report["load_average"] = {"before": load_before, "after": load_average()}
    write_json(Path(args.out), report)
    print(report["per_image_s"], report["winner"], file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
