"""Data-parallel helpers for ``torchrun``: process group, device and collectives.

Single-process runs use a :class:`DistContext` with ``world_size == 1`` and every collective is
a no-op, so the trainer and the data-parallel stages have one code path.

The stages that split a dataset between processes (``cams``, ``pseudo-labels``, ``evaluate
--checkpoint``, ``predict``) use :func:`stage_context`: the torchrun rank combined with an
optional ``--shard K/N`` (:mod:`ssrseg.engine.shard`), a gloo process group on every device (its
collectives only carry confusion matrices and barriers; the forwards never talk to each other),
a SIGTERM handler that unwinds (so atomic writes remove their temporary files when torchrun
stops the other ranks after one failed) and :func:`guard_image` to name the rank and the image
of a failure.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ssrseg.engine.shard import Shard, parse_shard, share_indices

# A rank that finished its share waits for the slowest one at the final barrier; COCO shares
# can take hours, so the default 30-minute collective timeout would kill healthy jobs.
STAGE_TIMEOUT = datetime.timedelta(hours=48)


@dataclass(frozen=True)
class DistContext:
    """rank / world size / local rank of this process and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    local_world_size: int = 1  # processes of this job on this machine

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def setup(device: str | None = None) -> DistContext:
    """Read ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` (set by torchrun), pick the device
    (``--device``; default cuda when available, else cpu; under torchrun on CUDA the local
    rank's GPU) and initialise the process group (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device or default_device())
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was requested but CUDA is not available")
        if world > 1:
            dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(
        rank=rank, world_size=world, local_rank=local, device=dev, local_world_size=local_world()
    )


def local_world() -> int:
    """Processes of this job on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 without)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def rank_view() -> DistContext:
    """rank / world size / local rank from the torchrun environment, without a process group
    or a device (CPU): what a process is, before anything is initialised."""
    return DistContext(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=local_world(),
    )


@dataclass(frozen=True)
class StageContext:
    """A data-parallel stage's view of this process: its torchrun context, the share of the
    image list it handles (torchrun rank combined with ``--shard``) and the ``--shard`` it was
    given (whose files a merge step combines)."""

    dist: DistContext
    share: Shard
    shard: Shard

    @property
    def is_main(self) -> bool:
        """The process that writes the job-wide files (run record, merged metrics)."""
        return self.dist.is_main

    @property
    def label(self) -> str:
        """``rank R/W`` and/or ``shard K/N`` (empty for one plain process), for messages."""
        parts = []
        if self.dist.distributed:
            parts.append(f"rank {self.dist.rank}/{self.dist.world_size}")
        if not self.shard.whole:
            parts.append(f"shard {self.shard.index}/{self.shard.count}")
        return ", ".join(parts)


def stage_device(name: str, ctx: DistContext) -> str:
    """``name`` (already resolved: cpu, cuda, cuda:N) for this rank: a bare ``cuda`` under
    torchrun becomes this rank's local GPU, so N ranks on a machine use N GPUs."""
    if name == "cuda" and ctx.distributed:
        return f"cuda:{ctx.local_rank % max(1, torch.cuda.device_count())}"
    return name


def stage_context(shard: str | Shard | None = None) -> StageContext:
    """This process's share of a data-parallel stage: torchrun's RANK / WORLD_SIZE (a gloo
    process group is initialised once, destroyed at exit) combined with ``--shard K/N``.

    Raises :class:`ssrseg.engine.shard.ShardError` for a bad ``--shard``.
    """
    given = shard if isinstance(shard, Shard) else parse_shard(shard)
    ctx = rank_view()
    if ctx.distributed and not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=STAGE_TIMEOUT)
        atexit.register(_destroy_group)
    if ctx.distributed or not given.whole:
        unwind_on_sigterm()
    return StageContext(ctx, given.combined(ctx.rank, ctx.world_size), given)


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def unwind_on_sigterm() -> None:
    """Turn SIGTERM (torchrun stopping the surviving ranks, SLURM cancelling a job) into
    ``SystemExit`` so ``finally`` blocks and the atomic writers' clean-up run (kill -9 cannot
    be caught: its temporary dot-files stay, and a rerun ignores them)."""
    with contextlib.suppress(ValueError):  # not the main thread: leave the handler alone
        signal.signal(signal.SIGTERM, _raise_exit)


class StageError(RuntimeError):
    """An image failed in one process of a data-parallel stage (the message names both)."""


@contextlib.contextmanager
def guard_image(view: StageContext, image: str | None = None) -> Iterator[None]:
    """Re-raise any error while ``image`` is processed as :class:`StageError` naming the
    process (rank / shard) and the image (for an error that carries ``image_key``, such as a
    pooled CRF's :class:`ssrseg.engine.crf_pool.TaskError`, that key); the message also goes to
    stderr at once, because torchrun reports only the first failed rank's exit code. One plain
    process (no torchrun, no ``--shard``) keeps its errors as they are."""
    if not view.label:
        yield
        return
    try:
        yield
    except (KeyboardInterrupt, SystemExit, StageError):
        raise
    except Exception as exc:
        where = f" ({view.label})" if view.label else ""
        named = getattr(exc, "image_key", None) or image or "?"
        text = str(exc) if hasattr(exc, "image_key") else f"{type(exc).__name__}: {exc}"
        message = f"{named}{where}: {text}"
        print(f"ssrseg: failed on {message}", file=sys.stderr, flush=True)
        raise StageError(message) from exc


def cleanup(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum_(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """In-place sum over ranks (no-op for one process)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_arrays(arrays: list[np.ndarray], ctx: DistContext) -> list[np.ndarray]:
    """Exact element-wise sums over ranks of integer count arrays (confusion matrices): one
    int64 all_reduce (gloo, on the CPU) for all of them; unchanged for one process."""
    if not ctx.distributed or not arrays:
        return arrays
    flat = torch.from_numpy(np.concatenate([a.astype(np.int64).ravel() for a in arrays]))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, start = [], 0
    for a in arrays:
        out.append(flat[start : start + a.size].numpy().reshape(a.shape).astype(np.int64))
        start += a.size
    return out


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def main_then_all(view: StageContext, fn: Any) -> Any:
    """Run ``fn()`` (e.g. write the run record) on the main rank, then let every rank go on
    (barrier). Independent ``--shard`` processes each run it: their writes are atomic and
    identical. Returns ``fn()``'s value on the processes that ran it, else None."""
    result = fn() if view.is_main or not view.dist.distributed else None
    barrier(view.dist)
    return result


def share_list(items: list[Any], view: StageContext, cost: Any = None) -> list[Any]:
    """The items of ``items`` this process handles (:func:`ssrseg.engine.shard.share_indices`
    over positions; ``cost(position)`` weighs them, None: all equal)."""
    return [items[p] for p in share_indices(range(len(items)), view.share, cost)]


def gather_skipped(
    skipped: list[tuple[str, str]], order: list[str], ctx: DistContext
) -> list[tuple[str, str]]:
    """Every rank's skipped (id, message) pairs (or any (key, text) pairs keyed like ``order``,
    e.g. conversion notes), in the order of ``order`` (the image list one process would visit),
    so N ranks report them as one process does."""
    merged = [pair for part in all_gather_objects(list(skipped), ctx) for pair in part]
    if not ctx.distributed:
        return merged
    position = {image_id: i for i, image_id in enumerate(order)}
    return sorted(merged, key=lambda pair: position.get(pair[0], len(position)))
