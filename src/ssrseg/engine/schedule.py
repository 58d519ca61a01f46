"""Training schedule as pure functions of the step: learning rate and data order.

Everything that decides what happens at step ``s`` is computed from ``s`` (and the seed), so a
run resumed at step ``s`` continues exactly where an uninterrupted run would be.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def lr_factor(
    step: int,
    iterations: int,
    warmup_iters: int,
    warmup_ratio: float,
    power: float,
    warmup_poly: bool = False,
) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based, before the update).

    During the first ``warmup_iters`` steps a linear ramp ``warmup_ratio + (1 - warmup_ratio)
    * step / warmup_iters``; after them the poly decay ``(1 - step / iterations) ** power``
    (0 at ``iterations``). That is WeCLIP's ``PolyWarmupAdamW``: the ramp alone, not multiplied
    by the poly factor. ``warmup_poly=True`` multiplies the ramp by the poly factor (ssrseg's
    earlier schedule; 0.16 % lower at step 49 of 30k).
    """
    poly = max(0.0, 1.0 - step / max(1, iterations)) ** power
    if step < warmup_iters:
        ramp = warmup_ratio + (1.0 - warmup_ratio) * step / warmup_iters
        return ramp * poly if warmup_poly else ramp
    return poly


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """Seeded permutation of ``range(n)`` for one epoch."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def batch_indices(
    step: int, n: int, batch_size: int, world_size: int, rank: int, seed: int
) -> list[int]:
    """Dataset indices of this rank's batch at ``step``.

    Each epoch is a seeded permutation cut into global batches of ``batch_size * world_size``
    (the incomplete tail is dropped, like ``DistributedSampler(drop_last=True)``); rank r takes
    the r-th slice of each global batch. A dataset smaller than one global batch is repeated.
    """
    if n <= 0:
        raise ValueError("the training set is empty")
    g = batch_size * world_size
    per_epoch = max(1, n // g)
    epoch, j = divmod(step, per_epoch)
    perm = epoch_permutation(n, seed, epoch)
    if n < g:
        perm = (perm * (g // n + 1))[:g]
    start = j * g + rank * batch_size
    return perm[start : start + batch_size]


def item_seed(seed: int, step: int, rank: int, slot: int) -> int:
    """Seed of one item's augmentation (crop, scale, flip) at ``step``."""
    return int(torch.randint(0, 2**62, (1,), generator=_gen(seed, step, rank, slot)).item())


def _gen(*parts: int) -> torch.Generator:
    value = 0
    for p in parts:
        value = (value * 1_000_003 + p) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches for steps ``start .. end - 1``: each a list of (dataset index, augmentation
    seed). Restartable at any step (resume) with the same result as an uninterrupted run."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        start: int,
        end: int,
        seed: int,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        self.n, self.batch_size, self.start, self.end = n, batch_size, start, end
        self.seed, self.world_size, self.rank = seed, world_size, rank

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.end):
            idx = batch_indices(
                step, self.n, self.batch_size, self.world_size, self.rank, self.seed
            )
            yield [(i, item_seed(self.seed, step, self.rank, k)) for k, i in enumerate(idx)]
