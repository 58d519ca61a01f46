"""Numeric precision of the frozen backbones, and the float32 islands of the label maths.

``backbone.precision`` picks how CLIP and DINO compute (``docs/performance.md``, "Precision"):

- ``fp32``: float32 weights and activations (CLIP-ES and WeCLIP on a CPU);
- ``fp16``: float16 weights and activations with every LayerNorm computed in float32 and cast
  back (OpenAI CLIP on a GPU, as CLIP-ES and WeCLIP load it; ``ssrseg.backbones.vit.half_weights``);
- ``bf16``: float32 weights under bfloat16 autocast (the trainer casts the weights to bf16).

``auto`` keeps the older switch: ``backbone.half_precision`` true -> :data:`DEFAULT_HALF`, false
-> fp32. The precision acts on CUDA only, unless ``backbone.precision_cpu`` asks for it on the
CPU (tests and benchmarks measure the GPU numerics there).

Whatever the backbones run in, the label maths after them (Grad-CAM's scores and channel
weights, min-max, the attention head mean, the transition matrix and its powers, the
refinement, PAR, SGC, background and argmax) runs in float32: :func:`fp32_island` switches an
enclosing autocast off for its block, so the labeller is robust to the precision it is called
under (measured section by section: ``benchmarks/bench_precision.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ssrseg.config import BackboneConfig

PRECISIONS = ("fp32", "fp16", "bf16")
# [decision] what backbone.half_precision=true means under precision=auto: fp16 (the references'
# GPU numerics; bf16 kept 7 mantissa bits where fp16 keeps 10, see docs/performance.md)
DEFAULT_HALF = "fp16"
HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def configured_precision(cfg: BackboneConfig) -> str:
    """``backbone.precision`` with ``auto`` resolved through ``backbone.half_precision``."""
    if cfg.precision == "auto":
        return DEFAULT_HALF if cfg.half_precision else "fp32"
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"backbone.precision must be auto | {' | '.join(PRECISIONS)}")
    return cfg.precision


def resolve_precision(cfg: BackboneConfig, device: torch.device | str) -> str:
    """The precision the backbones use on ``device``: the configured one on CUDA (or anywhere
    with ``backbone.precision_cpu``), float32 elsewhere."""
    dev = torch.device(device)
    if dev.type != "cuda" and not cfg.precision_cpu:
        return "fp32"
    return configured_precision(cfg)


@contextlib.contextmanager
def fp32_island(device: torch.device | str) -> Iterator[None]:
    """Switch autocast off on ``device``'s type inside the block (callers pass float32 tensors
    in with ``.float()``): the sections whose error half precision would multiply."""
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        yield
