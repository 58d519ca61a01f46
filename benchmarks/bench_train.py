"""Benchmark of one SSR training step against the frozen backbones' own forward.

Random-weight CLIP ViT-B/16 (image tower at its real size) and DINO ViT-S/16; weights do not
change the cost. Batch 4, crop 320 x 320, VOC config defaults (Grad-CAM, CLIP + DINO affinity,
SGC mask with superpixels precomputed as the training loader does, PAR, decoder over CLIP
layers 1..11, CMPA with the symmetric term, AdamW step). Measured in the same run:

- backbones: CLIP forward of all blocks with the last 8 attention matrices + DINO forward with
  its last attention, no gradients (the work the step cannot avoid);
- labeller: the pseudo-label stage alone;
- heads: the trainable side alone on a fixed labeller output (decoder + CMPA losses,
  backward, AdamW);
- step: ``Trainer.train_step`` (labeller + decoder + CMPA forward/backward + optimiser);
- weclip_floor: a lower bound on one step of WeCLIP's own code (issue 14's baseline, measured
  there as 80.2 s with 49.6 s of PAR; WeCLIP's code is not runnable here). WeCLIP makes its CAMs
  online as CLIP-ES does (``perform_single_voc_cam``: per image, per label a forward of the last
  layer from the stored tokens + GradCAM's backward, the last-8 attention transition), so the
  floor is ``bench_pseudo_labels.clip_es_reference_network`` over the batch (CLIP-ES's torch
  work, image by image; WeCLIP encodes the batch at once, the same FLOPs) plus WeCLIP's label
  step per crop as its code runs it (background ``1 - max``, its conv2d PAR at the full crop
  size, argmax) from the test-only literal ``tests/model/weclip_reference.py``. WeCLIP's
  decoder, losses, backward and optimiser come on top, so
  ``step_vs_weclip_floor`` over-states our step's share of WeCLIP's (target: <= 0.5).

Backbone, labeller and step runs alternate so load changes on a shared machine hit all alike;
medians and minima of ``--repeats`` runs after one warm-up (on a shared machine the minimum
is the least disturbed run; ``OMP_NUM_THREADS=1`` steadies CPU ratios further).
Peak memory: CUDA ``max_memory_allocated`` of the step, or the process's peak RSS on CPU.
With CUDA, the 30k-iteration VOC wall time is projected from the step median.
Writes ``benchmarks/results/train_<device>.json`` (helpers shared with the other benchmarks in
``_timing.py`` and ``_models.py``).

    python benchmarks/bench_train.py [--device cpu] [--repeats 3] [--threads 1 2]
    python benchmarks/bench_train.py --tiny   # narrow towers, 64 x 64 crops: a smoke test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

import _timing
from _models import build_towers, make_labeler, preset
from ssrseg.config import SSRConfig
from ssrseg.engine.train import Trainer
from ssrseg.model.ssr import SSRModel
from ssrseg.pseudo.labeler import Timer, batch_superpixels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "model"))
from weclip_reference import weclip_labels  # test-only literal WeCLIP code

from bench_pseudo_labels import clip_es_reference_network

BATCH, CROP = 4, 320


def make_batch(device: torch.device, cfg: SSRConfig, crop: int = CROP) -> dict[str, Any]:
    """Blocky synthetic images (SLIC finds structure), 1-3 classes each, superpixels precomputed."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(BATCH, 3, 10, 10, generator=g)
    images = torch.nn.functional.interpolate(coarse, size=(crop, crop), mode="nearest")
    images = (images + 0.05 * torch.rand(BATCH, 3, crop, crop, generator=g)).clamp(0, 1)
    labels = [(0, 6), (14,), (8, 10, 14), (11, 14)]
    sp = batch_superpixels(images, cfg)  # as the labeller makes them (rounded 8-bit images)
    return {
        "images": images.to(device),
        "labels": labels,
        "superpixels": sp,
        "valid": torch.ones(BATCH, crop, crop, dtype=torch.bool),
        "masks": torch.zeros(BATCH, crop, crop, dtype=torch.long),
    }


