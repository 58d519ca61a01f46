"""Helpers shared by the benchmarks: machine description, interleaved timing, peak memory, JSON.

Timing on a shared machine: every benchmark runs the things it compares *interleaved* (one call
of each, round after round), so a change of load hits all of them alike, and reports medians and
minima of the rounds, wall-clock and process-CPU seconds, with the 1-minute load average before
and after. Ratios within one run are the figures to read; absolute seconds depend on the load.

Benchmarks run as scripts (``python benchmarks/bench_x.py``), so this module is imported as
``_timing`` from the ``benchmarks`` folder.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ssrseg.config import atomic_write_text

RESULTS = Path(__file__).parent / "results"


def cpu_model() -> str:
    """CPU model from /proc/cpuinfo where there is one (Linux), else the platform's name."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """1-minute load average (None where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": (
            sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        ),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "note": "shared machine: compare ratios measured within one run",
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call (CUDA synchronised around it)."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(
    fns: dict[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    after_warmup: Callable[[], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Call every function once per round, ``repeats`` rounds after ``warmup`` untimed ones;
    ``after_warmup`` runs between the two (to clear section timers or a memory peak that the
    warm-up filled).

    Returns per name: ``wall_s`` / ``cpu_s`` lists and their medians and minima, plus the load
    average before and after.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    if after_warmup is not None:
        after_warmup()
    walls: dict[str, list[float]] = {name: [] for name in fns}
    cpus: dict[str, list[float]] = {name: [] for name in fns}
    load_before = load_average()
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = timed(fn, device)
            walls[name].append(wall)
            cpus[name].append(cpu)
    load_after = load_average()
    return {
        name: {
            "median_wall_s": statistics.median(walls[name]),
            "min_wall_s": min(walls[name]),
            "median_cpu_s": statistics.median(cpus[name]),
            "min_cpu_s": min(cpus[name]),
            "wall_s": [round(x, 4) for x in walls[name]],
            "cpu_s": [round(x, 4) for x in cpus[name]],
            "load_average_1min_before_after": [load_before, load_after],
        }
        for name in fns
    }


def ratio(times: dict[str, dict[str, Any]], num: str, den: str, key: str) -> float:
    """``times[num][key] / times[den][key]`` rounded to 3 decimals."""
    return round(times[num][key] / times[den][key], 3)


CLOCKS = ("median_wall_s", "min_wall_s", "median_cpu_s")


def ratio_tables(
    times: dict[str, dict[str, Any]],
    pairs: dict[str, tuple[str, str]],
    clocks: tuple[str, ...] = CLOCKS,
    prefix: str = "ratios",
) -> dict[str, dict[str, float]]:
    """``{"<prefix>_<clock>": {name: ratio(times, num, den, clock)}}`` for every clock (the
    ``_s`` suffix dropped), ``pairs`` mapping each name to its ``(num, den)`` entries."""
    return {
        f"{prefix}_{clock.removesuffix('_s')}": {
            name: ratio(times, num, den, clock) for name, (num, den) in pairs.items()
        }
        for clock in clocks
    }


def vs_pairs(*pairs: tuple[str, str]) -> dict[str, tuple[str, str]]:
    """``{"<num>_vs_<den>": (num, den)}`` for :func:`ratio_tables`, in the order given."""
    return {f"{num}_vs_{den}": (num, den) for num, den in pairs}


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``n`` intra-op threads (unchanged when None); yields the count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _status_mib(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MiB, where Linux has it."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    return None


def peak_memory_mib(device: torch.device) -> float:
    """CUDA allocator peak of ``device``, or the process's peak RSS on the CPU (MiB).

    On Linux the peak is ``VmHWM``: ``ru_maxrss`` would also count the parent's memory at the
    fork of a spawned child, since it survives the ``exec``.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _status_mib("VmHWM")
    if hwm is not None:
        return hwm
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def reset_peak_memory(device: torch.device) -> None:
    """Restart the peak: CUDA's allocator peak, or on Linux the RSS high-water mark (writing 5
    to ``/proc/self/clear_refs``; elsewhere the CPU peak cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def run_in_child(target: Callable[..., None], *args: Any) -> Any:
    """Run ``target(*args, queue)`` in a fresh (spawned) process and return what it puts on the
    queue: peak memory of one configuration alone."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    try:
        result = queue.get()
    finally:
        proc.join()
    if isinstance(result, BaseException):
        raise result
    return result


def write_json(path: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """Write ``report`` as indented JSON (atomically); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    return out


def out_path(arg: str | None, name: str, device: torch.device) -> Path:
    """``--out`` as given (a ``.json`` file, or a folder for ``<name>_<device>.json``), default
    ``benchmarks/results/<name>_<device>.json``."""
    if arg is None:
        return RESULTS / f"{name}_{device.type}.json"
    path = Path(arg)
    return path if path.suffix == ".json" else path / f"{name}_{device.type}.json"
