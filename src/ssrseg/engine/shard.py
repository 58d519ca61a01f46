"""Which images a process handles when a stage runs on several processes.

A *share* is a deterministic subset of an image list given to one of ``count`` workers. Shares
are balanced by image size with greedy longest-processing-time (LPT): images are taken largest
first (ties: earlier in the list first) and each goes to the worker with the least total so far
(ties: the lowest worker index). Every image lands in exactly one share; within a share the
images keep the list's order, so one worker visits them in the order one process would.

A worker index comes from ``torchrun`` (``RANK`` / ``WORLD_SIZE``), from ``--shard K/N`` (for
launchers that start independent processes: SLURM job arrays, machines over a shared folder), or
both: under ``torchrun`` with ``--shard K/N`` the ``N x WORLD_SIZE`` shares are numbered
``K * WORLD_SIZE + RANK``.

Pure functions only (no I/O besides :func:`pixel_costs`, which reads image headers).
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from ssrseg.errors import BadInputError

__all__ = [
    "Shard",
    "ShardError",
    "assign_shares",
    "parse_shard",
    "pixel_costs",
    "share_indices",
]

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardError(ValueError):
    """A ``--shard`` value that cannot be used (the message says what is allowed)."""


@dataclass(frozen=True)
class Shard:
    """Share ``index`` of ``count`` (0-based: ``--shard 0/4`` .. ``--shard 3/4``)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ShardError(
                f"--shard {self.index}/{self.count}: need 0 <= K < N (K is 0-based, e.g. "
                "--shard 0/4 .. --shard 3/4)"
            )

    @property
    def whole(self) -> bool:
        """True when this share is the whole list (one worker)."""
        return self.count == 1

    def tag(self) -> str:
        """File-name tag ``shard-K-of-N`` (empty for the whole list)."""
        return "" if self.whole else f"shard-{self.index}-of-{self.count}"

    def combined(self, rank: int, world_size: int) -> Shard:
        """The share of ``rank`` of ``world_size`` processes inside this shard: share
        ``index * world_size + rank`` of ``count * world_size``."""
        return Shard(self.index * world_size + rank, self.count * world_size)


def parse_shard(text: str | None) -> Shard:
    """``"K/N"`` (0 <= K < N) -> :class:`Shard`; None or empty -> the whole list.

    Raises :class:`ShardError` with a one-line message for anything else.
    """
    if text is None or not str(text).strip():
        return Shard()
    match = _SHARD.match(str(text))
    if match is None:
        raise ShardError(
            f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. --shard 0/4 "
            "(SLURM arrays: --array=0-3 and --shard $SLURM_ARRAY_TASK_ID/4)"
        )
    return Shard(int(match.group(1)), int(match.group(2)))


def assign_shares(costs: Sequence[float], count: int) -> list[list[int]]:
    """Split positions ``0 .. len(costs) - 1`` into ``count`` shares by greedy LPT.

    Args:
        costs: one non-negative cost per item (e.g. its pixel count).
        count: number of shares (>= 1; may exceed the number of items: some shares are empty).
    Returns:
        ``count`` lists of positions, each ascending; together they hold every position once.
    """
    if count < 1:
        raise ValueError(f"need at least one share, got {count}")
    if any(c < 0 for c in costs):
        raise ValueError("costs must be non-negative")
    shares: list[list[int]] = [[] for _ in range(count)]
    # heap of (load, worker): the least-loaded worker first, the lowest index on ties
    heap = [(0.0, w) for w in range(count)]
    for position in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, worker = heapq.heappop(heap)
        shares[worker].append(position)
        heapq.heappush(heap, (load + float(costs[position]), worker))
    return [sorted(share) for share in shares]


def share_indices(
    items: Sequence[int], shard: Shard, cost: Callable[[int], float] | None = None
) -> list[int]:
    """The items of ``items`` (e.g. dataset indices, in visiting order) that ``shard`` handles,
    in their order. ``cost(item)`` weighs an item (default: all equal, which gives
    round-robin-like contiguous balance)."""
    if shard.whole:
        return list(items)
    costs = [1.0 if cost is None else float(cost(item)) for item in items]
    return [items[p] for p in assign_shares(costs, shard.count)[shard.index]]


def pixel_costs(path_of: Callable[[int], str | os.PathLike[str]]) -> Callable[[int], float]:
    """A cost function for :func:`share_indices`: an item's pixel count from its image header
    (an unreadable image costs 1: it is skipped quickly, and the error is reported by the
    worker that reads it)."""

    def cost(item: int) -> float:
        try:
            with Image.open(path_of(item)) as img:
                width, height = img.size
        except (OSError, ValueError, SyntaxError, KeyError, BadInputError):
            return 1.0
        return float(width * height)

    return cost
