"""Time PAR: compiled CPU kernels vs the torch form vs a straightforward reference.

``par_refine`` with its compiled kernels (``ssrseg.rectify.par_native``), the same function in its
torch form (``SSRSEG_PAR_NATIVE=0``: 48 shifted-view ``addcmul_`` per iteration), and, at the
small size, a straightforward stacked-neighbour reference and a sparse-matrix variant (N x N CSR
with M entries per row, one spmm per iteration) that was considered for the propagation. Cases:
one 320 x 320 crop with K = 3 score maps; one VOC-size 500 x 375 image with K = 3 (an image's
background + 2 classes) and K = 21 (every VOC class). Default config (20 iterations, dilations
1, 2, 4, 8, 12, 24: 48 neighbours). Each thread count of ``--threads`` times the
implementations interleaved (``_timing.interleaved``). Writes
``benchmarks/results/par_<device>.json``.

    python benchmarks/bench_par.py [--device cpu|cuda] [--threads 1 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

# the literal PAR reference lives beside its tests (tests/rectify/par_reference.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "rectify"))
from par_reference import reference_par as literal_par

from _timing import interleaved, machine_info, out_path, ratio_tables, torch_threads, write_json
from ssrseg.config import PARConfig
from ssrseg.rectify import par_native
from ssrseg.rectify.par import par_refine, par_weights


def reference_par(images: torch.Tensor, scores: torch.Tensor, cfg: PARConfig) -> torch.Tensor:
    """Straightforward PAR (the tests' reference): B x C x M x H x W neighbour stacks,
    torch.std, ``cfg.iterations`` stacked sums."""
    return literal_par(
        images, scores, cfg.dilations, cfg.iterations, cfg.colour_temperature, cfg.position_weight
    )


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
        with warnings.catch_warnings():  # torch's beta / invariant-check notices
            warnings.simplefilter("ignore", UserWarning)
            mat = torch.sparse_coo_tensor(pairs, values, size=(n, n)).coalesce().to_sparse_csr()
        cur = scores[i].reshape(k, n).t().contiguous()  # N x K
        for _ in range(cfg.iterations):
            cur = mat @ cur
        outs.append(cur.t().reshape(k, h, w))
    return torch.stack(outs)


@contextlib.contextmanager
def torch_form() -> Iterator[None]:
    """PAR without its compiled kernels for the duration of the block."""
    before = os.environ.get(par_native.ENV_SWITCH)
    os.environ[par_native.ENV_SWITCH] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[par_native.ENV_SWITCH]
        else:
            os.environ[par_native.ENV_SWITCH] = before


def par_torch(images: torch.Tensor, scores: torch.Tensor, cfg: PARConfig) -> torch.Tensor:
    with torch_form():
        return par_refine(images, scores, cfg)


CASES = [  # name, height, width, K, with the slow comparisons
    ("tiny_48x64_K3", 48, 64, 3, True),  # --tiny only (smoke test)
    ("crop_320x320_K3", 320, 320, 3, True),
    ("voc_500x375_K3", 375, 500, 3, False),
    ("voc_500x375_K21", 375, 500, 21, False),
]


def bench_case(
    name: str, h: int, w: int, k: int, slow: bool, device: torch.device, repeats: int
) -> dict[str, Any]:
    cfg = PARConfig()
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, h, w, generator=gen).to(device)
    scores = torch.rand(1, k, h, w, generator=gen).to(device)
    impls: dict[str, Callable[..., torch.Tensor]] = {"ssrseg": par_refine, "torch_form": par_torch}
    if slow:
        impls |= {"reference": reference_par, "sparse_csr": sparse_par}
    with torch.no_grad():
        outs = {n: f(images, scores, cfg) for n, f in impls.items()}
        fns = {
            n: (lambda f=f: f(images, scores, cfg))  # type: ignore[misc]
            for n, f in impls.items()
        }
        times = interleaved(fns, device, repeats, warmup=0)  # outs above were the warm-up
    result: dict[str, Any] = {
        "case": name,
        "scores": [1, k, h, w],
        "times": times,
        "native_kernels": par_native.load() is not None and device.type == "cpu",
        "max_abs_diff_vs_torch_form": (outs["ssrseg"] - outs["torch_form"]).abs().max().item(),
    }
    pairs = {"vs_torch_form": ("torch_form", "ssrseg")}
    if slow:
        pairs["vs_reference"] = ("reference", "ssrseg")
    result.update(
        ratio_tables(times, pairs, clocks=("median_wall_s", "median_cpu_s"), prefix="speedup")
    )
    if slow:
        ref = outs["reference"]
        result["max_abs_diff_vs_reference"] = (outs["ssrseg"] - ref).abs().max().item()
        result["sparse_max_abs_diff_vs_reference"] = (outs["sparse_csr"] - ref).abs().max().item()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cases", nargs="+", default=[c[0] for c in CASES[1:]])
    parser.add_argument("--tiny", action="store_true", help="the tiny case only: smoke test")
    parser.add_argument("--out", default=None, help="JSON file or folder (default results/)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.tiny:
        args.cases = [CASES[0][0]]
    results = []
    for n in args.threads if device.type == "cpu" else [None]:
        with torch_threads(n) as threads:
            for case in CASES:
                if case[0] not in args.cases:
                    continue
                res = bench_case(*case, device, args.repeats)
                res["threads"] = threads
                results.append(res)
                t = res["times"]
                print(
                    f"[{threads} thr] {case[0]}: "
                    + ", ".join(f"{k} {v['median_wall_s'] * 1000:.0f} ms" for k, v in t.items())
                    + f"; speed-up vs torch form {res['speedup_median_wall']['vs_torch_form']}x",
                    flush=True,
                )
    cfg = PARConfig()
    report = {
        "benchmark": "PAR (par_refine): compiled kernels vs torch form vs reference",
        "machine": machine_info(device),
        "dilations": list(cfg.dilations),
        "iterations": cfg.iterations,
        "repeats": args.repeats,
        "results": results,
    }
    path = write_json(out_path(args.out, "par", device), report)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
