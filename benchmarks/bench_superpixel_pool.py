"""SLIC superpixels on every core: the loop of ``ssrseg pseudo-labels`` / ``cams`` / the
``reproduce`` seeds with the superpixels of the next images computed on one background thread
(``--superpixel-workers 0``, before issue 24) or in 1, 2, ... worker processes
(:class:`ssrseg.engine.superpixel_pool.SuperpixelPool`).

``--images`` random smooth images at ``--size`` (default 40 x 512 x 384, a VOC image at the
labeller's work size) go through the loop; the main process's labeller is stood in for by a
wait of ``--forward-s`` seconds (default 0.1, the GPU forward docs/performance.md assumes: a
GPU forward leaves the CPU free, and so does a wait), so SLIC's throughput is what is timed:
this is the superpixel stage's scaling, not a labeller benchmark. ``--forward-s 0`` measures
SLIC alone. Each setting runs the whole loop once per round, interleaved with the others
(``--repeats`` rounds). The superpixels of every setting are checked equal to the thread's.
Expectation on an idle 2-core machine (SLIC ~0.15 s per image): the thread is bound by SLIC
(~0.15 s per image), 2 workers by the forward (~0.1 s): ``speedup_2_workers_vs_thread`` ~1.5.

    python benchmarks/bench_superpixel_pool.py                   # 40 x 512x384, 0 / 1 / 2 workers
    python benchmarks/bench_superpixel_pool.py --forward-s 0     # SLIC throughput alone
    python benchmarks/bench_superpixel_pool.py --smoke           # 4 tiny images (checks the script)

JSON: ``benchmarks/results/superpixel_pool_cpu.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

# The SLIC workers are spawned processes, which import this script again (as __mp_main__):
# torch and ssrseg are imported inside the functions, so a worker starts in the time ssrseg's
# own workers take (NumPy + scikit-image), not in the seconds torch takes to load.
if TYPE_CHECKING:
    import torch

    from ssrseg.config import SSRConfig

RESULTS = Path(__file__).parent / "results"


def smooth_images(n: int, h: int, w: int) -> list[np.ndarray]:
    """``n`` random smooth ``h x w x 3`` uint8 images (bilinear upsampling of coarse noise:
    regions SLIC can follow, unlike pixel noise)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        out.append(np.array(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)))
    return out


def as_tensor01(image: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 -> ``1 x 3 x H x W`` in [0, 1] (what the labeller is given)."""
    import torch  # see the note at the imports

    return torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255)


def thread_leg(images: list[np.ndarray], cfg: SSRConfig, forward_s: float) -> list[Any]:
    """``--superpixel-workers 0``: the next image's SLIC on one background thread (the
    prefetch of ``ssrseg pseudo-labels``), the current one's forward in the main thread."""
    from concurrent.futures import ThreadPoolExecutor

    from ssrseg.pseudo.labeler import batch_superpixels  # see the note at the imports

    out = []
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as thread:
        following = thread.submit(batch_superpixels, as_tensor01(images[0]), cfg)
        for i in range(len(images)):
            current = following
            if i + 1 < len(images):
                following = thread.submit(batch_superpixels, as_tensor01(images[i + 1]), cfg)
            time.sleep(forward_s)  # the labeller's forward (on a GPU: the CPU is free)
            out.append(current.result())
    return out


def pool_leg(
    images: list[np.ndarray], cfg: SSRConfig, forward_s: float, workers: int
) -> tuple[list[Any], float, float]:
    """``--superpixel-workers W``: SLIC of the next ``2 W`` images in ``W`` processes. Returns
    the superpixels, the seconds the pool took to start (every worker's first tiny task: a
    job pays it once, ~1 s of imports per worker, so it is kept out of the loop's time) and
    the loop's seconds."""
    from ssrseg.engine.superpixel_pool import SuperpixelPool, lookahead

    out = []
    with SuperpixelPool(workers) as pool:
        start = time.perf_counter()
        tiny = as_tensor01(np.zeros((8, 8, 3), dtype=np.uint8)).expand(workers, -1, -1, -1)
        pool.submit(["warm-up"] * workers, tiny, cfg).result()
        startup = time.perf_counter() - start
        start = time.perf_counter()
        items = (as_tensor01(image) for image in images)
        started = lookahead(items, lambda x: pool.submit(["image"], x, cfg), pool.lookahead)
        for _, pending in started:
            time.sleep(forward_s)  # the labeller's forward (on a GPU: the CPU is free)
            out.append(pending.result())
        return out, startup, time.perf_counter() - start


def main() -> int:
    import torch  # see the note at the imports

    from _timing import load_average, machine_info, write_json
    from ssrseg.config import load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--size", default="512x384", help="W x H (the labeller's work size)")
    p.add_argument("--forward-s", type=float, default=0.1, help="main-process seconds per image")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="4 images of 64 x 48, 1 round")
    p.add_argument("--out", default=str(RESULTS / "superpixel_pool_cpu.json"))
    args = p.parse_args()
    if args.smoke:
        args.images, args.size, args.repeats, args.forward_s = 4, "64x48", 1, 0.01
    w, h = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(1)
    cfg = load_config(None, [])  # sgc.n_segments / compactness of the presets
    images = smooth_images(args.images, h, w)
    results: dict[str, Any] = {"settings": vars(args), "machine": machine_info(torch.device("cpu"))}
    # SLIC alone, in this process: the cost the pool spreads
    start = time.perf_counter()
    from ssrseg.pseudo.labeler import batch_superpixels

    for image in images[: min(8, len(images))]:
        batch_superpixels(as_tensor01(image), cfg)
    results["slic_s_per_image"] = (time.perf_counter() - start) / min(8, len(images))
    legs = ["thread", *(f"workers_{n}" for n in args.workers)]
    times: dict[str, list[float]] = {k: [] for k in legs}
    startup: dict[str, list[float]] = {k: [] for k in legs if k != "thread"}
    superpixels: dict[str, list[Any]] = {}
    load_before = load_average()
    for _ in range(args.repeats):
        for name in legs:
            if name == "thread":
                start = time.perf_counter()
                superpixels[name] = thread_leg(images, cfg, args.forward_s)
                times[name].append(time.perf_counter() - start)
            else:
                got, started, loop = pool_leg(images, cfg, args.forward_s, int(name.split("_")[1]))
                superpixels[name] = got
                startup[name].append(started)
                times[name].append(loop)
    for name in legs:
        assert len(superpixels[name]) == args.images, f"{name}: {len(superpixels[name])} images"
        pairs = zip(superpixels[name], superpixels["thread"], strict=True)
        assert all(torch.equal(a, b) for a, b in pairs), f"{name} differs from the thread"
    best = {k: min(v) for k, v in times.items()}
    results["seconds"] = {k: {"min": min(v), "all": v} for k, v in times.items()}
    results["per_image_s"] = {k: v / args.images for k, v in best.items()}
    results["pool_start_s"] = {k: min(v) for k, v in startup.items()}
    results["floor_per_image_s"] = args.forward_s  # the forward: no superpixel leg beats it
    for n in args.workers:
        results[f"speedup_{n}_workers_vs_thread"] = best["thread"] / best[f"workers_{n}"]
    results["load_average"] = {"before": load_before, "after": load_average()}
    write_json(Path(args.out), results)
    print({k: round(v, 4) for k, v in results["per_image_s"].items()}, file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
