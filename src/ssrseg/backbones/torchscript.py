"""Read the tensors of a TorchScript archive (OpenAI's ``ViT-B-16.pt``) without running it.

A TorchScript archive is a zip: ``<name>/data.pkl`` pickles the module tree (objects of classes
named ``__torch__.<...>`` whose state dicts hold sub-modules, parameters, buffers and plain
attributes), tensors point to raw storages ``<name>/data/<key>``, and ``<name>/code/`` holds the
TorchScript source. ``torch.jit.load`` compiles and can run that code; this reader instead
unpickles ``data.pkl`` with an unpickler that allows only tensor rebuilding, storage types and
placeholder objects, then walks the tree to a flat ``{dotted.name: tensor}`` dict. Names match
``module.state_dict()`` of the original model, plus non-weight tensor attributes (e.g. OpenAI's
``attn_mask``), which the layout converter ignores by name.

Precision: OpenAI's loader (``clip.load``, which CLIP-ES uses) rebuilds the model, rounds the
weights of its Conv / Linear / multi-head-attention layers and the two projections to fp16
(``convert_weights``) and, on CPU, computes in float32 with those rounded values; embeddings,
LayerNorms and the logit scale keep the file's precision. :func:`read_torchscript` applies the
same rounding (:func:`round_like_openai_loader`), so an archive gives the numbers CLIP-ES computes
with whatever precision it stores (OpenAI's ``ViT-B-16.pt`` stores these weights in fp16 already:
a no-op there). The model loader then casts everything to float32.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssrseg.backbones.native import WeightsError
from ssrseg.pickles import found_phrase

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Stand-in for a TorchScript class instance: keeps its pickled state, runs nothing."""

    def __init__(self, *args: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(
    storage: Tensor,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_ignored: Any,
) -> Tensor:
    return torch.as_strided(storage, size, stride, offset)


def _identity(value: Any) -> Any:
    return value


def _first(value: Any, *_ignored: Any) -> Any:
    return value


class _TensorOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, path: Path) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.root = root
        self.path = path
        self.storages: dict[str, Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return _identity  # typed list wrappers of older archives: the list itself
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return _first
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not a tensor)")

    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {stype!r}")
        if key not in self.storages:
            name = f"{self.root}data/{key}"
            try:
                raw = bytearray(self.archive.read(name))
            except (KeyError, zipfile.BadZipFile, EOFError) as err:
                raise WeightsError(f"{self.path}: storage {name} unreadable ({err})") from err
            width = torch.empty(0, dtype=stype.dtype).element_size()
            if len(raw) < numel * width:
                raise WeightsError(f"{self.path}: storage {name} is truncated")
            flat = torch.frombuffer(raw, dtype=stype.dtype, count=numel) if numel else None
            self.storages[key] = flat if flat is not None else torch.empty(0, dtype=stype.dtype)
        return self.storages[key]


def _walk(obj: Any, prefix: str, out: dict[str, Tensor]) -> None:
    state = getattr(obj, "state", None) if isinstance(obj, _ScriptObject) else obj
    if not isinstance(state, dict):
        return
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, Tensor):
            out[name] = value.clone()  # own memory, independent of the archive buffer
        elif isinstance(value, _ScriptObject | dict):
            _walk(value, name + ".", out)


# Parameters of OpenAI CLIP's Conv / Linear / MultiheadAttention modules and its projections.
_FP16_NAMES = ("visual.conv1.weight", "visual.proj", "text_projection")
_FP16_SUFFIXES = (
    ".attn.in_proj_weight",
    ".attn.in_proj_bias",
    ".attn.out_proj.weight",
    ".attn.out_proj.bias",
    ".mlp.c_fc.weight",
    ".mlp.c_fc.bias",
    ".mlp.c_proj.weight",
    ".mlp.c_proj.bias",
)


def rounded_by_openai_loader(name: str) -> bool:
    """Whether OpenAI's ``convert_weights`` stores the OpenAI-named tensor ``name`` in fp16."""
    return name in _FP16_NAMES or name.endswith(_FP16_SUFFIXES)


def round_like_openai_loader(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Floating tensors that OpenAI's loader keeps in fp16 become fp16; the rest is unchanged."""
    return {
        k: v.half() if v.is_floating_point() and rounded_by_openai_loader(k) else v
        for k, v in tensors.items()
    }


def read_torchscript(path: Path, trust: bool = False) -> dict[str, Tensor]:
    """Tensors of a TorchScript archive, ``{dotted.name: tensor}``, with OpenAI CLIP's fp16
    weights rounded as OpenAI's loader rounds them (see the module docstring).

    Falls back to ``torch.jit.load`` (which executes the archive's code) only when ``trust`` is
    True and the tensor-only reader cannot handle the file.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            pkl = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise WeightsError(f"{path}: not a TorchScript archive (no single */data.pkl)")
            root = pkl[0][: -len("data.pkl")]
            unpickler = _TensorOnlyUnpickler(archive.read(pkl[0]), archive, root, path)
            tree = unpickler.load()
    except (pickle.UnpicklingError, TypeError, ValueError, AttributeError) as err:
        if not trust:
            raise WeightsError(
                f"{path}: refused to load: the TorchScript archive holds {found_phrase(err)}, "
                "which the tensor-only reader does not accept, and torch.jit.load would run "
                "code from the file. If you trust the file, convert it once: `ssrseg weights "
                f"convert {path} OUT.safetensors --trust-torchscript` (in Python: "
                "trust_torchscript=True), then use OUT.safetensors everywhere."
            ) from None
        module = torch.jit.load(str(path), map_location="cpu")
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        return round_like_openai_loader(state)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise WeightsError(f"{path}: broken or truncated zip archive ({err})") from err
    out: dict[str, Tensor] = {}
    _walk(tree, "", out)
    if not out:
        raise WeightsError(f"{path}: the TorchScript archive holds no tensors")
    return round_like_openai_loader(out)
