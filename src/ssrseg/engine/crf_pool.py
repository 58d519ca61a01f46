"""Dense CRF (and other CPU-only post-processing) on every core, overlapping the forwards.

pydensecrf runs on one core; a COCO image with 81 labels takes ~18 s. :class:`OrderedPool`
sends each image's CRF to a pool of worker processes while the main process runs the next
image's forward, and hands the results back in submission order. The worker calls the same
function the serial path calls (:func:`crf_mask` / :func:`crf_probs`) on the same float32
arrays, so results are bit-identical to running them in the main process (``workers=0``).

The scores travel in memory (pickled through a pipe): never as full-resolution float logits on
disk. At most ``max_pending`` images (default: twice the workers) are in flight, which bounds
the memory: a COCO image's 81 x 480 x 640 float32 probabilities are 100 MB.

Default worker count (:func:`default_crf_workers`): the cores this process may use
(``os.sched_getaffinity``) split between the ranks of this job on this machine
(``LOCAL_WORLD_SIZE``).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Generic, TypeVar

import numpy as np

from ssrseg.config import CRFConfig
from ssrseg.engine import crf as crf_module  # looked up per call: tests stand in for it

KeyT = TypeVar("KeyT")

__all__ = [
    "OrderedPool",
    "TaskError",
    "available_cores",
    "crf_mask",
    "crf_probs",
    "default_crf_workers",
    "start_workers",
]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where the platform
    has no affinity)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_crf_workers(local_world_size: int = 1) -> int:
    """CRF worker processes for one rank: this process's cores split between the
    ``local_world_size`` ranks on this machine, at least 1."""
    return max(1, available_cores() // max(1, local_world_size))


def crf_probs(image: np.ndarray, probs: np.ndarray, cfg: CRFConfig) -> np.ndarray:
    """Dense CRF of one image: ``H x W x 3`` uint8 and ``K x H x W`` float32 probabilities ->
    refined ``K x H x W`` float32 (:func:`ssrseg.engine.crf.dense_crf`)."""
    return np.asarray(crf_module.dense_crf(image, probs, cfg), dtype=np.float32)


def crf_mask(image: np.ndarray, probs: np.ndarray, cfg: CRFConfig) -> np.ndarray:
    """Dense CRF then argmax: ``H x W`` uint8 labels (sends back 1 byte per pixel, not K x 4)."""
    refined: np.ndarray = crf_probs(image, probs, cfg).argmax(axis=0).astype(np.uint8)
    return refined


def _limit_threads() -> None:
    """Worker start-up: one thread per worker (the pool is the parallelism), and a watchdog
    that ends the worker once its parent is gone."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    """A kill -9 of a rank orphans its workers; they would hold the job's output pipes open
    (torchrun, a test's ``subprocess.run``) and wait on their queue for ever."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


def start_workers(workers: int) -> ProcessPoolExecutor:
    """``workers`` processes started with ``spawn`` (forking a process that holds torch threads
    or CUDA can deadlock), one thread each: what every CPU pool of ssrseg runs on (this one and
    :mod:`ssrseg.engine.superpixel_pool`)."""
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_limit_threads
    )


class TaskError(RuntimeError):
    """A pooled function failed; ``image_key`` names the item it ran on (what
    :func:`ssrseg.engine.distributed.guard_image` reports)."""

    def __init__(self, key: str, exc: BaseException) -> None:
        super().__init__(f"{type(exc).__name__}: {exc}")
        self.image_key = key


class OrderedPool(Generic[KeyT]):
    """Run functions in ``workers`` processes, collect the results in submission order.

    ``workers == 0`` runs each function at once in this process (the serial path). Use as a
    context manager; the processes start at the first :meth:`submit` (a job whose images are
    all done never starts them) with the ``spawn`` method (forking a process that holds torch
    threads or CUDA can deadlock).

    Typical loop::

        with OrderedPool(workers) as pool:
            for sample in samples:
                probs = forward(sample)
                for key, result in pool.submit(sample.image_id, crf_mask, image, probs, cfg):
                    write(key, result)
            for key, result in pool.drain():
                write(key, result)

    A function's exception is raised by the :meth:`submit` / :meth:`drain` that collects it,
    after the results before it were handed out, as :class:`TaskError` naming its key.
    """

    def __init__(self, workers: int, max_pending: int | None = None) -> None:
        if workers < 0:
            raise ValueError(f"--crf-workers must be >= 0, got {workers}")
        self.workers = workers
        self.max_pending = max_pending if max_pending is not None else 2 * max(1, workers)
        self._executor: ProcessPoolExecutor | None = None
        self._pending: deque[tuple[KeyT, Future[Any]]] = deque()

    def __enter__(self) -> OrderedPool[KeyT]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = start_workers(self.workers)
        return self._executor

    def submit(self, key: KeyT, fn: Callable[..., Any], *args: Any) -> Iterator[tuple[KeyT, Any]]:
        """Queue ``fn(*args)`` (``fn`` a module-level function, arguments picklable); returns
        the results (key, value) that must be collected now to keep at most ``max_pending``
        in flight, oldest first. Iterate it fully."""
        future: Future[Any]
        if self.workers == 0:
            future = Future()
            try:
                future.set_result(fn(*args))
            except Exception as exc:
                future.set_exception(exc)
        else:
            future = self._start().submit(fn, *args)
        self._pending.append((key, future))
        return self._collect(self.max_pending if self.workers else 0)

    def put(self, key: KeyT, value: Any) -> Iterator[tuple[KeyT, Any]]:
        """Queue a value that is already known (no work for the pool), so it is handed out in
        order with the others; returns what must be collected now, as :meth:`submit`."""
        future: Future[Any] = Future()
        future.set_result(value)
        self._pending.append((key, future))
        return self._collect(self.max_pending if self.workers else 0)

    def drain(self) -> Iterator[tuple[KeyT, Any]]:
        """Every result still in flight, in submission order."""
        return self._collect(0)

    def _collect(self, keep: int) -> Iterator[tuple[KeyT, Any]]:
        while len(self._pending) > keep:
            key, future = self._pending.popleft()
            try:
                value = future.result()
            except Exception as exc:
                raise TaskError(str(key), exc) from exc
            yield key, value

    def close(self) -> None:
        """Drop what is still queued and stop the workers."""
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
