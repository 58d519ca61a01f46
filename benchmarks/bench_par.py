"""Time PAR: ssrseg's implementation vs a straightforward stacked-neighbour reference.

Also times a sparse-matrix variant (N x N CSR with M entries per row, one spmm per iteration)
that was considered for the propagation step. Writes ``benchmarks/results/par_<device>.json``.

Usage: ``python benchmarks/bench_par.py [--device cpu|cuda] [--size 320] [--classes 3]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ssrseg.config import PARConfig, atomic_write_text
from ssrseg.rectify.par import par_refine, par_weights


def reference_par(images: torch.Tensor, scores: torch.Tensor, cfg: PARConfig) -> torch.Tensor:
    """Straightforward PAR: B x C x M x H x W neighbour stacks, torch.std, 20 stacked sums."""
    _, _, h, w = images.shape
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    offsets = [
        (dy, dx)
        for d in cfg.dilations
        for dy in (-d, 0, d)
        for dx in (-d, 0, d)
        if (dy, dx) != (0, 0)
    ]

    def neighbours(x: torch.Tensor) -> torch.Tensor:
        maps = []
        for dy, dx in offsets:
            r = (rows + dy).clamp(0, h - 1)
            c = (cols + dx).clamp(0, w - 1)
            maps.append(x[:, :, r][:, :, :, c])
        return torch.stack(maps, dim=2)

    t = cfg.colour_temperature
    nb = neighbours(images)
    std = nb.std(dim=2, keepdim=True)
    colour = (-(((nb - images.unsqueeze(2)).abs() / (std + 1e-8) / t) ** 2)).mean(1)
    dist = torch.tensor(
        [math.hypot(dy, dx) for dy, dx in offsets], dtype=images.dtype, device=images.device
    )
    pos = -((dist / (dist.std() + 1e-8) / t) ** 2)
    weights = colour.softmax(1) + cfg.position_weight * pos.softmax(0).view(1, -1, 1, 1)
    for _ in range(cfg.iterations):
        scores = (neighbours(scores) * weights.unsqueeze(1)).sum(2)
    return scores


def sparse_par(images: torch.Tensor, scores: torch.Tensor, cfg: PARConfig) -> torch.Tensor:
    """PAR with the propagation as a CSR matrix product (one image at a time)."""
    weights, offsets = par_weights(images, cfg)
    b, k, h, w = scores.shape
    n = h * w
    rows = torch.arange(h, device=scores.device).view(h, 1)
    cols = torch.arange(w, device=scores.device).view(1, w)
    index = torch.stack(
        [
            ((rows + dy).clamp(0, h - 1) * w + (cols + dx).clamp(0, w - 1)).reshape(n)
            for dy, dx in offsets
        ],
        dim=1,
    )  # N x M column indices, with duplicates where clamping maps two offsets to one pixel
    row_index = torch.arange(n, device=scores.device).repeat_interleave(len(offsets))
    pairs = torch.stack([row_index, index.reshape(-1)])
    outs = []
    for i in range(b):
        values = weights[i].reshape(len(offsets), n).t().reshape(-1)
        # coalesce sums the duplicate columns that clamping creates at the borders; CSR needs
        # sorted, distinct column indices per row
        mat = torch.sparse_coo_tensor(pairs, values, size=(n, n)).coalesce().to_sparse_csr()
        cur = scores[i].reshape(k, n).t().contiguous()  # N x K
        for _ in range(cfg.iterations):
            cur = mat @ cur
        outs.append(cur.t().reshape(k, h, w))
    return torch.stack(outs)


def _cpu_name() -> str:
    """CPU model from /proc/cpuinfo where there is one (Linux), else the platform's name."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _time(
    fn: Callable[[], torch.Tensor], device: torch.device, repeats: int
) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds of ``repeats`` calls after one warm-up call.

    CPU time is reported too because on a shared machine the wall clock mostly measures the
    other jobs; with ``--threads 1`` the CPU time is close to the unloaded single-thread time.
    """
    fn()  # warm-up (allocator, kernels)
    wall, cpu = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--classes", type=int, default=3, help="K score maps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="JSON path (default results/par_<dev>.json)")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = PARConfig()
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, args.size, args.size, generator=gen).to(device)
    scores = torch.rand(1, args.classes, args.size, args.size, generator=gen).to(device)

    with torch.no_grad():
        fast = par_refine(images, scores, cfg)
        ref = reference_par(images, scores, cfg)
        sparse = sparse_par(images, scores, cfg)
        max_diff = (fast - ref).abs().max().item()
        sparse_diff = (sparse - ref).abs().max().item()
        results = {
            name: _time(lambda f=f: f(images, scores, cfg), device, args.repeats)  # type: ignore[misc]
            for name, f in (
                ("ssrseg", par_refine),
                ("reference", reference_par),
                ("sparse_csr", sparse_par),
            )
        }
    med = {name: statistics.median(wall) for name, (wall, _) in results.items()}
    med_cpu = {name: statistics.median(cpu) for name, (_, cpu) in results.items()}
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"{_cpu_name()}, {os.cpu_count()} cores"
    report = {
        "device": str(device),
        "machine": machine,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "size": args.size,
        "classes": args.classes,
        "dilations": list(cfg.dilations),
        "iterations": cfg.iterations,
        "repeats": args.repeats,
        "median_wall_s": med,
        "median_cpu_s": med_cpu,
        "all_wall_s": {name: wall for name, (wall, _) in results.items()},
        "speedup_vs_reference_wall": med["reference"] / med["ssrseg"],
        "speedup_vs_reference_cpu": med_cpu["reference"] / med_cpu["ssrseg"],
        "max_abs_diff_vs_reference": max_diff,
        "sparse_max_abs_diff_vs_reference": sparse_diff,
    }
    for name in med:
        print(
            f"{name:>10}: wall {med[name] * 1000:8.1f} ms, cpu {med_cpu[name] * 1000:8.1f} ms "
            f"(median of {args.repeats}, {torch.get_num_threads()} threads)"
        )
    print(
        f"speed-up vs reference: {report['speedup_vs_reference_wall']:.1f}x wall, "
        f"{report['speedup_vs_reference_cpu']:.1f}x cpu; max |diff| {max_diff:.2e}; "
        f"load average {report['load_average_1min']}"
    )
    out = (
        Path(args.out)
        if args.out
        else Path(__file__).parent / "results" / f"par_{device.type}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
