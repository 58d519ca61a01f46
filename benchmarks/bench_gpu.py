"""Run every benchmark on a CUDA device with half-precision backbones; JSON goes to ``$OUT``.

    OUT=/some/folder python benchmarks/bench_gpu.py                        # on a GPU machine
    OUT=/tmp/gpu_smoke python benchmarks/bench_gpu.py --device cpu --tiny  # CPU smoke test

One process, the benchmarks one after the other (CUDA peaks are reset between them):

1. ``bench_train``: one training step at batch 4 / crop 320 (``train.amp`` auto = bf16 on CUDA,
   frozen backbones under bf16 autocast), its peak memory and the projection to the 30k VOC
   iterations (WeCLIP published 4.5 h / 6.2 GB on an RTX 3090; goal <= 1 h, <= 6 GB);
2. ``bench_pseudo_labels``: SSR's default pseudo labels vs the CLIP-ES configuration, images
   per second (``backbone.half_precision=true`` for both);
3. ``bench_infer --bf16``: inference images per second per configuration, CRF alone (CPU);
4. ``bench_par``: PAR on the GPU (torch form; the compiled kernels are CPU-only);
5. ``bench_precision --device``: ``backbone.precision`` fp32 / fp16 / bf16 on the device (issue
   27): the share of label pixels that differ from fp32, pseudo-label images per second and
   peak memory (VOC-size images, random-weight towers), and the toy world's mIoU per precision.

Each writes its own JSON (``train_cuda.json`` ...) into ``$OUT``; ``gpu_summary.json`` collects
the figures the issue asks for. ``--tiny`` uses narrow towers and tiny images so the whole
script runs end to end in well under a minute on an idle CPU (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))  # the bench_* modules and their helpers

import bench_infer
import bench_par
import bench_precision
import bench_pseudo_labels
import bench_train
from _timing import machine_info, write_json


def run(name: str, main: Callable[[list[str]], Any], argv: list[str], log: dict) -> None:
    """Run one benchmark's ``main(argv)``; a failure is logged and the others still run."""
    print(f"== {name}: {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    try:
        main(argv)
        log[name] = {"ok": True}
    except Exception as exc:  # keep going: one broken benchmark must not cost the others
        traceback.print_exc()
        log[name] = {"ok": False, "error": repr(exc)}
    log[name]["seconds"] = round(time.perf_counter() - start, 1)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def summary(out: Path, device: torch.device) -> dict[str, Any]:
    """The headline figures from the benchmarks' JSON files (missing ones are skipped)."""
    tag = device.type

    def load(name: str) -> Any:
        path = out / f"{name}_{tag}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    res: dict[str, Any] = {}
    train = load("train")
    if train:
        r = train["results"][0]
        res["train"] = {
            "step_s": round(r["times"]["step"]["median_wall_s"], 4),
            "peak_memory_mib": r["memory"]["peak"],
            "step_vs_backbones": r["ratios_median_wall"]["step_vs_backbones"],
            "step_vs_weclip_floor": r["ratios_median_wall"]["step_vs_weclip_floor"],
            "projection_voc": r.get("projection_voc", train.get("projection_voc")),
        }
    pseudo = load("pseudo_labels")
    if pseudo:
        res["pseudo_labels"] = {}
        for r in pseudo["results"]:
            n = r["images"]
            res["pseudo_labels"][f"{r['threads']}thr/{r['setting']}"] = {
                "ssr_images_per_s": round(n / r["times"]["ssr"]["median_wall_s"], 2),
                "ssr_given_sp_images_per_s": round(
                    n / r["times"]["ssr_given_sp"]["median_wall_s"], 2
                ),
                "ssr_overlapped_images_per_s": round(
                    n / r["times"]["ssr_overlapped"]["median_wall_s"], 2
                ),
                "clip_es_images_per_s": round(n / r["times"]["clip_es"]["median_wall_s"], 2),
                "ssr_vs_clip_es": r["ratios_median_wall"]["ssr_vs_clip_es"],
                "ssr_vs_clip_es_reference_network": r["ratios_median_wall"][
                    "ssr_vs_clip_es_reference_network"
                ],
                "ssr_vs_backbone": r["ratios_median_wall"]["ssr_vs_backbone_ssr"],
            }
        res["pseudo_labels"]["peak_memory_voc"] = pseudo["peak_memory_voc_one_image"]
    infer = load("infer")
    if infer:
        res["inference"] = {
            f"{r['threads']}thr/{name}": {
                "images_per_s": c["images_per_second"],
                "predict_vs_clip": c["ratios_median_wall"]["predict_vs_clip"],
                "predict_vs_forwards": c["ratios_median_wall"]["predict_vs_forwards"],
            }
            for r in infer["results"]
            for name, c in r["configs"].items()
        }
        res["inference"]["crf_cpu"] = infer["results"][0]["crf"]
        res["inference"]["peak_memory"] = infer["peak_memory"]
    precision = load("precision")
    if precision:
        res["precision"] = precision["device_leg"]
    par = load("par")
    if par:
        res["par"] = {
            f"{r['threads']}thr/{r['case']}": round(r["times"]["ssrseg"]["median_wall_s"], 4)
            for r in par["results"]
        }
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="narrow towers: smoke test only")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder (default: $OUT)")
    args = parser.parse_args()
    if not args.out:
        parser.error("set $OUT (or --out) to the folder for the JSON files")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; use --device cpu --tiny for the smoke test")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev, tiny = ["--device", args.device, "--out", str(out)], ["--tiny"] if args.tiny else []
    quick = args.tiny
    log: dict[str, Any] = {}
    run(
        "train",
        bench_train.main,
        [*dev, *tiny, "--repeats", "1" if quick else "10", "--threads", "1"],
        log,
    )
    run(
        "pseudo_labels",
        bench_pseudo_labels.main,
        [
            *dev,
            *tiny,
            "--repeats",
            "1" if quick else "5",
            "--voc-images",
            "1" if quick else "8",
            "--threads",
            "1",
            "--override",
            "backbone.half_precision=true",
        ],
        log,
    )
    run(
        "infer",
        bench_infer.main,
        [
            *dev,
            *tiny,
            "--bf16",
            "--images",
            "1" if quick else "10",
            "--repeats",
            "1" if quick else "3",
            "--threads",
            "1",
        ],
        log,
    )
    run("par", bench_par.main, [*dev, *tiny, "--repeats", "1" if quick else "5"], log)
    run(
        "precision",
        bench_precision.main,
        [
            *dev,
            *tiny,
            "--device-leg",
            "--voc-images",
            "1" if quick else "8",
            "--toy-images",
            "2" if quick else "24",
            "--repeats",
            "1" if quick else "3",
        ],
        log,
    )
    report = {
        "machine": machine_info(device),
        "tiny": args.tiny,
        "runs": log,
        "figures": summary(out, device),
    }
    path = write_json(out / "gpu_summary.json", report)
    print(json.dumps(report["figures"], indent=2))
    print(f"wrote {path}")
    return 0 if all(v["ok"] for v in log.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
