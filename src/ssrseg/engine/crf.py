"""Dense CRF post-processing (SSR_SPEC section 10), via the optional extra ``pydensecrf2``.

Fully connected CRF with a Gaussian (smoothness) and a bilateral (appearance) kernel, Potts
compatibility, mean-field inference; unary = -log(probability clipped to ``1e-5``). Parameters
are ``cfg.crf`` (WeCLIP's: 10 iterations, Gaussian sxy 3 / compat 3, bilateral sxy 64 /
srgb 5 / compat 4).
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch

from ssrseg.config import CRFConfig

CRF_MISSING = (
    "dense CRF needs pydensecrf2: pip install 'ssrseg[crf]' (compiles from source, ~1 minute)"
)
_CLIP = 1e-5  # smallest probability before the log: log(0) would give an infinite unary

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


def _import_densecrf() -> Any:
    try:
        import pydensecrf.densecrf as dcrf  # the pydensecrf2 distribution installs this module
    except ImportError as exc:
        raise RuntimeError(CRF_MISSING) from exc
    return dcrf


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
    k, h, w = probs.shape
    p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
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
    if isinstance(probs, torch.Tensor):
        return torch.from_numpy(q).to(device=probs.device, dtype=probs.dtype)
    return q.astype(p.dtype, copy=False)
