"""SLIC superpixels of the upcoming images in worker processes, ahead of the main loop.

scikit-image's SLIC runs on one core, ~0.15 s for a VOC-size image (docs/performance.md). On
the CPU one background thread hides it behind the labeller's forward (~1 s per image); on a GPU
the forward takes ~0.1 s and that one thread sets the pace. :class:`SuperpixelPool` computes the
superpixels of the next images in ``workers`` processes while the main process runs the current
one; the caller keeps a bounded look-ahead (:func:`lookahead`, or the prefetch of
``ssrseg pseudo-labels`` / ``ssrseg cams``) and takes the results in its own order.

The workers run :func:`ssrseg.rectify.slic.slic_labels` (NumPy and scikit-image only: no torch
in the workers) on the same 8-bit images the labeller would compute them from
(:func:`ssrseg.pseudo.labeler.images_to_uint8`), and the main process turns the labels into a
tensor as :func:`ssrseg.pseudo.labeler.batch_superpixels` does: the superpixels, hence the
outputs, are bit-identical to the in-process path. A worker's error comes back as
:class:`SuperpixelError`, naming the image.

Default worker count (:func:`default_superpixel_workers`): the cores of this rank
(:func:`ssrseg.engine.crf_pool.default_crf_workers`: this process's cores split between the
ranks on this machine); where the command also runs the CRF pool, an eighth of them (at
least 1), and the CRF keeps its own default.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from ssrseg.config import SSRConfig
from ssrseg.engine.crf_pool import TaskError, default_crf_workers, start_workers
from ssrseg.pseudo.labeler import images_to_uint8
from ssrseg.rectify.slic import slic_labels

ItemT = TypeVar("ItemT")
StartedT = TypeVar("StartedT")

__all__ = [
    "CRF_SHARE",
    "PendingSuperpixels",
    "SuperpixelError",
    "SuperpixelPool",
    "default_superpixel_workers",
    "lookahead",
]

# With the CRF pool in the same command (`pseudo-labels --crf`) the superpixels get 1 / CRF_SHARE
# of the rank's cores. Per VOC image the CRF costs ~4 s of a core and SLIC ~0.15 s (27x less),
# so the CRF sets the pace: W CRF workers finish W / 4 images a second, which SLIC keeps up with
# on 0.04 W cores; an eighth leaves a margin of 3. The CRF keeps its default (all the cores):
# the superpixel workers idle once their look-ahead is full, so the two pools oversubscribe
# the cores by little.
CRF_SHARE = 8


def default_superpixel_workers(local_world_size: int = 1, with_crf: bool = False) -> int:
    """Superpixel worker processes for one rank: its cores (``default_crf_workers``), or an
    eighth of them (at least 1) when the CRF pool runs in the same command (``with_crf``)."""
    cores = default_crf_workers(local_world_size)
    return max(1, cores // CRF_SHARE) if with_crf else cores


class SuperpixelError(TaskError):
    """SLIC failed in a worker; the message and ``image_key`` name the image."""

    def __init__(self, key: str, exc: BaseException) -> None:
        super().__init__(key, exc)
        self.args = (f"SLIC superpixels of {key}: {type(exc).__name__}: {exc}",)


class PendingSuperpixels:
    """The superpixels of one labeller call, being computed: :meth:`result` waits for them."""

    def __init__(
        self, keys: Sequence[str], futures: Sequence[Future[np.ndarray]], device: torch.device
    ) -> None:
        self.keys = list(keys)
        self.futures = list(futures)
        self.device = device

    def result(self) -> Tensor:
        """``B x H x W`` long SLIC labels on the images' device (:class:`SuperpixelError`
        naming the first image whose SLIC failed)."""
        labels = []
        for key, future in zip(self.keys, self.futures, strict=True):
            try:
                labels.append(torch.from_numpy(future.result()).long())
            except Exception as exc:
                raise SuperpixelError(key, exc) from exc
        return torch.stack(labels).to(self.device)

    def cancel(self) -> None:
        for future in self.futures:
            future.cancel()


class SuperpixelPool:
    """SLIC in ``workers`` processes (>= 1; 0 means no pool: the callers keep their one
    background thread). Use as a context manager; the processes start at the first
    :meth:`submit` (a job with nothing to label, or without ``affinity.mask=sgc``, starts
    none) with the ``spawn`` method (:func:`ssrseg.engine.crf_pool.start_workers`).
    :meth:`submit` may be called from another thread than :meth:`close` (the prefetch
    thread of ``ssrseg pseudo-labels``)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"a superpixel pool needs >= 1 workers, got {workers}")
        self.workers = workers
        self.lookahead = 2 * workers  # labeller calls in flight: every worker busy, one queued
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> SuperpixelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, keys: Sequence[str], images01: Tensor, cfg: SSRConfig) -> PendingSuperpixels:
        """Start SLIC of ``B x 3 x H x W`` images in [0, 1] (``keys``: their ids, for errors)
        with ``sgc.n_segments`` / ``sgc.compactness``, one task per image."""
        images = images_to_uint8(images01)
        if len(keys) != len(images):
            raise ValueError(f"{len(keys)} keys for {len(images)} images")
        with self._lock:
            if self._executor is None:
                self._executor = start_workers(self.workers)
            executor = self._executor
        futures = [
            executor.submit(slic_labels, image, cfg.sgc.n_segments, cfg.sgc.compactness)
            for image in images
        ]
        return PendingSuperpixels(keys, futures, images01.device)

    def close(self) -> None:
        """Drop what is still queued and stop the workers."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def lookahead(
    items: Iterable[ItemT], start: Callable[[ItemT], StartedT], depth: int
) -> Iterator[tuple[ItemT, StartedT]]:
    """``(item, start(item))`` in the order of ``items``; ``start`` has run for up to ``depth``
    items past the one handed out (``items`` is read that far ahead). Stopping early (or an
    exception in the consumer) leaves the started items to the pool's :meth:`close`."""
    queue: deque[tuple[ItemT, StartedT]] = deque()
    for item in items:
        queue.append((item, start(item)))
        if len(queue) > depth:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
