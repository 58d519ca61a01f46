"""The Table 3 rows as pseudo-labeller configurations, and their scoring against ground truth.

A *row* is a name plus config overrides of the labeller (which attentions refine the CAM, which
column mask, PAR on or off). :func:`score_rows` runs each row over a dataset split and scores
its labels with one confusion matrix per row (P / R / mIoU, class means); finished rows are
cached as JSON so a killed run resumes row by row.

Images whose size is already the labeller's working size (a multiple of the patch, within the
long-side limit: the toy world) run in batches; others (VOC, COCO) run one at a time as in
``ssrseg pseudo-labels``: resized to the working size (``cam.input_resize``), their labels
returned at the image's own size (``pseudo.output_resize``). With a superpixel pool, the SLIC
of the rows with ``affinity.mask=sgc`` runs in its processes ahead of the labeller
(:func:`ssrseg.engine.superpixel_pool.lookahead`); the labels are the same.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ssrseg.config import SSRConfig, atomic_write_text, merge_values
from ssrseg.data.resize import resize_to_tensor01, work_size
from ssrseg.engine.distributed import (
    StageContext,
    all_gather_objects,
    broadcast_object,
    guard_image,
    share_list,
    solo_view,
    sum_confusion,
)
from ssrseg.engine.superpixel_pool import SuperpixelPool, lookahead
from ssrseg.errors import BadInputError
from ssrseg.metrics import ConfusionMatrix, json_safe
from ssrseg.pseudo.labeler import PseudoLabeler
from ssrseg.viz import colorize, overlay_cam, save_label_png, save_panel


def _seed_row(clip: bool, dino: bool, mask: str, par: bool) -> dict[str, Any]:
    """Labeller overrides of one row: which attentions refine the CAM, the column mask, PAR."""
    return {
        "affinity": {"use_clip_attention": clip, "use_dino_attention": dino, "mask": mask},
        "par": {"enabled": par},
    }


# The spec's Table 3 rows as config overrides of the pseudo labeller. CAM-seed rows are scored
# before PAR (a [decision]: the paper does not say); "+ PAR" is the full pseudo label.
TABLE3_ROWS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("initial CAM", _seed_row(False, False, "none", False)),
    ("+ CLIP attention (box mask)", _seed_row(True, False, "box", False)),
    ("+ DINO attention (box mask)", _seed_row(True, True, "box", False)),
    ("+ SGC mask", _seed_row(True, True, "sgc", False)),
    ("+ PAR (pseudo labels)", _seed_row(True, True, "sgc", True)),
)

# The first three seed rows again after PAR (the fourth after PAR is "+ PAR (pseudo labels)").
AFTER_PAR_ROWS: tuple[tuple[str, dict[str, Any]], ...] = tuple(
    (f"{name}, after PAR", {**ov, "par": {"enabled": True}}) for name, ov in TABLE3_ROWS[:3]
)

# Diagnostic row: attention refinement without any column mask, to show what the masks fix.
EXTRA_ROWS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("CLIP+DINO attention, no mask", _seed_row(True, True, "none", False)),
)

# A row's hook sees (row name, dataset, scored indices, {image id: H x W label map}) and returns
# extra JSON-able numbers stored with the row (e.g. the toy world's context-leak shares).
RowHook = Callable[[str, Any, Sequence[int], dict[str, np.ndarray]], dict[str, Any] | None]


def merge_config(base: SSRConfig, overrides: dict[str, Any]) -> SSRConfig:
    """``base`` with ``{section: {field: value}}`` replaced, each value converted to its field's
    type as a YAML override would be (``parse_overrides`` leaves ``"6e-4"`` a string); unknown
    keys raise ``ConfigError``. No cross-field validation."""
    return merge_values(base, overrides)


def slug(name: str) -> str:
    """A file-name form of a row name: ``"+ SGC mask"`` -> ``"sgc_mask"``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "row"


def needs_dino(overrides: dict[str, Any]) -> bool:
    return bool(overrides.get("affinity", {}).get("use_dino_attention", False))


def _chunks(indices: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def images01(samples: Sequence[Any], device: torch.device) -> torch.Tensor:
    """Same-size ``H x W x 3`` uint8 images -> ``B x 3 x H x W`` float in [0, 1]."""
    arr = np.stack([s.image for s in samples])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255).to(device)


