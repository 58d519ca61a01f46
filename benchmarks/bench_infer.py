"""Inference throughput and peak memory per configuration.

A randomly initialised SSR model of the real size (CLIP ViT-B/16 image tower, the WeCLIP decoder,
21 classes) segments VOC-sized random images (500 x 375, long side resized to 512) with:
single scale; multi-scale (1.0, 0.75) + flip; multi-scale + flip + dense CRF (if pydensecrf2 is
installed). Each configuration runs in a fresh process so its peak memory is its own.

    .venv/bin/python benchmarks/bench_infer.py [--device cpu|cuda] [--images 3]

Writes ``benchmarks/results/infer_<device>.json``. Compare ratios within one run: absolute times
depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

CONFIGS: dict[str, dict[str, Any]] = {
    "single_scale": {"scales": (1.0,), "flip": False, "crf": False},
    "multiscale_flip": {"scales": (1.0, 0.75), "flip": True, "crf": False},
    "multiscale_flip_crf": {"scales": (1.0, 0.75), "flip": True, "crf": True},
    "multiscale": {"scales": (1.0, 0.75), "flip": False, "crf": False},
}
IMAGE_HW = (375, 500)  # a typical VOC image
LONG_SIDE = 512


def build_segmenter(config: dict[str, Any], device: str) -> Any:
    import torch
    from torch import nn

    from ssrseg.backbones.clip import CLIP, CLIPConfig, TextConfig
    from ssrseg.backbones.vit import ViTConfig
    from ssrseg.config import InferConfig, SSRConfig
    from ssrseg.engine.infer import Segmenter
    from ssrseg.model.ssr import SSRModel

    torch.manual_seed(0)
    # ViT-B/16 image tower; the text tower is unused at inference, so keep it tiny.
    text = TextConfig(vocab_size=64, context_length=8, width=64, layers=1, heads=1)
    clip = CLIP(CLIPConfig(vision=ViTConfig(), text=text, embed_dim=512))
    labeler = nn.Module()
    labeler.clip = clip
    model = SSRModel(SSRConfig(), labeler, 21).to(device).eval()
    infer = InferConfig(
        scales=config["scales"], flip=config["flip"], long_side=LONG_SIDE, crf=config["crf"]
    )
    return Segmenter(model.segment, 21, model.patch_size, infer, device=device)


def peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _images(n: int) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8) for _ in range(n)]


def _crf_missing(name: str) -> str | None:
    if not CONFIGS[name]["crf"]:
        return None
    from ssrseg.engine.infer import check_crf

    try:
        check_crf()
    except RuntimeError as exc:
        return str(exc)
    return None


def memory_child(name: str, device: str, queue: Any) -> None:
    """Peak memory of one configuration in a fresh process: model built, then one image."""
    import torch

    seg = build_segmenter(CONFIGS[name], device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    model_mb = peak_memory_mb(device)
    seg.predict(_images(1)[0])
    queue.put({"peak_memory_mb": peak_memory_mb(device), "model_loaded_mb": model_mb})


def timing_child(names: list[str], device: str, n_images: int, queue: Any) -> None:
    """Time all configurations in one process on one model, interleaved image by image, so a
    change of machine load hits every configuration alike."""
    import torch

    segs = {name: build_segmenter(CONFIGS[name], device) for name in names}
    images = _images(n_images + 1)
    for seg in segs.values():
        seg.predict(images[0])  # warm-up (allocator, kernels)
    seconds = dict.fromkeys(names, 0.0)
    for image in images[1:]:
        for name, seg in segs.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            seg.predict(image)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - start
    queue.put({"seconds": seconds, "torch_threads": torch.get_num_threads()})


def _in_child(target: Any, *args: Any) -> Any:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def patch_tokens(scales: list[float], flip: bool, patch: int = 16) -> int:
    """Patch tokens the model processes per image (the cost the ratios are compared with)."""
    total = 0
    h, w = IMAGE_HW
    base = LONG_SIDE / max(h, w)
    for s in scales:
        sh, sw = max(1, round(h * base * s)), max(1, round(w * base * s))
        total += -(-sh // patch) * -(-sw // patch)
    return total * (2 if flip else 1)


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=3, help="timed images per configuration")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args()

    load_before = os.getloadavg()  # other jobs on the machine slow every configuration
    results: list[dict[str, Any]] = []
    runnable = []
    for name, config in CONFIGS.items():
        entry: dict[str, Any] = {"name": name, **config, "scales": list(config["scales"])}
        missing = _crf_missing(name)
        if missing:
            entry["skipped"] = missing
        else:
            runnable.append(name)
            entry.update(_in_child(memory_child, name, args.device))
        results.append(entry)
    timing = _in_child(timing_child, runnable, args.device, args.images)
    single = timing["seconds"]["single_scale"]
    for entry in results:
        if entry["name"] not in timing["seconds"]:
            continue
        secs = timing["seconds"][entry["name"]]
        entry.update(
            images=args.images,
            seconds_per_image=secs / args.images,
            images_per_second=args.images / secs,
            time_ratio_to_single=secs / single,
            token_ratio_to_single=patch_tokens(entry["scales"], entry["flip"])
            / patch_tokens([1.0], False),
            memory_kind="CUDA max allocated" if args.device.startswith("cuda") else "max RSS",
            torch_threads=timing["torch_threads"],
        )
    for entry in results:
        print(json.dumps(entry), flush=True)
    load_after = os.getloadavg()
    report = {
        "benchmark": "inference (Segmenter.predict, one image at a time)",
        "model": "random SSR model: CLIP ViT-B/16 image tower (11 blocks) + WeCLIP decoder, 21 "
        "classes",
        "image": f"{IMAGE_HW[1]}x{IMAGE_HW[0]} random RGB, long side resized to {LONG_SIDE}",
        "device": args.device,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_1min_before_after": [load_before[0], load_after[0]],
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        },
        "results": results,
    }
    out = (
        Path(args.out)
        if args.out
        else Path(__file__).parent / "results" / (f"infer_{args.device.split(':')[0]}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
