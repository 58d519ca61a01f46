"""PASCAL VOC 2012 test-set export in the layout of the official evaluation server.

The server takes a tar archive of a ``results/`` folder holding
``results/VOC2012/Segmentation/comp6_test_cls/<image id>.png``: one palette PNG per test image,
the size of the image, pixel values the class indices 0-20 (``comp6``: methods trained with
data beyond VOC, here CLIP's pre-training).
"""

from __future__ import annotations

import contextlib
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssrseg.atomic import atomic_path, is_temporary
from ssrseg.data.base import read_image
from ssrseg.engine.crf_pool import OrderedPool, crf_mask
from ssrseg.errors import BadInputError
from ssrseg.viz import save_label_png

VOC_TEST_SUBDIR = Path("results") / "VOC2012" / "Segmentation" / "comp6_test_cls"
VOC_NUM_CLASSES = 21  # background + 20 classes


def voc_test_dir(out_root: str | os.PathLike[str]) -> Path:
    """``out_root/results/VOC2012/Segmentation/comp6_test_cls``."""
    return Path(out_root) / VOC_TEST_SUBDIR


def voc_test_path(out_root: str | os.PathLike[str], image_id: str) -> Path:
    """Where the prediction of ``image_id`` goes."""
    if not image_id or "/" in image_id or "\\" in image_id or image_id.startswith("."):
        raise ValueError(f"image id {image_id!r} cannot be a file name")
    return voc_test_dir(out_root) / f"{image_id}.png"


def check_voc_mask(mask: np.ndarray, image_shape: tuple[int, ...], image_id: str) -> None:
    """The server rejects a whole submission for one bad file: check each before writing."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"{image_id}: mask must be H x W uint8, got {mask.dtype} {mask.shape}")
    if mask.shape != tuple(image_shape[:2]):
        raise ValueError(f"{image_id}: mask is {mask.shape} but the image is {image_shape[:2]}")
    if mask.size and int(mask.max()) >= VOC_NUM_CLASSES:
        raise ValueError(f"{image_id}: mask holds class {int(mask.max())}, VOC has 0-20")


def export_voc_test(
    segmenter: Any,
    image_ids: Sequence[str],
    image_path: Any,
    out_root: str | os.PathLike[str],
    *,
    crf: bool | None = None,
    skip_log: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    crf_workers: int = 0,
    guard: Any = None,
) -> list[str]:
    """Predict every test image and write the server layout under ``out_root``.

    segmenter: a :class:`ssrseg.engine.infer.Segmenter` with 21 classes.
    image_ids / image_path: the split's ids and a function id -> image file (e.g. a VOC
        dataset's ``ids`` and ``image_path``; tags and masks are not needed).
    Finished files are kept (resumable) unless ``overwrite``. Unreadable images are recorded in
    ``skip_log`` (a :class:`ssrseg.data.base.SkipLog`) when given, else raised.
    crf_workers: processes running the CRF while the next image's forward runs (0: here;
    :class:`ssrseg.engine.crf_pool.OrderedPool`). guard: ``guard(image_id)`` a context manager
    around each image's work (:func:`ssrseg.engine.distributed.guard_image`).
    Returns the ids written in this call.
    """
    from tqdm import tqdm

    if segmenter.num_classes != VOC_NUM_CLASSES:
        raise ValueError(
            f"the VOC test export needs a 21-class model, this one has {segmenter.num_classes}"
        )
    todo = [i for i in image_ids if overwrite or not voc_test_path(out_root, i).is_file()]
    voc_test_dir(out_root).mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    use_crf = segmenter.infer.crf if crf is None else crf

    def within(image_id: str) -> Any:
        return guard(image_id) if guard is not None else contextlib.nullcontext()

    def save(results: Any) -> None:
        for (image_id, shape), mask in results:
            with within(image_id):
                check_voc_mask(mask, shape, image_id)
                save_label_png(voc_test_path(out_root, image_id), mask, segmenter.palette)
                written.append(image_id)

    with OrderedPool[tuple[str, tuple[int, ...]]](crf_workers) as pool:
        for image_id in tqdm(todo, desc="VOC test export", disable=not progress):
            with within(image_id):
                try:
                    image = read_image(image_path(image_id))
                except BadInputError as exc:
                    if skip_log is None:
                        raise
                    skip_log.skip(image_id, exc)
                    continue
                mask, probs = segmenter.predict(image, return_probs=True, crf=False)
            key = (image_id, image.shape)
            if use_crf:
                save(pool.submit(key, crf_mask, image, probs, segmenter.crf_cfg))
            else:
                save(pool.put(key, mask))
        save(pool.drain())
    return written


def missing_voc_test(out_root: str | os.PathLike[str], image_ids: Sequence[str]) -> list[str]:
    """Ids whose PNG is not in the export (the server needs all 1,456)."""
    return [i for i in image_ids if not voc_test_path(out_root, i).is_file()]


def archive_voc_results(out_root: str | os.PathLike[str]) -> Path:
    """Pack ``out_root/results`` into ``out_root/results.tar.gz`` (the file to upload)."""
    root = Path(out_root)
    if not (root / "results").is_dir():
        raise FileNotFoundError(f"{root / 'results'}: nothing to archive")
    target = root / "results.tar.gz"

    def no_temporaries(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        # a temporary left by a process killed mid-write must never reach the server
        return None if is_temporary(Path(info.name).name) else info

    with atomic_path(target, suffix=".tmp") as tmp, tarfile.open(tmp, "w:gz") as tar:
        tar.add(root / "results", arcname="results", filter=no_temporaries)
    return target