def bench(
    cfg: SSRConfig, device: torch.device, repeats: int, tiny: bool, crop: int
) -> dict[str, Any]:
    """Backbones, labeller, heads and the whole step, interleaved; peak memory of the step."""
    labeler = make_labeler(cfg, device, build_towers(tiny))
    model = SSRModel(cfg, labeler, num_classes=21).to(device)
    trainer = Trainer(cfg, model, train_set=[], run_dir="/tmp/ssr_bench_unused", progress=False)
    trainer.step = cfg.cmpa.projected_cam_from  # CMPA fully on: projected-space Grad-CAM too
    model.train()
    batch = make_batch(device, cfg, crop)
    images = batch["images"]
    visual, dino = model.visual, labeler.dino
    assert dino is not None
    amp = trainer._autocast  # the trainer's own precision policy

    def backbones() -> None:
        with torch.no_grad(), amp():
            visual.forward_intermediates(visual.normalize(images), attn_layers=range(-8, 0))
            dino.forward_intermediates(dino.normalize(images), attn_layers=(-1,))

    sections = Timer()

    def labeller() -> None:
        sp = batch["superpixels"].to(device)
        labeler(images, batch["labels"], superpixels=sp, cmpa=model.cmpa, timer=sections)

    def step() -> None:
        trainer.train_step(batch)

    g = torch.Generator().manual_seed(1)
    floor_cams = [torch.rand(len(k), crop, crop, generator=g).to(device) for k in batch["labels"]]

    def weclip_floor() -> None:
        """WeCLIP's online CAMs (CLIP-ES's torch work) + its label step (its PAR) per crop."""
        clip_es_reference_network(labeler, images, batch["labels"])
        with torch.no_grad():
            for i, keys in enumerate(batch["labels"]):
                weclip_labels(images[i], floor_cams[i], list(keys))

    sp0 = batch["superpixels"].to(device)
    out = labeler(images, batch["labels"], superpixels=sp0, cmpa=model.cmpa)
    proto = {
        "patch_emb": out.patch_emb,
        "cams": out.cams,
        "labels": batch["labels"],
        "text_emb": labeler.class_emb,
    }
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)

    def heads() -> None:
        """The trainable side alone: decoder + CMPA losses, backward, AdamW."""
        opt.zero_grad(set_to_none=True)
        with amp():
            res = model.losses(out.clip_out.tokens, out.grid, out.labels, proto)
        res["loss"].backward()
        opt.step()

    fns = {
        "backbones": backbones,
        "labeller": labeller,
        "heads": heads,
        "step": step,
        "weclip_floor": weclip_floor,
    }

    def clear_sections_and_peak() -> None:
        sections.clear()
        _timing.reset_peak_memory(device)

    times = _timing.interleaved(
        fns, device, repeats, warmup=1, after_warmup=clear_sections_and_peak
    )
    per_call = {k: round(v / repeats, 4) for k, v in sections.items()}
    memory = {
        "kind": "CUDA max allocated (MiB)"
        if device.type == "cuda"
        else "process peak RSS (MiB, includes Python and torch)",
        "peak": round(_timing.peak_memory_mib(device), 1),
    }
    result: dict[str, Any] = {
        "setting": {"batch": BATCH, "crop": crop, "amp": str(trainer.amp), "repeats": repeats},
        "times": times,
        "labeller_sections_s": per_call,
        "par_and_labels_share_of_step": round(
            per_call.get("labels", 0.0) / times["step"]["median_wall_s"], 3
        ),
        "memory": memory,
    }
    on_backbones = [(leg, "backbones") for leg in ("step", "labeller", "heads")]
    result.update(
        _timing.ratio_tables(times, _timing.vs_pairs(*on_backbones, ("step", "weclip_floor")))
    )
    if device.type == "cuda":
        step_s = times["step"]["median_wall_s"]
        result["projection_voc"] = {
            "iterations": cfg.train.iterations,
            "hours": round(step_s * cfg.train.iterations / 3600, 2),
            "peak_memory_gib": round(memory["peak"] / 1024, 2),
            "weclip_reference": "4.5 h / 6.2 GB on an RTX 3090 (published)",
            "goal": "<= 1 h, <= 6 GB",
        }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[None])
    parser.add_argument("--tiny", action="store_true", help="narrow towers: smoke test only")
    parser.add_argument("--override", nargs="*", default=[], help="config key=value")
    parser.add_argument("--out", default=None, help="JSON file or folder (default results/)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cfg = preset("voc", args.override)
    crop = 64 if args.tiny else CROP
    results = []
    for n in args.threads if device.type == "cpu" else [None]:
        with _timing.torch_threads(n) as threads:
            res = bench(cfg, device, args.repeats, args.tiny, crop)
            res["threads"] = threads
            results.append(res)
            r = res["ratios_median_wall"]
            print(
                f"[{threads} thr] step/backbones {r['step_vs_backbones']:.2f}, labeller "
                f"{r['labeller_vs_backbones']:.2f}, heads {r['heads_vs_backbones']:.2f}, step / "
                f"WeCLIP floor {r['step_vs_weclip_floor']:.2f}; step "
                f"{res['times']['step']['median_wall_s']:.2f}s; peak {res['memory']['peak']} MiB",
                flush=True,
            )
    report = {
        "benchmark": "train_step",
        "machine": _timing.machine_info(device),
        "tiny": args.tiny,
        "overrides": args.override,
        "targets": {
            "step_vs_backbones": "<= 1.6 (docs/training.md)",
            "step_vs_weclip_floor": "<= 0.5 (issue 14: step <= 0.5x WeCLIP's; floor <= WeCLIP's)",
        },
        "results": results,
    }
    if device.type != "cuda":
        report["projection_voc"] = "needs a GPU measurement (CPU times do not project to a GPU)"
    path = _timing.write_json(_timing.out_path(args.out, "train", device), report)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
