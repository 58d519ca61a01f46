"""Inference: multi-scale + flip logits, optional dense CRF, and the :class:`Segmenter` API.

SSR_SPEC section 10 [WeCLIP]: the image's long side is resized to ``infer.long_side`` (512), the
model runs at each scale of ``infer.scales`` (1.0, 0.75) on the image and its horizontal mirror,
and the logits are averaged at the original image size. Optionally a dense CRF refines the
softmax probabilities before the argmax.

The maths lives in pure functions (:func:`scaled_size`, :func:`pad_to_multiple`,
:func:`multiscale_logits`) that take a *logits function* ``B x 3 x H x W -> B x K x h x w``, so
they work with :class:`ssrseg.model.ssr.SSRModel` as with any other segmentation network.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssrseg.backbones.vit import VisionTransformer
from ssrseg.config import CRFConfig, InferConfig, SSRConfig
from ssrseg.data.base import SkipLog, iter_valid, read_image
from ssrseg.engine.checkpoint import load_model
from ssrseg.engine.crf import dense_crf
from ssrseg.engine.crf_pool import OrderedPool, crf_mask
from ssrseg.metrics import ConfusionMatrix
from ssrseg.viz import palette, save_label_png

LogitsFn = Callable[[Tensor], Tensor]
PAD_MODES = ("replicate", "zeros")


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def scaled_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """Size of an ``height x width`` image resized by ``factor`` (rounded, at least 1 px)."""
    return max(1, round(height * factor)), max(1, round(width * factor))


def base_factor(height: int, width: int, long_side: int | None) -> float:
    """Factor that brings the long side to ``long_side``; 1.0 when ``long_side`` is 0/None."""
    if not long_side or long_side <= 0:
        return 1.0
    return long_side / max(height, width)


def pad_to_multiple(images: Tensor, multiple: int, mode: str = "replicate") -> Tensor:
    """Pad ``B x C x H x W`` on the bottom and right so H and W become multiples of ``multiple``.

    Padding (not resizing) keeps the aspect ratio; the padded part is cropped off the logits.
    ``mode`` is ``replicate`` (edge pixels) or ``zeros``.
    """
    h, w = images.shape[-2:]
    ph = -h % multiple
    pw = -w % multiple
    if ph == 0 and pw == 0:
        return images
    if mode == "replicate":
        return F.pad(images, (0, pw, 0, ph), mode="replicate")
    if mode == "zeros":
        return F.pad(images, (0, pw, 0, ph), mode="constant", value=0.0)
    raise ValueError(f"unknown pad mode {mode!r} (use 'replicate' or 'zeros')")


def multiscale_logits(
    logits_fn: LogitsFn,
    images01: Tensor,
    scales: Sequence[float] = (1.0, 0.75),
    flip: bool = True,
    long_side: int | None = 512,
    patch_size: int = 16,
    pad_mode: str = "replicate",
) -> Tensor:
    """Average logits over scales and horizontal flips at the input's own size.

    images01: ``B x 3 x H x W`` in [0, 1] (any H, W). For each scale ``s`` the batch is resized
    (bilinear) to ``long_side / max(H, W) * s`` of its size, mirrored copies are appended when
    ``flip`` (one forward for both), padded bottom/right to a multiple of ``patch_size`` and
    passed to ``logits_fn`` (``B' x 3 x H' x W' -> B' x K x h x w``, any ``h x w`` covering the
    padded input). The logits are upsampled to the padded size, cropped to the unpadded part,
    mirrored back, resized to ``H x W`` and averaged: ``B x K x H x W`` float32.

    Averaging logits (not softmax probabilities) follows SSR_SPEC section 10 [WeCLIP].
    """
    if images01.ndim != 4 or images01.shape[1] != 3:
        raise ValueError(f"images01 must be B x 3 x H x W, got {tuple(images01.shape)}")
    if not scales:
        raise ValueError("at least one inference scale is needed")
    if patch_size < 1:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    b, _, height, width = images01.shape
    base = base_factor(height, width, long_side)
    total: Tensor | None = None
    passes = 0
    for scale in scales:
        if scale <= 0:
            raise ValueError(f"inference scales must be positive, got {scale}")
        h, w = scaled_size(height, width, base * scale)
        x = images01
        if (h, w) != (height, width):
            x = F.interpolate(images01, size=(h, w), mode="bilinear", align_corners=False)
        if flip:
            # Mirror before padding so both copies are padded on the right and crop alike.
            x = torch.cat([x, x.flip(-1)], dim=0)
        padded = pad_to_multiple(x, patch_size, pad_mode)
        logits = logits_fn(padded)
        if logits.ndim != 4 or logits.shape[0] != x.shape[0]:
            raise ValueError(
                f"logits function returned shape {tuple(logits.shape)} for input "
                f"{tuple(padded.shape)}; expected {x.shape[0]} x K x h x w"
            )
        logits = F.interpolate(
            logits.float(), size=padded.shape[-2:], mode="bilinear", align_corners=False
        )[..., :h, :w]
        if (h, w) != (height, width):
            logits = F.interpolate(
                logits, size=(height, width), mode="bilinear", align_corners=False
            )
        if flip:
            logits = logits[:b] + logits[b:].flip(-1)
            passes += 2
        else:
            passes += 1
        total = logits if total is None else total + logits
    assert total is not None
    return total / passes


def probs_to_mask(probs: Tensor) -> Tensor:
    """``... x K x H x W`` scores -> ``... x H x W`` uint8 labels (0 background, c + 1)."""
    if probs.shape[-3] > 256:
        raise ValueError(f"{probs.shape[-3]} classes do not fit a uint8 mask")
    # max(...).indices == argmax (first maximum on ties) and is several times faster on CPU
    return probs.max(dim=-3).indices.to(torch.uint8)


# --------------------------------------------------------------------------------------------
# Images at the edge
# --------------------------------------------------------------------------------------------


def as_uint8_image(image: Any) -> np.ndarray:
    """Any accepted image (``H x W x 3`` uint8 array, ``H x W`` grayscale, PIL image, or a path)
    -> ``H x W x 3`` uint8 RGB array. Raises ``ValueError`` naming the problem."""
    if isinstance(image, str | os.PathLike):
        return read_image(str(image))
    if not isinstance(image, np.ndarray):
        from PIL import Image

        if isinstance(image, Image.Image):
            return np.asarray(image.convert("RGB"))
        raise ValueError(f"unsupported image type {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 H x W x 3, got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image arrays must be H x W x 3 (RGB), got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image has an empty side: shape {image.shape}")
    return np.ascontiguousarray(image[:, :, :3])


def to_tensor01(images: Sequence[np.ndarray], device: torch.device | str) -> Tensor:
    """Same-size ``H x W x 3`` uint8 arrays -> ``B x 3 x H x W`` float in [0, 1] on ``device``."""
    batch = torch.from_numpy(np.stack(images)).to(device)
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


# --------------------------------------------------------------------------------------------
# Released checkpoints
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """A released SSR checkpoint folder that :meth:`Segmenter.from_pretrained` can fetch."""

    repo_id: str  # Hugging Face hub repository holding the checkpoint folder
    subfolder: str  # folder inside the repository with model.safetensors and state.json
    description: str


# No trained SSR weights have been released yet; names are added here when they are.
RELEASES: dict[str, Release] = {}


def resolve_release(name: str) -> str:
    """Local folder of released checkpoint ``name`` (downloaded on first use)."""
    if name not in RELEASES:
        available = ", ".join(sorted(RELEASES)) or "none yet"
        raise KeyError(
            f"unknown SSR release {name!r} (available: {available}); "
            "pass a checkpoint folder to Segmenter.from_checkpoint instead"
        )
    release = RELEASES[name]
    from huggingface_hub import snapshot_download

    root = snapshot_download(release.repo_id, allow_patterns=[f"{release.subfolder}/*"])
    return str(Path(root) / release.subfolder)


# --------------------------------------------------------------------------------------------
# Segmenter
# --------------------------------------------------------------------------------------------


def _patch_size_of(model: nn.Module) -> int:
    """Patch size the model's inputs must be multiples of.

    ``model.patch_size`` when the model states it; otherwise the least common multiple of the
    patch sizes of the ViTs it holds (CLIP and DINO may differ; both must tile the input).
    """
    stated = getattr(model, "patch_size", None)
    if isinstance(stated, int) and stated > 0:
        return stated

    sizes = {m.cfg.patch_size for m in model.modules() if isinstance(m, VisionTransformer)}
    if not sizes:
        raise ValueError("cannot tell the model's patch size: it holds no VisionTransformer")
    return math.lcm(*sizes)


class Segmenter:
    """Segment images with a trained model: multi-scale + flip logits, optional dense CRF.

    ``logits_fn`` maps ``B x 3 x H x W`` images in [0, 1] (H, W multiples of ``patch_size``)
    to ``B x K x h x w`` logits, e.g. ``SSRModel.segment``. Use :meth:`from_checkpoint` to
    build one from a training checkpoint.
    """

    def __init__(
        self,
        logits_fn: LogitsFn,
        num_classes: int,
        patch_size: int,
        infer: InferConfig | None = None,
        palette: np.ndarray | None = None,
        class_names: Sequence[str] | None = None,
        *,
        crf: CRFConfig | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_classes < 2 or num_classes > 256:
            raise ValueError(f"num_classes must be in [2, 256], got {num_classes}")
        if class_names is not None and len(class_names) != num_classes - 1:
            raise ValueError(
                f"{len(class_names)} class names for {num_classes} classes "
                "(expected one name per foreground class)"
            )
        self.logits_fn = logits_fn
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.infer = infer if infer is not None else InferConfig()
        if self.infer.pad_mode not in PAD_MODES:
            raise ValueError(
                f"infer.pad_mode must be one of {PAD_MODES}, got {self.infer.pad_mode!r}"
            )
        self._palette = palette
        self.class_names = tuple(class_names) if class_names is not None else None
        self.crf_cfg = crf if crf is not None else CRFConfig()
        self.device = torch.device(device)
        # The checkpoint's whole configuration when built by from_checkpoint (saved beside
        # outputs); None for a bare logits function.
        self.config: SSRConfig | None = None
        self.model: nn.Module | None = None  # the checkpoint's model, kept for inspection

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        device: torch.device | str = "cpu",
        infer: InferConfig | None = None,
        crf: CRFConfig | None = None,
    ) -> Segmenter:
        """Load a training checkpoint folder (see :mod:`ssrseg.engine.checkpoint`).

        ``infer`` / ``crf`` override the checkpoint's own inference and CRF settings.
        """
        model, cfg = load_model(str(path), device=device)
        model.eval()
        patch = _patch_size_of(model)
        num_classes = getattr(model, "num_classes", None)
        if not isinstance(num_classes, int):
            # One tiny forward tells the number of output channels.
            with torch.no_grad():
                probe = torch.zeros(1, 3, patch, patch, device=torch.device(device))
                num_classes = int(model.segment(probe).shape[1])
        class_names = getattr(model, "class_names", None)
        if class_names is not None and len(class_names) != num_classes - 1:
            class_names = None
        seg = cls(
            model.segment,
            num_classes,
            patch,
            infer if infer is not None else cfg.infer,
            None,
            class_names,
            crf=crf if crf is not None else cfg.crf,
            device=device,
        )
        seg.config = cfg
        seg.model = model
        return seg

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        device: torch.device | str = "cpu",
        infer: InferConfig | None = None,
        crf: CRFConfig | None = None,
    ) -> Segmenter:
        """Load a released checkpoint by name (see :data:`RELEASES`)."""
        return cls.from_checkpoint(resolve_release(name), device=device, infer=infer, crf=crf)

    # ---------------------------------------------------------------- properties
    @property
    def palette(self) -> np.ndarray:
        """``256 x 3`` uint8 colours of the label indices (the VOC palette by default)."""
        if self._palette is None:
            self._palette = np.asarray(palette("voc"), dtype=np.uint8).reshape(-1, 3)
        return self._palette

    # ---------------------------------------------------------------- tensors
    def logits(self, images01: Tensor) -> Tensor:
        """``B x 3 x H x W`` in [0, 1] -> multi-scale/flip averaged ``B x K x H x W`` logits."""
        with torch.no_grad():
            out = multiscale_logits(
                self.logits_fn,
                images01.to(self.device),
                scales=self.infer.scales,
                flip=self.infer.flip,
                long_side=self.infer.long_side,
                patch_size=self.patch_size,
                pad_mode=self.infer.pad_mode,
            )
        if out.shape[1] != self.num_classes:
            raise ValueError(f"model gave {out.shape[1]} classes, expected {self.num_classes}")
        return out

    # ---------------------------------------------------------------- numpy / PIL images
    @overload
    def predict(
        self, image: Any, return_probs: Literal[False] = ..., crf: bool | None = ...
    ) -> np.ndarray: ...

    @overload
    def predict(
        self, image: Any, return_probs: Literal[True], crf: bool | None = ...
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def predict(
        self, image: Any, return_probs: bool = False, crf: bool | None = None
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Segment one image (``H x W x 3`` uint8 array, PIL image or path).

        Returns the ``H x W`` uint8 mask (0 background, c + 1 for class c) and, with
        ``return_probs``, also the ``K x H x W`` float32 class probabilities (after the CRF when
        it runs). ``crf`` overrides ``infer.crf``.
        """
        result: np.ndarray | tuple[np.ndarray, np.ndarray] = self._predict_many(
            [image], return_probs, crf, None
        )[0]
        return result

    @overload
    def predict_batch(
        self,
        images: Sequence[Any],
        return_probs: Literal[False] = ...,
        crf: bool | None = ...,
        batch_size: int | None = ...,
    ) -> list[np.ndarray]: ...

    @overload
    def predict_batch(
        self,
        images: Sequence[Any],
        return_probs: Literal[True],
        crf: bool | None = ...,
        batch_size: int | None = ...,
    ) -> list[tuple[np.ndarray, np.ndarray]]: ...

    def predict_batch(
        self,
        images: Sequence[Any],
        return_probs: bool = False,
        crf: bool | None = None,
        batch_size: int | None = None,
    ) -> list[np.ndarray] | list[tuple[np.ndarray, np.ndarray]]:
        """Segment several images, in input order; images of the same size share a forward.

        ``batch_size`` (default ``infer.batch_size``) bounds how many go through at once.
        """
        return self._predict_many(images, return_probs, crf, batch_size)

    def _predict_many(
        self,
        images: Sequence[Any],
        return_probs: bool,
        crf: bool | None,
        batch_size: int | None,
    ) -> list[Any]:
        use_crf = self.infer.crf if crf is None else crf
        size = max(1, batch_size if batch_size is not None else self.infer.batch_size)
        arrays = [as_uint8_image(im) for im in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, arr in enumerate(arrays):
            groups.setdefault(arr.shape[:2], []).append(i)
        results: list[Any] = [None] * len(arrays)
        for indices in groups.values():
            for start in range(0, len(indices), size):
                chunk = indices[start : start + size]
                logits = self.logits(to_tensor01([arrays[i] for i in chunk], self.device))
                probs = logits.softmax(dim=1).cpu()
                for j, i in enumerate(chunk):
                    results[i] = self._finish(arrays[i], probs[j], use_crf, return_probs)
        return results

    def _finish(
        self, image: np.ndarray, probs: Tensor, use_crf: bool, return_probs: bool
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """``K x H x W`` probabilities of one image -> mask (and probabilities)."""
        probs_np = probs.numpy().astype(np.float32, copy=False)
        if use_crf:
            probs_np = run_crf(image, probs_np, self.crf_cfg)
        mask = probs_np.argmax(axis=0).astype(np.uint8)
        return (mask, probs_np) if return_probs else mask


def run_crf(image: np.ndarray, probs: np.ndarray, cfg: CRFConfig) -> np.ndarray:
    """Dense CRF on one image: ``H x W x 3`` uint8 and ``K x H x W`` probabilities ->
    refined ``K x H x W`` float32 probabilities (see :func:`ssrseg.engine.crf.dense_crf`)."""
    refined = dense_crf(image, probs, cfg)
    if isinstance(refined, Tensor):
        refined = refined.detach().cpu().numpy()
    return np.asarray(refined, dtype=np.float32)


def check_crf(cfg: CRFConfig | None = None) -> None:
    """Raise the CRF module's error (with its install command) now if the CRF cannot run,
    rather than after a long inference loop has started."""
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    probs = np.full((2, 2, 2), 0.5, dtype=np.float32)
    run_crf(image, probs, cfg if cfg is not None else CRFConfig())


# --------------------------------------------------------------------------------------------
# Scoring a dataset
# --------------------------------------------------------------------------------------------


def evaluate_dataset(
    segmenter: Segmenter,
    dataset: Any,
    crf_modes: Sequence[bool] = (False,),
    *,
    skip_log: Any = None,
    indices: Sequence[int] | None = None,
    progress: bool = True,
    pred_dir: str | os.PathLike[str] | None = None,
    crf_workers: int = 0,
    guard: Callable[[str], Any] | None = None,
) -> dict[bool, Any]:
    """Predict every image of a split with masks and score it, once per CRF mode.

    dataset: a :class:`ssrseg.data.base.SegDataset` whose samples carry masks.
    crf_modes: e.g. ``(False, True)`` scores without and with the CRF from one multi-scale
        forward per image (the CRF only refines the same probabilities).
    skip_log: a :class:`ssrseg.data.base.SkipLog` collecting unreadable items (a new one when
        None). indices: the dataset positions to score, in order (default all; a data-parallel
        rank passes its share). pred_dir: if given, also writes ``<id>.png`` palette masks (and
        ``crf/<id>.png`` for the CRF mode when both are scored).
    crf_workers: processes running the CRF (:class:`ssrseg.engine.crf_pool.OrderedPool`)
        while the next image's forward runs; 0 runs it here. Same results either way.
    guard: ``guard(image_id)`` a context manager around each image's work (e.g.
        :func:`ssrseg.engine.distributed.guard_image` to name the rank and image of a failure).
    Returns ``{crf_mode: ConfusionMatrix}`` accumulated over the images scored.
    """
    if not crf_modes:
        raise ValueError("at least one CRF mode (False and/or True) is needed")
    if True in crf_modes:
        check_crf(segmenter.crf_cfg)
    log = skip_log if skip_log is not None else SkipLog()
    matrices = {mode: ConfusionMatrix(segmenter.num_classes) for mode in crf_modes}
    desc = f"evaluate {getattr(dataset, 'name', '')} {getattr(dataset, 'split', '')}".strip()

    def within(image_id: str) -> Any:
        return guard(image_id) if guard is not None else contextlib.nullcontext()

    def score(mode: bool, image_id: str, mask: np.ndarray, gt: np.ndarray) -> None:
        matrices[mode].update(mask, gt)
        if pred_dir is not None:
            sub = "crf" if mode and len(crf_modes) > 1 else ""
            save_label_png(Path(pred_dir) / sub / f"{image_id}.png", mask, segmenter.palette)

    def collect(results: Any) -> None:
        for (image_id, gt), mask in results:
            with within(image_id):
                score(True, image_id, mask, gt)

    with OrderedPool[tuple[str, np.ndarray]](crf_workers) as pool:
        for sample in iter_valid(dataset, log, indices, progress=progress, desc=desc):
            with within(sample.image_id):
                if sample.mask is None:
                    raise ValueError(
                        f"{sample.path}: this split has no ground-truth masks to score"
                    )
                _, probs = segmenter.predict(sample.image, return_probs=True, crf=False)
                if False in crf_modes:
                    score(
                        False, sample.image_id, probs.argmax(axis=0).astype(np.uint8), sample.mask
                    )
            if True in crf_modes:
                key = (sample.image_id, sample.mask)
                collect(pool.submit(key, crf_mask, sample.image, probs, segmenter.crf_cfg))
        collect(pool.drain())
    return matrices