@dataclass
class Call:
    """One labeller call: ``samples`` and their ``B x 3 x h x w`` input in [0, 1] at the working
    size; ``out_size`` the image's own size (one resized image) or None (a batch already at the
    working size)."""

    samples: Sequence[Any]
    x: torch.Tensor
    out_size: tuple[int, int] | None


def labeler_calls(labeler: Any, samples: Sequence[Any], long_side: int = 1024) -> list[Call]:
    """The labeller calls of ``samples``: one for same-size samples already at the working
    size, else one per sample, resized as ``ssrseg pseudo-labels`` resizes it."""
    device = next(iter(labeler.buffers())).device
    patch = labeler.patch_size
    h, w = samples[0].image.shape[:2]
    same = all(s.image.shape[:2] == (h, w) for s in samples)
    if same and work_size(h, w, patch, long_side) == (h, w):
        return [Call(samples, images01(samples, device), None)]
    calls = []
    for s in samples:  # as `ssrseg pseudo-labels`: labels come back at the image's size
        hs, ws = s.image.shape[:2]
        size = work_size(hs, ws, patch, long_side)
        x = resize_to_tensor01(s.image, size, labeler.cfg.cam.input_resize, device)
        calls.append(Call([s], x, (hs, ws)))
    return calls


def run_call(
    labeler: Any, call: Call, cmpa: Any = None, superpixels: torch.Tensor | None = None
) -> list[tuple[np.ndarray, Any, int]]:
    """Per sample of ``call`` ``(labels, labeller output, index in that output)``: ``H x W``
    uint8 labels at the image's size; the output's CAMs are at the working size."""
    labels_of = [s.labels for s in call.samples]
    out = labeler(call.x, labels_of, superpixels=superpixels, cmpa=cmpa, out_size=call.out_size)
    labels = out.labels.cpu().numpy().astype(np.uint8)
    return [(labels[j], out, j) for j in range(len(call.samples))]


def label_samples(
    labeler: Any,
    samples: Sequence[Any],
    cmpa: Any = None,
    long_side: int = 1024,
) -> list[tuple[np.ndarray, Any, int]]:
    """Pseudo labels (``H x W`` uint8 at each image's size) of ``samples``.

    Returns per sample ``(labels, labeller output, index in that output)``; the output's CAMs
    are at the working size. Same-size samples already at the working size share one call.
    """
    return [
        r
        for call in labeler_calls(labeler, samples, long_side)
        for r in run_call(labeler, call, cmpa)
    ]


