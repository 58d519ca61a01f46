"""Pseudo-label stage: SSR's default labels vs the CLIP-ES configuration's CAM stage, and each
against the backbone work it cannot avoid.

Random-weight CLIP ViT-B/16 and DINO ViT-S/16 at their real sizes (``_models.py``), shared by
both configurations, on the same images:

- ``ssr``: ``configs/voc.yaml`` (raw-space Grad-CAM as before CMPA has trained, CLIP + DINO
  attention, SGC mask with SLIC computed inside, background, PAR at full size, argmax), one call
  per image as ``ssrseg pseudo-labels`` runs it; ``ssr_given_sp``: the same with superpixels
  precomputed (the training loader's path);
- ``clip_es``: ``configs/clip_es.yaml`` (raw CLIP CAMs, last-8 CLIP attention, box mask, no
  DINO / SGC / PAR);
- ``backbone_ssr``: CLIP forward of all blocks (fused attention, no attention maps), DINO
  forward and K vector-Jacobian products of the last CLIP block (one per class slot, as
  Grad-CAM needs); ``backbone_clip_es``: the same without DINO.

Settings: VOC-size images (500 x 375 -> 512 x 384), one per call; and a batch of two 320 x 320
crops in one call. Each thread count of ``--threads`` runs all five interleaved, round after
round (``_timing.interleaved``); medians and minima, wall and process-CPU seconds, load average.
Peak memory of each configuration at the VOC size is measured alone in a fresh process (peak
RSS on the CPU, allocator peak on CUDA). Writes ``benchmarks/results/pseudo_labels_<device>.json``.

    python benchmarks/bench_pseudo_labels.py [--device cpu] [--threads 1 2] [--repeats 3]
    python benchmarks/bench_pseudo_labels.py --tiny   # narrow towers, tiny images: a smoke test
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from _models import build_towers, make_labeler, preset
from _timing import (
    interleaved,
    machine_info,
    out_path,
    peak_memory_mib,
    ratio_tables,
    reset_peak_memory,
    run_in_child,
    torch_threads,
    write_json,
)
from ssrseg.pseudo.labeler import PseudoLabeler, Timer, images_to_uint8
from ssrseg.rectify.sgc import slic_superpixels

LABEL_SETS = [(14, 12), (2,), (8, 10, 14)]  # person + horse; aeroplane; cat, dog, person


def backbone_work(
    labeler: PseudoLabeler, images01: torch.Tensor, n_backward: int, dino: bool
) -> None:
    """CLIP forward (blocks 1..L-1 without grad, fused attention), DINO forward when ``dino``,
    and ``n_backward`` vector-Jacobian products of the last block."""
    visual = labeler.clip.visual
    device = images01.device
    with torch.no_grad(), labeler._autocast(device):
        out = visual.forward_intermediates(
            visual.normalize(images01), n_blocks=visual.cfg.layers - 1
        )
        if dino:
            assert labeler.dino is not None
            labeler.dino.forward_intermediates(labeler.dino.normalize(images01))
    x = out.tokens[-1]
    last = visual.blocks[-1]
    with torch.enable_grad(), labeler._autocast(device):
        h = last.norm1(x).detach().requires_grad_(True)
        y, _ = last.forward_from_norm1(x, h)
        emb = F.normalize(visual.head(y[:, 1:]).float().mean(dim=1), dim=-1)
        score = emb @ labeler.class_emb[: max(1, n_backward)].float().t()  # B x K
        for k in range(n_backward):
            torch.autograd.grad(score[:, k].sum(), h, retain_graph=k < n_backward - 1)


def smooth_images(b: int, h: int, w: int, seed: int, device: torch.device) -> torch.Tensor:
    """Upsampled coarse noise in [0, 1] (SLIC on white noise is degenerate)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, max(1, h // 16), max(1, w // 16), generator=gen)
    return F.interpolate(coarse, size=(h, w), mode="bilinear").to(device)


def settings(tiny: bool, n_voc: int, device: torch.device) -> list[dict[str, Any]]:
    """Each setting: a list of calls (images B x 3 x H x W, labels per image)."""
    voc_hw, crop = ((64, 96), 64) if tiny else ((384, 512), 320)
    voc = [
        (smooth_images(1, *voc_hw, seed=i, device=device), [LABEL_SETS[i % len(LABEL_SETS)]])
        for i in range(n_voc)
    ]
    batch = [(smooth_images(2, crop, crop, seed=100, device=device), LABEL_SETS[:2])]
    return [
        {"name": f"voc_{n_voc}x_500x375_as_{voc_hw[1]}x{voc_hw[0]}", "calls": voc},
        {"name": f"batch2_{crop}x{crop}", "calls": batch},
    ]


def calls_fn(
    calls: Sequence[tuple[torch.Tensor, list[tuple[int, ...]]]],
    fn: Callable[[torch.Tensor, list[tuple[int, ...]], int], Any],
) -> Callable[[], None]:
    def run() -> None:
        for i, (images, labels) in enumerate(calls):
            fn(images, labels, i)

    return run


def bench_setting(
    ssr: PseudoLabeler,
    clip_es: PseudoLabeler,
    setting: dict[str, Any],
    repeats: int,
    device: torch.device,
) -> dict[str, Any]:
    calls = setting["calls"]
    sgc = ssr.cfg.sgc
    superpixels = [
        torch.stack(
            [slic_superpixels(im, sgc.n_segments, sgc.compactness) for im in images_to_uint8(x)]
        ).to(device)
        for x, _ in calls
    ]
    k_max = [max(len(lab) for lab in labels) for _, labels in calls]
    timers = {"ssr": Timer(), "ssr_given_sp": Timer(), "clip_es": Timer()}
    fns = {
        "backbone_ssr": calls_fn(calls, lambda x, _, i: backbone_work(ssr, x, k_max[i], True)),
        "backbone_clip_es": calls_fn(
            calls, lambda x, _, i: backbone_work(clip_es, x, k_max[i], False)
        ),
        "ssr": calls_fn(calls, lambda x, lab, _: ssr(x, lab, timer=timers["ssr"])),
        "ssr_given_sp": calls_fn(
            calls,
            lambda x, lab, i: ssr(x, lab, superpixels[i], timer=timers["ssr_given_sp"]),
        ),
        "clip_es": calls_fn(calls, lambda x, lab, _: clip_es(x, lab, timer=timers["clip_es"])),
    }
    for fn in fns.values():  # warm-up round (allocator, first autograd call, PAR kernels)
        fn()
    for timer in timers.values():
        timer.clear()
    times = interleaved(fns, device, repeats, warmup=0)
    sections = {
        name: {k: round(v / repeats, 4) for k, v in timer.items()} for name, timer in timers.items()
    }
    result: dict[str, Any] = {
        "setting": setting["name"],
        "calls": len(calls),
        "images": sum(x.shape[0] for x, _ in calls),
        "size": list(calls[0][0].shape[-2:]),
        "labels": [[list(lab) for lab in labels] for _, labels in calls],
        "times": times,
        "sections_s_per_round": sections,
    }
    result.update(
        ratio_tables(
            times,
            {
                "ssr_vs_clip_es": ("ssr", "clip_es"),
                "ssr_given_sp_vs_clip_es": ("ssr_given_sp", "clip_es"),
                "ssr_vs_backbone_ssr": ("ssr", "backbone_ssr"),
                "ssr_given_sp_vs_backbone_ssr": ("ssr_given_sp", "backbone_ssr"),
                "clip_es_vs_backbone_clip_es": ("clip_es", "backbone_clip_es"),
                # SSR does strictly more backbone work (the DINO forward): its floor vs CLIP-ES
                "floor_backbone_ssr_vs_backbone_clip_es": ("backbone_ssr", "backbone_clip_es"),
            },
        )
    )
    stage = times["ssr"]["median_wall_s"] / len(calls)
    result["ssr_shares_of_stage"] = {
        k: round(v / len(calls) / stage, 3) for k, v in sections["ssr"].items()
    }
    return result


def stage_memory(config: str, overrides: list[str], device_name: str, tiny: bool) -> dict:
    """Peak memory of one configuration: towers built, then one VOC-size image."""
    device = torch.device(device_name)
    labeler = make_labeler(preset(config, overrides), device, tiny=tiny)
    images, labels = settings(tiny, 1, device)[0]["calls"][0]
    reset_peak_memory(device)
    before = peak_memory_mib(device)
    labeler(images, labels)
    return {"model_built_mib": round(before, 1), "peak_mib": round(peak_memory_mib(device), 1)}


def memory_child(
    config: str, overrides: list[str], device_name: str, tiny: bool, queue: Any
) -> None:
    """:func:`stage_memory` in a fresh process (the CPU's peak RSS cannot be reset)."""
    try:
        torch.set_num_threads(1)
        queue.put(stage_memory(config, overrides, device_name, tiny))
    except BaseException as exc:  # reported by the parent
        queue.put(RuntimeError(f"{config}: {exc!r}"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--voc-images", type=int, default=2, help="VOC-size images per round")
    parser.add_argument("--tiny", action="store_true", help="narrow towers: smoke test only")
    parser.add_argument(
        "--override", nargs="*", default=[], help="key=value for both configs (GPU: bf16 on)"
    )
    parser.add_argument("--out", default=None, help="JSON file or folder (default results/)")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), help="ignored: wall and CPU times are both recorded"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    towers = build_towers(args.tiny)
    ssr = make_labeler(preset("voc", args.override), device, towers)
    clip_es = make_labeler(preset("clip_es", args.override), device, towers)
    # one setting list for every thread count: the same images throughout
    all_settings = settings(args.tiny, args.voc_images, device)

    results = []
    thread_counts = args.threads if device.type == "cpu" else [torch.get_num_threads()]
    for n in thread_counts:
        with torch_threads(n) as threads:
            for setting in all_settings:
                res = bench_setting(ssr, clip_es, setting, args.repeats, device)
                res["threads"] = threads
                results.append(res)
                r = res["ratios_median_wall"]
                print(
                    f"[{threads} thr] {res['setting']}: ssr/clip_es {r['ssr_vs_clip_es']:.2f} "
                    f"(floor {r['floor_backbone_ssr_vs_backbone_clip_es']:.2f}), ssr/backbone "
                    f"{r['ssr_vs_backbone_ssr']:.2f}, given sp "
                    f"{r['ssr_given_sp_vs_backbone_ssr']:.2f}, clip_es/backbone "
                    f"{r['clip_es_vs_backbone_clip_es']:.2f}; ssr "
                    f"{res['times']['ssr']['median_wall_s']:.2f}s, clip_es "
                    f"{res['times']['clip_es']['median_wall_s']:.2f}s",
                    flush=True,
                )
                print("   ssr sections:", res["sections_s_per_round"]["ssr"], flush=True)

    # CPU: a fresh process per configuration (peak RSS); CUDA: the allocator's peak, reset
    # here; --tiny (smoke test): in this process, to keep it quick
    isolated = device.type == "cpu" and not args.tiny
    memory = {
        name: run_in_child(memory_child, name, args.override, args.device, args.tiny)
        if isolated
        else stage_memory(name, args.override, args.device, args.tiny)
        for name in ("voc", "clip_es")
    }
    report = {
        "benchmark": "pseudo-label stage: SSR (configs/voc.yaml) vs CLIP-ES (configs/clip_es.yaml)",
        "machine": machine_info(device),
        "tiny": args.tiny,
        "repeats": args.repeats,
        "overrides": args.override,
        "targets": {
            "ssr_vs_clip_es": "<= 1.0 at 1 and 2 threads (issue 14)",
            "ssr_vs_backbone_ssr": "<= 1.3 at both thread counts",
            "peak_memory_voc_cpu_mib": "<= 2048",
        },
        "results": results,
        "peak_memory_voc_one_image": {
            "kind": "CUDA max allocated"
            if device.type == "cuda"
            else "process peak RSS" + ("" if isolated else " (shared process: --tiny)"),
            **memory,
        },
        "summary": {
            f"{r['threads']}thr/{r['setting']}": {
                "ssr_vs_clip_es": r["ratios_median_wall"]["ssr_vs_clip_es"],
                "floor": r["ratios_median_wall"]["floor_backbone_ssr_vs_backbone_clip_es"],
                "ssr_vs_backbone": r["ratios_median_wall"]["ssr_vs_backbone_ssr"],
                "ssr_given_sp_vs_backbone": r["ratios_median_wall"]["ssr_given_sp_vs_backbone_ssr"],
                "ssr_s_per_image": round(
                    statistics.median(r["times"]["ssr"]["wall_s"]) / r["images"], 3
                ),
            }
            for r in results
        },
    }
    path = write_json(out_path(args.out, "pseudo_labels", device), report)
    print("peak memory:", memory)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
