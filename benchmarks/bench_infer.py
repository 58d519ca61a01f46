"""Inference: ``Segmenter.predict`` per configuration against the forwards it needs.

A randomly initialised SSR model of the real size (CLIP ViT-B/16 image tower, the WeCLIP decoder,
21 classes) segments VOC-sized random images (500 x 375, long side resized to 512) with: single
scale; multi-scale (1.0, 0.75); multi-scale + flip. In the same interleaved rounds
(``_timing.interleaved``) it times, on exactly the padded batches each configuration feeds the
model:

- ``forwards``: the model's logits function (CLIP blocks 1..11 + decoder) once per batch;
- ``clip``: the CLIP forward alone (blocks 1..11) on the same batches;

so ``predict / clip`` is the cost over the backbone (target <= 1.2 single scale) and
``predict / forwards`` the cost of the multi-scale / flip bookkeeping (target <= 1.1). The dense
CRF is timed on its own (it runs on the CPU and can overlap with the next image's GPU work).
Peak memory of each configuration is measured alone in a fresh process.

    .venv/bin/python benchmarks/bench_infer.py [--device cpu|cuda] [--images 2] [--threads 1 2]
    .venv/bin/python benchmarks/bench_infer.py --tiny   # narrow tower, tiny images: smoke test

Writes ``benchmarks/results/infer_<device>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import _timing

CONFIGS: dict[str, dict[str, Any]] = {
    "single_scale": {"scales": (1.0,), "flip": False},
    "multiscale": {"scales": (1.0, 0.75), "flip": False},
    "multiscale_flip": {"scales": (1.0, 0.75), "flip": True},
}
IMAGE_HW = (375, 500)  # a typical VOC image
LONG_SIDE = 512
TINY_HW, TINY_LONG_SIDE = (75, 100), 64


def build_segmenter(config: dict[str, Any], device: str, tiny: bool) -> Any:
    from torch import nn

    from ssrseg.backbones.clip import CLIP, CLIPConfig, TextConfig
    from ssrseg.backbones.vit import ViTConfig
    from ssrseg.config import InferConfig, SSRConfig
    from ssrseg.engine.infer import Segmenter
    from ssrseg.model.ssr import SSRModel

    torch.manual_seed(0)
    # ViT-B/16 image tower; the text tower is unused at inference, so keep it tiny.
    vision = ViTConfig(width=64, heads=2) if tiny else ViTConfig()
    text = TextConfig(vocab_size=64, context_length=8, width=64, layers=1, heads=1)
    clip = CLIP(CLIPConfig(vision=vision, text=text, embed_dim=512))
    labeler = nn.Module()
    labeler.clip = clip
    model = SSRModel(SSRConfig(), labeler, 21).to(device).eval()
    infer = InferConfig(
        scales=config["scales"],
        flip=config["flip"],
        long_side=TINY_LONG_SIDE if tiny else LONG_SIDE,
        crf=False,
    )
    return Segmenter(model.segment, 21, model.patch_size, infer, device=device)


def images(n: int, tiny: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    hw = TINY_HW if tiny else IMAGE_HW
    return [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for _ in range(n)]


def model_batches(seg: Any, image: np.ndarray) -> list[torch.Tensor]:
    """The padded batches ``multiscale_logits`` feeds the model for this image (same code path:
    bilinear resize, mirrored copy appended, bottom/right padding)."""
    from ssrseg.engine.infer import base_factor, pad_to_multiple, scaled_size, to_tensor01

    x0 = to_tensor01([image], seg.device)
    height, width = x0.shape[-2:]
    base = base_factor(height, width, seg.infer.long_side)
    out = []
    for scale in seg.infer.scales:
        h, w = scaled_size(height, width, base * scale)
        x = x0 if (h, w) == (height, width) else F.interpolate(x0, size=(h, w), mode="bilinear")
        if seg.infer.flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        out.append(pad_to_multiple(x, seg.patch_size, seg.infer.pad_mode))
    return out


def predict_memory(name: str, device: str, tiny: bool) -> dict[str, float]:
    """Peak memory of one configuration: model built, then one image."""
    seg = build_segmenter(CONFIGS[name], device, tiny)
    dev = torch.device(device)
    _timing.reset_peak_memory(dev)
    model_mib = _timing.peak_memory_mib(dev)
    seg.predict(images(1, tiny)[0])
    return {
        "model_loaded_mib": round(model_mib, 1),
        "peak_mib": round(_timing.peak_memory_mib(dev), 1),
    }


def memory_child(name: str, device: str, tiny: bool, queue: Any) -> None:
    """:func:`predict_memory` in a fresh process (the CPU's peak RSS cannot be reset)."""
    try:
        torch.set_num_threads(1)
        queue.put(predict_memory(name, device, tiny))
    except BaseException as exc:  # reported by the parent
        queue.put(RuntimeError(f"{name}: {exc!r}"))


def autocast(device: torch.device, bf16: bool) -> Any:
    """bf16 autocast of the backbone and decoder (``--bf16``, GPU runs), else nothing."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def bench_threads(
    device: torch.device, n_images: int, repeats: int, tiny: bool, bf16: bool = False
) -> dict[str, Any]:
    """All configurations, their forwards and CLIP alone, interleaved, on ``n_images`` images."""
    segs = {name: build_segmenter(cfg, str(device), tiny) for name, cfg in CONFIGS.items()}
    imgs = images(n_images, tiny)
    any_seg = next(iter(segs.values()))
    model = any_seg.logits_fn.__self__
    visual, n_blocks = model.visual, model.decoder.num_layers_in
    fns: dict[str, Any] = {}
    for name, seg in segs.items():
        batches = [model_batches(seg, im) for im in imgs]

        def predict(seg: Any = seg) -> None:
            with autocast(device, bf16):
                for im in imgs:
                    seg.predict(im)

        def forwards(seg: Any = seg, batches: list[list[torch.Tensor]] = batches) -> None:
            with torch.no_grad(), autocast(device, bf16):
                for per_image in batches:
                    for x in per_image:
                        seg.logits_fn(x)

        def clip(batches: list[list[torch.Tensor]] = batches) -> None:
            with torch.no_grad(), autocast(device, bf16):
                for per_image in batches:
                    for x in per_image:
                        visual.forward_intermediates(visual.normalize(x), n_blocks=n_blocks)

        fns[f"{name}/predict"] = predict
        fns[f"{name}/forwards"] = forwards
        fns[f"{name}/clip"] = clip
    times = _timing.interleaved(fns, device, repeats, warmup=1)
    per_config: dict[str, Any] = {}
    for name, cfg in CONFIGS.items():
        entry: dict[str, Any] = {"scales": list(cfg["scales"]), "flip": cfg["flip"]}
        for part in ("predict", "forwards", "clip"):
            t = times[f"{name}/{part}"]
            entry[f"{part}_s_per_image"] = round(t["median_wall_s"] / n_images, 4)
        entry["images_per_second"] = round(n_images / times[f"{name}/predict"]["median_wall_s"], 3)
        entry.update(
            _timing.ratio_tables(
                times,
                {
                    "predict_vs_clip": (f"{name}/predict", f"{name}/clip"),
                    "predict_vs_forwards": (f"{name}/predict", f"{name}/forwards"),
                    "forwards_vs_clip": (f"{name}/forwards", f"{name}/clip"),
                    "predict_vs_single_predict": (f"{name}/predict", "single_scale/predict"),
                },
            )
        )
        per_config[name] = entry
    # the CRF alone, on one image's multi-scale + flip probabilities (CPU)
    crf: dict[str, Any] = {}
    try:
        from ssrseg.engine.infer import check_crf, run_crf

        check_crf()
        seg = segs["multiscale_flip"]
        _, probs = seg.predict(imgs[0], return_probs=True)
        samples = [
            _timing.timed(lambda: run_crf(imgs[0], probs, seg.crf_cfg), torch.device("cpu"))
            for _ in range(2)
        ]
        crf = {
            "seconds_per_image": round(min(w for w, _ in samples), 4),
            "cpu_seconds_per_image": round(min(c for _, c in samples), 4),
            "device": "cpu",
        }
    except RuntimeError as exc:  # pydensecrf2 missing: say so
        crf = {"skipped": str(exc)}
    return {"times": times, "configs": per_config, "crf": crf}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=2, help="timed images per round")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tiny", action="store_true", help="narrow tower: smoke test only")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU runs)")
    parser.add_argument("--out", default=None, help="JSON file or folder (default results/)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    results = []
    for n in args.threads if device.type == "cpu" else [None]:
        with _timing.torch_threads(n) as threads:
            res = bench_threads(device, args.images, args.repeats, args.tiny, args.bf16)
            res["threads"] = threads
            results.append(res)
            for name, entry in res["configs"].items():
                r = entry["ratios_median_wall"]
                print(
                    f"[{threads} thr] {name}: {entry['predict_s_per_image']:.3f} s/image, "
                    f"predict/clip {r['predict_vs_clip']:.3f}, predict/forwards "
                    f"{r['predict_vs_forwards']:.3f}",
                    flush=True,
                )
            print(f"[{threads} thr] crf: {res['crf']}", flush=True)
    # CPU: a fresh process per configuration (peak RSS); CUDA: the allocator's peak, reset
    # per configuration; --tiny (smoke test): in this process, to keep it quick
    isolated = device.type == "cpu" and not args.tiny
    memory = {
        name: _timing.run_in_child(memory_child, name, args.device, args.tiny)
        if isolated
        else predict_memory(name, args.device, args.tiny)
        for name in CONFIGS
    }
    hw = TINY_HW if args.tiny else IMAGE_HW
    report = {
        "benchmark": "inference (Segmenter.predict, one image at a time, CRF timed alone)",
        "model": "random SSR model: CLIP ViT-B/16 image tower (11 blocks) + WeCLIP decoder, 21 "
        "classes",
        "image": f"{hw[1]}x{hw[0]} random RGB, long side resized to "
        f"{TINY_LONG_SIDE if args.tiny else LONG_SIDE}",
        "machine": _timing.machine_info(device),
        "tiny": args.tiny,
        "bf16_autocast": args.bf16,
        "targets": {
            "single_scale predict_vs_clip": "<= 1.2",
            "multiscale_flip predict_vs_forwards": "<= 1.1",
        },
        "results": results,
        "peak_memory": {
            "kind": "CUDA max allocated (MiB)" if device.type == "cuda" else "peak RSS (MiB)",
            **memory,
        },
    }
    path = _timing.write_json(_timing.out_path(args.out, "infer", device), report)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