def score_labeler(
    labeler: Any,
    dataset: Any,
    indices: Sequence[int],
    batch: int,
    cmpa: Any = None,
    desc: str = "score",
    keep: Callable[[Any, np.ndarray], None] | None = None,
    long_side: int = 1024,
    progress: bool = True,
    superpixels: SuperpixelPool | None = None,
    view: StageContext | None = None,
    stored: Callable[[Any], np.ndarray | None] | None = None,
) -> Any:
    """Run ``labeler`` over ``dataset[indices]`` and score its labels against the masks.

    Returns a ``ConfusionMatrix``; ``keep(sample, labels)`` sees every image's labels.
    Unreadable images are skipped (reported by :class:`~ssrseg.data.base.SkipLog`).
    ``superpixels``: with ``affinity.mask=sgc``, the SLIC of the next ``superpixels.lookahead``
    labeller calls runs in that pool while the current call runs (None: the labeller's own
    background thread); the labels are the same.
    ``view``: an error names this process (rank / shard) and the image(s) of the failed call
    (:func:`~ssrseg.engine.distributed.guard_image`). ``stored(sample)``: the sample's labels
    finished by an earlier attempt, or None; a call whose every image has them is not run again.
    """
    from tqdm import tqdm

    view = view if view is not None else solo_view()
    conf = ConfusionMatrix(dataset.num_classes)
    bar = tqdm(total=len(indices), desc=desc, leave=False, disable=not progress)

    def calls() -> Iterator[tuple[Call, int]]:
        """Each labeller call, with the number of images its chunk advances the bar by."""
        for chunk in _chunks(indices, max(1, batch)):
            samples = []
            for i in chunk:
                with guard_image(view, str(dataset.ids[i])):
                    try:
                        samples.append(dataset[i])
                    except BadInputError as exc:
                        print(f"skipped: {exc}")
            groups: list[list[Any]] = []
            for s in samples:  # consecutive same-size images share a call
                if groups and groups[-1][0].image.shape == s.image.shape:
                    groups[-1].append(s)
                else:
                    groups.append([s])
            todo = [c for group in groups for c in labeler_calls(labeler, group, long_side)]
            for n, call in enumerate(todo):
                yield call, len(chunk) if n == len(todo) - 1 else 0
            if not todo:
                bar.update(len(chunk))

    def started(
        items: Iterable[tuple[Call, int]],
    ) -> Iterator[tuple[tuple[Call, int], Any]]:
        if superpixels is None or labeler.cfg.affinity.mask != "sgc":
            return ((item, None) for item in items)
        pool = superpixels

        def start(item: tuple[Call, int]) -> Any:
            call = item[0]
            return pool.submit([s.image_id for s in call.samples], call.x, labeler.cfg)

        return lookahead(items, start, pool.lookahead)

    for (call, advance), pending in started(calls()):
        # a batch's failure names all its images
        with guard_image(view, ", ".join(s.image_id for s in call.samples)):
            known = [stored(s) for s in call.samples] if stored is not None else [None]
            if all(labels is not None for labels in known):
                found = [labels for labels in known if labels is not None]
            else:  # the call of the first attempt: the same batch, the same labels
                sp = None if pending is None else pending.result()
                found = [o[0] for o in run_call(labeler, call, cmpa, sp)]
            for sample, labels in zip(call.samples, found, strict=True):
                if sample.mask is not None:
                    conf.update(labels, sample.mask)
                if keep is not None:
                    keep(sample, labels)
        bar.update(advance)
    bar.close()
    return conf


def row_labeler(base: Any, cfg: SSRConfig, overrides: dict[str, Any]) -> Any:
    """A labeller sharing ``base``'s backbones and prompts, configured for one row."""
    device = next(iter(base.buffers())).device
    return PseudoLabeler(
        base.clip, base.tokenizer, base.dino, base.prompts, merge_config(cfg, overrides)
    ).to(device)


def score_rows(
    base: Any,
    cfg: SSRConfig,
    rows: Sequence[tuple[str, dict[str, Any]]],
    dataset: Any,
    indices: Sequence[int],
    cache_dir: Path,
    *,
    batch: int = 16,
    cmpa: Any = None,
    long_side: int = 1024,
    hook: RowHook | None = None,
    hook_rows: Sequence[str] = (),
    label_dir: Path | None = None,
    label_row: str | None = None,
    progress: bool = True,
    view: StageContext | None = None,
    superpixel_workers: int = 0,
) -> dict[str, dict[str, Any]]:
    """Score every row; returns ``{row name: {"result": metrics dict, "extra": ...}}``.

    Rows already in ``cache_dir/<slug>.json`` are read back, not recomputed. Rows that need
    DINO are left out when ``base`` has none (``backbone.use_dino=false``). ``hook`` runs on
    the rows named in ``hook_rows``; ``label_row``'s labels are written to ``label_dir`` as
    palette PNGs (``<id>.png``).

    ``view``: under torchrun each rank scores whole labeller batches of ``indices`` (the
    batches one process would form, so every image's labels are the same), writes its own
    images' PNGs, and the confusion matrices are summed exactly; the main rank writes the row
    files. None: one process.

    ``superpixel_workers``: processes computing the SLIC of the ``affinity.mask=sgc`` rows
    ahead of the labeller (one pool for all rows, started at the first such row; 0: the
    labeller's background thread).
    """
    view = view if view is not None else solo_view()
    step = max(1, batch)
    # whole batches, in list order within a share: re-chunking a share by `batch` gives the
    # same batches (the only short batch is the list's last, hence its share's last)
    mine = [i for chunk in share_list(list(_chunks(list(indices), step)), view) for i in chunk]
    out: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        slic = None
        if superpixel_workers:
            slic = stack.enter_context(SuperpixelPool(superpixel_workers))
        for name, overrides in rows:
            path = cache_dir / f"{slug(name)}.json"
            # the main rank decides (a row file written during this run must not split the ranks)
            if broadcast_object(path.is_file(), view.dist):
                out[name] = json.loads(path.read_text())
                print(f"  {name}: reused {path}")
                continue
            if needs_dino(overrides) and base.dino is None:
                print(f"  {name}: left out (no DINO: backbone.use_dino is false)")
                continue
            preds: dict[str, np.ndarray] = {}
            want_preds = hook is not None and name in hook_rows
            write = label_dir is not None and name == label_row

            def keep(
                sample: Any,
                labels: np.ndarray,
                _w: bool = write,
                _p: bool = want_preds,
                _store: dict[str, np.ndarray] = preds,
            ) -> None:
                if _p:
                    _store[sample.image_id] = labels
                if _w:
                    assert label_dir is not None
                    png = label_dir / f"{sample.image_id}.png"
                    if not png.is_file():  # finished by an earlier attempt: never written again
                        save_label_png(png, labels, dataset.palette_name)

            def stored(sample: Any, _w: bool = write) -> np.ndarray | None:
                # the label row's PNGs of a killed attempt (atomic: complete when present)
                png = label_dir / f"{sample.image_id}.png" if _w and label_dir is not None else None
                return np.asarray(Image.open(png)) if png is not None and png.is_file() else None

            labeler = row_labeler(base, cfg, overrides)
            conf = score_labeler(
                labeler,
                dataset,
                mine,
                step,
                cmpa,
                name,
                keep,
                long_side,
                progress and view.is_main,
                slic,
                view,
                stored,
            )
            sum_confusion([conf], view.dist)
            if want_preds and view.dist.distributed:
                for part in all_gather_objects(preds, view.dist):
                    preds.update(part)
            extra = hook(name, dataset, indices, preds) if want_preds and hook is not None else None
            entry = {"name": name, "overrides": overrides, "result": conf.compute(), "extra": extra}
            entry = json_safe(entry)
            if view.is_main:
                atomic_write_text(path, json.dumps(entry, indent=1) + "\n")
            out[name] = entry
    return out


