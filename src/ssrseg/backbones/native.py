"""This project's own weight format: one safetensors file with the config in its metadata.

A native file holds the module's ``state_dict()`` under our parameter names, and three JSON
strings in the safetensors header metadata: ``config`` (the :class:`CLIPConfig` or
:class:`ViTConfig` as a dict), ``tokenizer`` (``to_dict()`` of the tokenizer, CLIP only) and
``extra`` (free-form provenance: training steps, source file...). Loading needs nothing else, so
a checkpoint carries its own shape (nanoGPT's lesson) and no code is executed to read it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ssrseg.atomic import atomic_path
from ssrseg.backbones.clip import CLIPConfig, TextConfig
from ssrseg.backbones.vit import ViTConfig

FORMAT_NAME = "ssrseg-native"
# Version history: "1" stored CLIP BPE vocabularies with the 256 byte symbols numbered in byte
# order instead of OpenAI's, so every single-character token had a wrong id. "2" stores them in
# OpenAI's order. Version 1 files with a BPE tokenizer are refused (re-convert); those without
# one (DINO, toy word tokenizer) are read unchanged.
FORMAT_VERSION = "2"
READABLE_VERSIONS = ("1", "2")
KINDS = ("clip", "dino")


class WeightsError(RuntimeError):
    """A weights file is missing, unreadable, of an unknown layout or does not fit the model."""


def config_to_dict(config: CLIPConfig | ViTConfig) -> dict[str, Any]:
    """Frozen dataclass config -> JSON-ready dict (tuples become lists)."""
    return dataclasses.asdict(config)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Instantiate a config dataclass from a dict, refusing unknown fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise WeightsError(f"{where}: unknown {cls.__name__} fields {unknown}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**fixed)


def vit_config_from_dict(data: dict[str, Any], where: str = "config") -> ViTConfig:
    cfg: ViTConfig = _build(ViTConfig, data, where)
    return cfg


def clip_config_from_dict(data: dict[str, Any], where: str = "config") -> CLIPConfig:
    data = dict(data)
    vision = vit_config_from_dict(data.pop("vision", {}), where)
    text: TextConfig = _build(TextConfig, data.pop("text", {}), where)
    cfg: CLIPConfig = _build(CLIPConfig, {**data, "vision": vision, "text": text}, where)
    return cfg


def save_native(
    path: str | os.PathLike[str],
    module: nn.Module,
    kind: str,
    config: CLIPConfig | ViTConfig,
    tokenizer: Any | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``module``'s weights and description to a native safetensors file (atomically).

    kind: ``"clip"`` (module is a :class:`~ssrseg.backbones.clip.CLIP`, config a CLIPConfig) or
    ``"dino"`` (a :class:`~ssrseg.backbones.vit.VisionTransformer`, config a ViTConfig).
    tokenizer: anything with ``to_dict()`` (CLIP only). Tensors are stored as they are (dtype
    kept); JSON in the header keeps the file self-describing.
    """
    from safetensors.torch import save_file

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    expected = CLIPConfig if kind == "clip" else ViTConfig
    if not isinstance(config, expected):
        raise TypeError(f"kind {kind!r} needs a {expected.__name__}, got {type(config).__name__}")
    if kind == "dino" and tokenizer is not None:
        raise ValueError("a DINO backbone has no tokenizer")
    # safetensors refuses shared or strided storage: store independent contiguous copies.
    tensors: dict[str, Tensor] = {
        k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()
    }
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": json.dumps(config_to_dict(config)),
        "tokenizer": json.dumps(tokenizer.to_dict() if tokenizer is not None else None),
        "extra": json.dumps(extra or {}),
    }

    path = Path(path)
    with atomic_path(path, suffix=".tmp") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def is_native(metadata: dict[str, str] | None) -> bool:
    return bool(metadata) and (metadata or {}).get("format") == FORMAT_NAME


def native_info(path: Path, metadata: dict[str, str]) -> tuple[str, dict[str, Any], Any, Any]:
    """Parse a native header: (kind, config dict, tokenizer dict or None, extra dict).

    Refuses versions this code does not read, and version 1 files holding a BPE tokenizer
    (wrong byte-token ids), naming the file and the command that rewrites it.
    """
    version = metadata.get("format_version")
    try:
        kind = metadata["kind"]
        config = json.loads(metadata["config"])
        tokenizer = json.loads(metadata.get("tokenizer", "null"))
        extra = json.loads(metadata.get("extra", "{}"))
    except (KeyError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: broken ssrseg metadata ({err})") from err
    source = extra.get("converted_from") if isinstance(extra, dict) else None
    redo = f"ssrseg weights convert {source or 'ORIGINAL_WEIGHTS'} {path}"
    if version not in READABLE_VERSIONS:
        raise WeightsError(
            f"{path}: native format version {version!r} is not supported (this ssrseg reads "
            f"versions {', '.join(READABLE_VERSIONS)}); re-convert the original weights:\n"
            f"    {redo}"
        )
    if version == "1" and isinstance(tokenizer, dict) and tokenizer.get("kind") == "bpe":
        raise WeightsError(
            f"{path}: written by an older ssrseg (native format 1) whose CLIP BPE vocabulary "
            "numbers the single-byte tokens in byte order instead of OpenAI's, so its token ids "
            "and text embeddings are wrong. Re-convert the original weights (e.g. "
            f"clip_vit_b16.openai) to rewrite it:\n    {redo}"
        )
    if kind not in KINDS:
        raise WeightsError(f"{path}: unknown kind {kind!r} in the metadata")
    return kind, config, tokenizer, extra


def load_state_strict(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a message naming each bad key and both shapes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: file has {tuple(state[k].shape)}, model expects {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong[:8]))
    if problems:
        raise WeightsError(f"{source}: weights do not fit the model: " + " | ".join(problems))
    with torch.no_grad():
        module.load_state_dict(
            {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()},
            strict=True,
        )
