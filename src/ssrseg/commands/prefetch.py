"""Read and prepare the next images of ``ssrseg cams`` / ``ssrseg pseudo-labels`` on a background
thread while the labeller runs the current one.

SLIC (scikit-image) is single-threaded and costs about as much as a tenth of SSR's per-image
work at VOC sizes; its core releases the GIL, and so do Pillow's decoding and resizing, so a
single worker thread hides reading, resizing and SLIC of image ``i + 1`` behind the labeller's
torch work on image ``i``. What the worker computes is exactly what the serial path computes
(the same functions on the same inputs), so the outputs are bit-identical.

:class:`PrefetchedDataset` stands in for the dataset inside :func:`ssrseg.data.base.iter_valid`:
reading item ``i`` hands back the sample the worker read (re-raising its exception, so a broken
image is reported exactly as before) and queues item ``i + 1`` of the loop's order. The
progress bar, the skip log and the order stay in the caller's thread, unchanged.

With ``--superpixel-workers W`` > 0 (on a GPU one SLIC thread is slower than the forward) the
thread reads and resizes the next ``2 W`` images and hands their SLIC to a
:class:`~ssrseg.engine.superpixel_pool.SuperpixelPool` of ``W`` processes; the labeller waits
for an image's superpixels only when it reaches it (:meth:`Prepared.ready_superpixels`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ssrseg.config import SSRConfig
    from ssrseg.data.base import Sample, SegDataset
    from ssrseg.engine.superpixel_pool import PendingSuperpixels

# lazy: `ssrseg --help` imports every command module, so the library (and torch) is imported
# inside the functions that run a command.


@dataclass
class Prepared:
    """Labeller inputs of one image: ``images01`` ``1 x 3 x h x w`` in [0, 1] at the work size;
    ``superpixels`` ``1 x h x w`` long SLIC labels (None: the labeller computes what it needs);
    ``pending``: those superpixels still being computed in the superpixel pool."""

    images01: torch.Tensor
    superpixels: torch.Tensor | None
    pending: PendingSuperpixels | None = None

    def ready_superpixels(self) -> torch.Tensor | None:
        """The superpixels, waiting for the pool's result when they are pending (a worker's
        error is raised here, in the caller's thread, naming the image)."""
        if self.pending is not None:
            self.superpixels, self.pending = self.pending.result(), None
        return self.superpixels


def superpixels_for(images01: torch.Tensor, cfg: SSRConfig) -> torch.Tensor | None:
    """``B x 3 x H x W`` in [0, 1] -> ``B x H x W`` long SLIC labels on ``images01``'s device,
    computed as the labeller computes them when none are given (SLIC of the 8-bit image with
    ``sgc.n_segments`` / ``sgc.compactness``); None unless ``affinity.mask`` is ``sgc``."""
    from ssrseg.pseudo.labeler import batch_superpixels

    if cfg.affinity.mask != "sgc":
        return None
    return batch_superpixels(images01, cfg)


class PrefetchedDataset:
    """The items of ``dataset`` in ``order``, each read (and prepared by ``prepare``) on
    ``executor`` while the caller works on the previous one.

    ``prepare(sample)`` returns the labeller inputs, or None for an image that will not be
    labelled (already done); an exception inside it is swallowed and gives None, so the
    labeller redoes that work in the caller's thread and raises there, as without prefetching.
    Exceptions of ``dataset[i]`` itself are re-raised by ``self[i]``. ``depth``: items of the
    order queued past the one read (1: the next one).
    """

    def __init__(
        self,
        dataset: SegDataset,
        order: Sequence[int],
        prepare: Callable[[Sample], Prepared | None],
        executor: Executor,
        depth: int = 1,
    ) -> None:
        self.dataset = dataset
        self.ids = dataset.ids
        self.name = dataset.name
        self.split = dataset.split
        self._prepare = prepare
        self._executor = executor
        self._order = list(order)
        self._position = {index: pos for pos, index in enumerate(self._order)}
        self._depth = max(1, depth)
        self._pending: dict[int, Future[tuple[Sample, Prepared | None]]] = {}
        self._last: tuple[Sample, Prepared | None] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def _load(self, index: int) -> tuple[Sample, Prepared | None]:
        sample = self.dataset[index]
        try:
            prepared = self._prepare(sample)
        except Exception:  # redone (and raised) by the labeller in the caller's thread
            prepared = None
        return sample, prepared

    def _submit(self, index: int) -> Future[tuple[Sample, Prepared | None]]:
        return self._executor.submit(self._load, index)

    def __getitem__(self, index: int) -> Sample:
        future = self._pending.pop(index, None) or self._submit(index)
        pos = self._position.get(index)
        if pos is not None:
            for following in self._order[pos + 1 : pos + 1 + self._depth]:
                if following not in self._pending:
                    # queued now: the worker starts on it as soon as the items before are done
                    self._pending[following] = self._submit(following)
        self._last = None
        sample, prepared = future.result()
        self._last = (sample, prepared)
        return sample

    def prepared(self, sample: Sample) -> Prepared | None:
        """What the worker prepared for ``sample`` (the item last read), else None."""
        if self._last is not None and self._last[0] is sample:
            return self._last[1]
        return None

    def cancel(self) -> None:
        """Drop the queued items (the loop ended early), and their pending superpixels."""
        for future in self._pending.values():
            if not future.cancel() and future.done() and future.exception() is None:
                prepared = future.result()[1]
                if prepared is not None and prepared.pending is not None:
                    prepared.pending.cancel()
        self._pending.clear()