def write_panels(
    folder: Path,
    dataset: Any,
    indices: Sequence[int],
    labeler: Any,
    segmenter: Any,
    cmpa: Any = None,
    long_side: int = 1024,
) -> list[Path]:
    """image | initial CAM | refined CAM | pseudo label | prediction | truth, one PNG each."""
    import torch.nn.functional as F

    written = []
    for i in indices:
        s = dataset[i]
        labels, out, j = label_samples(labeler, [s], cmpa, long_side)[0]
        h, w = s.image.shape[:2]

        def peak(maps: torch.Tensor, size: tuple[int, int] = (h, w)) -> np.ndarray:
            if maps.shape[0] == 0:
                return np.zeros(size, np.float32)
            up = F.interpolate(maps[None].float(), size=size, mode="bilinear")
            return up[0].max(0).values.cpu().numpy()

        pred = segmenter.predict(s.image, crf=False)
        items = [
            ("image", s.image),
            ("initial CAM", overlay_cam(s.image, peak(out.cams[j]))),
            ("refined CAM", overlay_cam(s.image, peak(out.refined[j]))),
            ("pseudo label", colorize(labels, dataset.palette_name)),
            ("prediction", colorize(pred, dataset.palette_name)),
        ]
        if s.mask is not None:
            items.append(("ground truth", colorize(s.mask, dataset.palette_name)))
        written.append(save_panel(folder / f"{s.image_id}.png", items, dataset.palette_name))
    return written


def baseline_scores(dataset: Any, indices: Sequence[int]) -> dict[str, Any]:
    """All-background and a centred-Gaussian prior painted with the true tags."""
    allbg = ConfusionMatrix(dataset.num_classes)
    centre = ConfusionMatrix(dataset.num_classes)
    for i in indices:
        s = dataset[i]
        h, w = s.mask.shape
        allbg.update(np.zeros_like(s.mask), s.mask)
        yy, xx = np.mgrid[0:h, 0:w]
        g = np.exp(-(((yy - h / 2) / (0.25 * h)) ** 2 + ((xx - w / 2) / (0.25 * w)) ** 2) / 2)
        pred = np.zeros_like(s.mask)
        if s.labels:
            pred[g > 0.5] = s.labels[0] + 1
        centre.update(pred, s.mask)
    return {"all background": allbg, "centre prior (true tags)": centre}
