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
- step: ``Trainer.train_step`` (labeller + decoder + CMPA forward/backward + optimiser).

Backbone, labeller and step runs alternate so load changes on a shared machine hit all alike;
medians and minima of ``--repeats`` runs after one warm-up (on a shared machine the minimum
is the least disturbed run; ``OMP_NUM_THREADS=1`` steadies CPU ratios further).
Peak memory: CUDA ``max_memory_allocated`` of the step, or the process's peak RSS on CPU.
With CUDA, the 30k-iteration VOC wall time is projected from the step median.
Writes ``benchmarks/results/train_<device>.json``.

    python benchmarks/bench_train.py [--device cpu] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssrseg.backbones.clip import CLIP, CLIPConfig, TextConfig
from ssrseg.backbones.tokenizer import WordTokenizer
from ssrseg.backbones.vit import VisionTransformer, dino_vit_s16_config
from ssrseg.cam.prompts import ClassPrompts
from ssrseg.config import SSRConfig, load_config
from ssrseg.engine.train import Trainer
from ssrseg.model.ssr import SSRModel
from ssrseg.pseudo.labeler import PseudoLabeler, Timer
from ssrseg.rectify.sgc import slic_superpixels

BATCH, CROP = 4, 320


def make_labeler(cfg: SSRConfig, device: torch.device) -> PseudoLabeler:
    """VOC prompts through a word tokenizer; real-size image towers, a 1-layer text tower
    (it only encodes the prompts once)."""
    prompts = ClassPrompts.voc()
    text = " ".join(prompts.class_texts() + prompts.background_texts())
    tok = WordTokenizer(text.replace(",", " ").replace(".", " ").split(), context_length=16)
    tcfg = TextConfig(
        vocab_size=tok.vocab_size,
        context_length=16,
        width=512,
        layers=1,
        heads=8,
        eot_token_id=tok.eot_token_id,
        sot_token_id=tok.sot_token_id,
    )
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(text=tcfg))
    dino = VisionTransformer(dino_vit_s16_config())
    return PseudoLabeler(clip, tok, dino, prompts, cfg).to(device)


def make_batch(device: torch.device, cfg: SSRConfig) -> dict[str, Any]:
    """Blocky synthetic images (SLIC finds structure), 1-3 classes each, superpixels precomputed."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(BATCH, 3, 10, 10, generator=g)
    images = torch.nn.functional.interpolate(coarse, size=(CROP, CROP), mode="nearest")
    images = (images + 0.05 * torch.rand(BATCH, 3, CROP, CROP, generator=g)).clamp(0, 1)
    labels = [(0, 6), (14,), (8, 10, 14), (11, 14)]
    u8 = (images.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    sp = torch.stack([slic_superpixels(im, cfg.sgc.n_segments, cfg.sgc.compactness) for im in u8])
    return {
        "images": images.to(device),
        "labels": labels,
        "superpixels": sp,
        "valid": torch.ones(BATCH, CROP, CROP, dtype=torch.bool),
        "masks": torch.zeros(BATCH, CROP, CROP, dtype=torch.long),
    }


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args()
    device = torch.device(args.device)

    cfg = load_config(Path(__file__).parents[1] / "configs" / "voc.yaml", ["data.num_workers=0"])
    labeler = make_labeler(cfg, device)
    model = SSRModel(cfg, labeler, num_classes=21).to(device)
    trainer = Trainer(cfg, model, train_set=[], run_dir="/tmp/ssr_bench_unused", progress=False)
    trainer.step = cfg.cmpa.projected_cam_from  # CMPA fully on: projected-space Grad-CAM too
    model.train()
    batch = make_batch(device, cfg)
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

    for fn in (backbones, labeller, heads, step):  # warm-up
        fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fns = {"backbones": backbones, "labeller": labeller, "heads": heads, "step": step}
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            wall, proc = timed(fn, device)
            times[name].append(wall)
            cpu[name].append(proc)
    med = {k: statistics.median(v) for k, v in times.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    # the timer accumulates over the warm-up and the repeats: per-call means
    per_call = {k: round(v / (args.repeats + 1), 4) for k, v in sections.items()}
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        memory = {"kind": "cuda max_memory_allocated (MiB)", "peak": round(peak_mb, 1)}
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        memory = {"kind": "process peak RSS (MiB, includes Python and torch)", "peak": round(rss)}
    result: dict[str, Any] = {
        "benchmark": "train_step",
        "device": str(device),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__,
        },
        "setting": {"batch": BATCH, "crop": CROP, "amp": str(trainer.amp), "repeats": args.repeats},
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "all_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "labeller_sections_s": per_call,
        # minimum over repeats: the run least disturbed by other jobs on a shared machine
        "min_s": {k: round(min(v), 4) for k, v in times.items()},
        "min_ratio_step_to_backbones": round(min(times["step"]) / min(times["backbones"]), 3),
        "min_ratio_labeller_to_backbones": round(
            min(times["labeller"]) / min(times["backbones"]), 3
        ),
        "min_ratio_heads_to_backbones": round(min(times["heads"]) / min(times["backbones"]), 3),
        "ratio_step_to_backbones": round(med["step"] / med["backbones"], 3),
        "ratio_labeller_to_backbones": round(med["labeller"] / med["backbones"], 3),
        "ratio_heads_to_backbones": round(med["heads"] / med["backbones"], 3),
        # process CPU time: steadier than wall time on a shared CPU machine
        "cpu_median_s": {k: round(v, 4) for k, v in cmed.items()},
        "cpu_ratio_step_to_backbones": round(cmed["step"] / cmed["backbones"], 3),
        "cpu_ratio_labeller_to_backbones": round(cmed["labeller"] / cmed["backbones"], 3),
        "cpu_ratio_heads_to_backbones": round(cmed["heads"] / cmed["backbones"], 3),
        "target_ratio": 1.6,
        "memory": memory,
    }
    if device.type == "cuda":
        hours = med["step"] * cfg.train.iterations / 3600
        result["projection"] = {
            "voc_30k_hours": round(hours, 2),
            "weclip_reference": "4.5 h / 6.2 GB on an RTX 3090 (published)",
        }
    else:
        result["projection"] = "pending a GPU measurement (CPU times do not project to a GPU)"
    out = Path(args.out or Path(__file__).parent / "results" / f"train_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
