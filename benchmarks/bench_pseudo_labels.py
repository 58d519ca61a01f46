"""Benchmark of the pseudo-label stage against the backbone work it cannot avoid.

Random-weight CLIP ViT-B/16 and DINO ViT-S/16 at their real sizes (weights do not change the
cost). For each setting (a batch at 320 x 320, a VOC-size image at 500 x 375 -> 512 x 384):

- backbone work: CLIP forward of all blocks (no attention matrices), DINO forward, and the last
  CLIP block's backward (once: one vector-Jacobian product; and K_max times, one per class
  slot, as Grad-CAM needs);
- the whole stage: ``PseudoLabeler(images, labels)`` with the default config (Grad-CAM, CLIP +
  DINO affinity, SGC mask with SLIC computed inside, background, PAR, argmax), split into
  sections; and the same with precomputed superpixels (the training path);
- ratios stage / backbone, SGC's share of the stage, peak memory.

Backbone and stage runs alternate so that load changes on a shared machine hit both alike;
medians of ``--repeats`` runs. Writes ``benchmarks/results/pseudo_labels_<device>.json``.

    python benchmarks/bench_pseudo_labels.py [--device cpu] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ssrseg.backbones.clip import CLIP, CLIPConfig, TextConfig
from ssrseg.backbones.tokenizer import WordTokenizer
from ssrseg.backbones.vit import VisionTransformer, dino_vit_s16_config
from ssrseg.cam.prompts import ClassPrompts
from ssrseg.config import SSRConfig
from ssrseg.pseudo.labeler import PseudoLabeler, Timer, images_to_uint8
from ssrseg.rectify.sgc import slic_superpixels


def build_labeler(device: torch.device) -> PseudoLabeler:
    prompts = ClassPrompts.voc()
    words = " ".join(prompts.class_texts() + prompts.background_texts()).replace(",", " ")
    tok = WordTokenizer(words.replace(".", " ").split(), context_length=16)
    # Real image tower; the text tower only encodes the prompts once, so a small one will do.
    text = TextConfig(
        vocab_size=tok.vocab_size,
        context_length=16,
        width=512,
        layers=1,
        heads=8,
        eot_token_id=tok.eot_token_id,
        sot_token_id=tok.sot_token_id,
    )
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(text=text))
    dino = VisionTransformer(dino_vit_s16_config())
    return PseudoLabeler(clip, tok, dino, prompts, SSRConfig()).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, clock: Callable[[], float]) -> float:
    sync(device)
    start = clock()
    fn()
    sync(device)
    return clock() - start


def backbone_work(labeler: PseudoLabeler, images01: torch.Tensor, n_backward: int) -> None:
    """CLIP forward (blocks 1..L-1 without grad, last block with), DINO forward, and
    ``n_backward`` vector-Jacobian products of the last block."""
    visual = labeler.clip.visual
    assert labeler.dino is not None
    with torch.no_grad():
        out = visual.forward_intermediates(
            visual.normalize(images01), n_blocks=visual.cfg.layers - 1
        )
        labeler.dino.forward_intermediates(labeler.dino.normalize(images01))
    x = out.tokens[-1]
    last = visual.blocks[-1]
    with torch.enable_grad():
        h = last.norm1(x).detach().requires_grad_(True)
        y, _ = last.forward_from_norm1(x, h)
        emb = F.normalize(visual.head(y[:, 1:]).mean(dim=1), dim=-1)
        score = emb @ labeler.class_emb[: max(1, n_backward)].t()  # B x K
        for k in range(n_backward):
            torch.autograd.grad(score[:, k].sum(), h, retain_graph=k < n_backward - 1)


def peak_memory(device: torch.device) -> float:
    """Peak memory in MiB: CUDA allocator peak, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench_setting(
    labeler: PseudoLabeler,
    name: str,
    images01: torch.Tensor,
    labels: list[tuple[int, ...]],
    repeats: int,
    clock: Callable[[], float],
) -> dict[str, Any]:
    device = images01.device
    k_max = max(len(lab) for lab in labels)
    superpixels = torch.stack(
        [slic_superpixels(img, 100, 10.0) for img in images_to_uint8(images01)]
    ).to(device)
    runs: dict[str, list[float]] = {
        "backbone_1bwd": [],
        "backbone_kbwd": [],
        "stage": [],
        "stage_given_sp": [],
    }
    sections: list[dict[str, float]] = []
    sections_sp: list[dict[str, float]] = []
    backbone_work(labeler, images01, k_max)  # warm-up
    labeler(images01, labels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    mem_before = peak_memory(device)
    for _ in range(repeats):
        runs["backbone_1bwd"].append(
            timed(lambda: backbone_work(labeler, images01, 1), device, clock)
        )
        runs["backbone_kbwd"].append(
            timed(lambda: backbone_work(labeler, images01, k_max), device, clock)
        )
        timer = Timer(clock)
        runs["stage"].append(
            timed(lambda t=timer: labeler(images01, labels, timer=t), device, clock)
        )
        sections.append(timer)
        timer_sp = Timer(clock)
        runs["stage_given_sp"].append(
            timed(lambda t=timer_sp: labeler(images01, labels, superpixels, timer=t), device, clock)
        )
        sections_sp.append(timer_sp)
    med = {k: statistics.median(v) for k, v in runs.items()}
    sec = {k: statistics.median(s.get(k, 0.0) for s in sections) for k in sections[0]}
    sec_sp = {k: statistics.median(s.get(k, 0.0) for s in sections_sp) for k in sections_sp[0]}
    result = {
        "setting": name,
        "batch": images01.shape[0],
        "size": list(images01.shape[-2:]),
        "labels": [list(lab) for lab in labels],
        "seconds": med,
        "sections_seconds": sec,
        "sections_seconds_given_superpixels": sec_sp,
        "ratio_stage_vs_backbone_1bwd": med["stage"] / med["backbone_1bwd"],
        "ratio_stage_vs_backbone_kbwd": med["stage"] / med["backbone_kbwd"],
        "ratio_stage_given_sp_vs_backbone_kbwd": med["stage_given_sp"] / med["backbone_kbwd"],
        "sgc_share_of_stage": sec.get("masks", 0.0) / med["stage"],
        "slic_share_of_stage": sec.get("slic", 0.0) / med["stage"],
        "sgc_share_given_superpixels": sec_sp.get("masks", 0.0) / med["stage_given_sp"],
        "par_labels_share_of_stage": sec.get("labels", 0.0) / med["stage"],
        "peak_memory_mib": peak_memory(device),
        "memory_before_mib": mem_before,
    }
    return result


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else the platform's machine type."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or process CPU time (steadier on a shared CPU; not for GPU runs)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    labeler = build_labeler(device)
    gen = torch.Generator().manual_seed(0)

    # Smooth random images (SLIC on white noise is degenerate): upsampled coarse noise.
    def image(b: int, h: int, w: int) -> torch.Tensor:
        coarse = torch.rand(b, 3, h // 16, w // 16, generator=gen)
        return F.interpolate(coarse, size=(h, w), mode="bilinear").to(device)

    settings = [
        ("batch2_320x320", image(2, 320, 320), [(14, 12), (2,)]),
        ("voc_500x375_as_512x384", image(1, 384, 512), [(14, 12)]),
    ]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    results = [bench_setting(labeler, n, x, lab, args.repeats, clock) for n, x, lab in settings]
    machine = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "clock": args.clock,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "note": "shared machine; ratios are measured within one run",
    }
    report = {"machine": machine, "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"pseudo_labels_{device.type}.json"
    path.write_text(json.dumps(report, indent=2))
    for r in results:
        s = r["seconds"]
        print(
            f"{r['setting']}: stage {s['stage']:.2f}s, backbone {s['backbone_1bwd']:.2f}s "
            f"(1 bwd) / {s['backbone_kbwd']:.2f}s (K bwd) -> ratio "
            f"{r['ratio_stage_vs_backbone_1bwd']:.2f} / {r['ratio_stage_vs_backbone_kbwd']:.2f}; "
            f"SGC {100 * r['sgc_share_of_stage']:.1f}% (SLIC {100 * r['slic_share_of_stage']:.1f}%"
            f"), given superpixels {100 * r['sgc_share_given_superpixels']:.1f}%; PAR+labels "
            f"{100 * r['par_labels_share_of_stage']:.1f}%; peak {r['peak_memory_mib']:.0f} MiB"
        )
        print("  sections:", {k: round(v, 3) for k, v in r["sections_seconds"].items()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
