"""Dense CRF post-processing (SSR_SPEC section 10), via the optional extra ``pydensecrf2``.

Fully connected CRF with a Gaussian (smoothness) and a bilateral (appearance) kernel, Potts
compatibility, mean-field inference; unary = -log(probability clipped to ``1e-5``). Parameters
are ``cfg.crf`` (WeCLIP's: 10 iterations, Gaussian sxy 3 / compat 3, bilateral sxy 64 /
srgb 5 / compat 4).

``cfg.labels``: ``all`` (WeCLIP) runs the CRF over every class; ``present`` only over
background and the classes the image's own argmax uses (:func:`crf_labels`). Mean-field cost
grows linearly with the number of labels, so for COCO (81 labels, a handful per image) this is
several times faster; the other classes get probability 0 and can no longer win a pixel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ssrseg.config import CRFConfig

if TYPE_CHECKING:
    import torch

CRF_MISSING = (
    "dense CRF needs pydensecrf2: pip install 'ssrseg[crf]' (compiles from source, ~1 minute)"
)
_CLIP = 1e-5  # smallest probability before the log: log(0) would give an infinite unary

ArrayT = TypeVar("ArrayT", "torch.Tensor", np.ndarray)


def _is_tensor(value: Any) -> bool:
    """A torch tensor, told without importing torch: this module is all a CRF pool worker
    imports (ssrseg.engine.crf_pool), so its processes start without loading torch."""
    return type(value).__module__.split(".")[0] == "torch"


def _import_densecrf() -> Any:
    try:
        import pydensecrf.densecrf as dcrf  # the pydensecrf2 distribution installs this module
    except ImportError as exc:
        raise RuntimeError(CRF_MISSING) from exc
    return dcrf


def crf_labels(probs: np.ndarray, mode: str) -> np.ndarray:
    """The label indices the CRF runs over: all ``K`` for ``mode == "all"``; for
    ``"present"`` background (0) and every class that wins at least one pixel of
    ``probs`` (``K x H x W``), ascending."""
    k = probs.shape[0]
    if mode == "all":
        return np.arange(k)
    if mode != "present":
        raise ValueError(f"crf.labels must be 'all' or 'present', got {mode!r}")
    winners = np.unique(probs.argmax(axis=0))
    return np.union1d(np.zeros(1, dtype=np.int64), winners.astype(np.int64))


def dense_crf(image: np.ndarray, probs: ArrayT, cfg: CRFConfig) -> ArrayT:
    """Refine per-pixel class probabilities with a dense CRF.

    Args:
        image: H x W x 3 uint8 RGB image.
        probs: K x H x W class probabilities (a torch tensor or a numpy array; each pixel's
            column should sum to 1, e.g. a softmax).
        cfg: ``CRFConfig`` (iterations, gaussian_sxy/compat, bilateral_sxy/srgb/compat).

    Returns:
        K x H x W marginals after ``cfg.iterations`` mean-field steps, of the same kind as
        ``probs`` (a tensor keeps its device and dtype).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"dense_crf expects an H x W x 3 image, got shape {image.shape}")
    if probs.ndim != 3 or tuple(probs.shape[1:]) != image.shape[:2]:
        raise ValueError(
            f"dense_crf: probabilities {tuple(probs.shape)} do not match the image {image.shape}"
        )
    dcrf = _import_densecrf()
    k_all, h, w = probs.shape
    given: Any = probs  # a tensor or an array (told apart without importing torch)
    p_all = given.detach().cpu().numpy() if _is_tensor(given) else np.asarray(given)
    keep = crf_labels(p_all, getattr(cfg, "labels", "all"))
    p = p_all if keep.size == k_all else p_all[keep]
    k = p.shape[0]
    if k == 1:  # one label left: its marginal is 1 everywhere (the CRF has nothing to decide)
        q = np.ones((1, h, w), dtype=np.float32)
        return _restore(q, keep, k_all, probs, p_all.dtype)
    unary = -np.log(np.clip(p.astype(np.float32), _CLIP, 1.0)).reshape(k, -1)
    model = dcrf.DenseCRF2D(w, h, k)
    model.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    model.addPairwiseGaussian(sxy=cfg.gaussian_sxy, compat=cfg.gaussian_compat)
    model.addPairwiseBilateral(
        sxy=cfg.bilateral_sxy,
        srgb=cfg.bilateral_srgb,
        # a copy: pydensecrf's Cython buffers refuse read-only arrays (np.asarray(PIL image))
        rgbim=np.array(image, dtype=np.uint8, order="C", copy=True),
        compat=cfg.bilateral_compat,
    )
    q = np.asarray(model.inference(cfg.iterations), dtype=np.float32).reshape(k, h, w)
    return _restore(q, keep, k_all, probs, p_all.dtype)


def _restore(q: np.ndarray, keep: np.ndarray, k_all: int, probs: Any, dtype: Any) -> Any:
    """``len(keep) x H x W`` marginals back to ``k_all`` channels (0 for the labels left out),
    of the same kind as ``probs``."""
    if keep.size != k_all:
        full = np.zeros((k_all, *q.shape[1:]), dtype=np.float32)
        full[keep] = q
        q = full
    given: Any = probs
    if _is_tensor(given):
        import torch  # loaded already (probs is a tensor); not at the top: see _is_tensor

        return torch.from_numpy(q).to(device=given.device, dtype=given.dtype)
    return q.astype(dtype, copy=False)
