"""Resolve, fetch, read and load backbone weights.

A *spec* is one of:

- a registry name (:data:`REGISTRY`): ``clip_vit_b16.openai``, ``dino_vit_s16``, the DINOv2
  backbones ``dinov2_vits14`` / ``dinov2_vitb14`` / ``dinov2_vitl14`` (``_reg``: with 4
  registers), ``toy_clip``, ``toy_dino``;
- a local file (safetensors, ``.pt``/``.pth``/``.bin`` state dicts, OpenAI's TorchScript archive)
  or a folder holding one (e.g. a transformers model folder with ``config.json``);
- a Hugging Face hub id (``openai/clip-vit-base-patch16``, optionally ``hf-hub:`` prefixed).

Files are cached in :func:`cache_dir` (``$SSRSEG_CACHE``, else ``$XDG_CACHE_HOME/ssrseg``,
else ``~/.cache/ssrseg``); hub files in the Hugging Face cache. Published sha256 sums are
checked. Without network (``HF_HUB_OFFLINE=1``, ``SSRSEG_OFFLINE=1`` or an unreachable host)
a missing file fails at once with a message naming the file, where to get it and where to put
it. Nothing is executed from a file: safetensors, ``torch.load(weights_only=True)`` and, for
TorchScript archives, a reader that rebuilds only tensors (:mod:`ssrseg.backbones.torchscript`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssrseg.backbones.bpe import BPETokenizer
from ssrseg.backbones.clip import CLIP, CLIPConfig
from ssrseg.backbones.convert import convert_clip, convert_vit
from ssrseg.backbones.native import (
    WeightsError,
    clip_config_from_dict,
    is_native,
    load_state_strict,
    native_info,
    save_native,
    vit_config_from_dict,
)
from ssrseg.backbones.tokenizer import Tokenizer, WordTokenizer
from ssrseg.backbones.torchscript import read_torchscript
from ssrseg.backbones.vit import VisionTransformer, ViTConfig
from ssrseg.pickles import refusal_message, refused_global

__all__ = [
    "REGISTRY",
    "Asset",
    "Pretrained",
    "WeightsError",
    "cache_dir",
    "fetch",
    "load_clip",
    "load_dino",
    "read_weights",
    "save_native",
]

DOWNLOAD_TIMEOUT_S = 15.0
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class Asset:
    """One downloadable file: where it comes from and its published sha256 (if any)."""

    filename: str
    url: str
    sha256: str | None = None
    where: str = ""  # human description of the source, for error messages


@dataclass(frozen=True)
class Pretrained:
    """A named backbone: its kind, its weight file (remote asset or package file), and for
    CLIP the tokenizer vocabulary asset."""

    name: str
    kind: str  # "clip" | "dino"
    description: str
    asset: Asset | None = None
    package_file: str | None = None  # relative to ssrseg/assets
    vocab: Asset | None = None
    how_to_make: str = ""  # for package files that a command creates


DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"


def _dinov2_entry(size: str, registers: bool) -> Pretrained:
    """Registry entry of an official DINOv2 backbone checkpoint (Meta publishes no hashes)."""
    base = f"dinov2_vit{size}14"
    file_stem = base + ("_reg4" if registers else "")
    word = {"s": "small", "b": "base", "l": "large"}[size]
    hub = f"facebook/dinov2-{'with-registers-' if registers else ''}{word}"
    return Pretrained(
        name=base + ("_reg" if registers else ""),
        kind="dino",
        description=f"DINOv2 ViT-{size.upper()}/14"
        + (" with 4 registers" if registers else "")
        + " backbone (official checkpoint)",
        asset=Asset(
            filename=f"{file_stem}_pretrain.pth",
            url=f"{DINOV2_URL}/{base}/{file_stem}_pretrain.pth",
            where="Meta (github.com/facebookresearch/dinov2, dinov2/hub/backbones.py); the "
            f"Hugging Face hub id {hub} (transformers layout) loads the same weights",
        ),
    )


OPENAI_BPE = Asset(
    filename="bpe_simple_vocab_16e6.txt.gz",
    url="https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz",
    where="the OpenAI CLIP repository (clip/bpe_simple_vocab_16e6.txt.gz); "
    "Hugging Face's openai/clip-vit-base-patch16 vocab.json + merges.txt also work",
)

REGISTRY: dict[str, Pretrained] = {
    p.name: p
    for p in (
        Pretrained(
            name="clip_vit_b16.openai",
            kind="clip",
            description="OpenAI CLIP ViT-B/16 (official TorchScript archive)",
            asset=Asset(
                filename="ViT-B-16.pt",
                url="https://openaipublic.azureedge.net/clip/models/"
                "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
                # OpenAI publishes the sha256 as the URL's folder name.
                sha256="5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
                where="OpenAI (github.com/openai/CLIP, clip/clip.py lists the URL)",
            ),
            vocab=OPENAI_BPE,
        ),
        Pretrained(
            name="dino_vit_s16",
            kind="dino",
            description="DINO v1 ViT-S/16 backbone (official checkpoint)",
            asset=Asset(
                filename="dino_deitsmall16_pretrain.pth",
                url="https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/"
                "dino_deitsmall16_pretrain.pth",
                where="Meta (github.com/facebookresearch/dino, 'ViT-S/16 backbone only')",
            ),
        ),
        *(_dinov2_entry(size, reg) for size in ("s", "b", "l") for reg in (False, True)),
        Pretrained(
            name="toy_clip",
            kind="clip",
            description="tiny CLIP trained on the toy world (package data)",
            package_file="toy/clip.safetensors",
            how_to_make="ssrseg toy train-clip",
        ),
        Pretrained(
            name="toy_dino",
            kind="dino",
            description="tiny DINO-style ViT trained on the toy world (package data)",
            package_file="toy/dino.safetensors",
            how_to_make="ssrseg toy train-dino",
        ),
    )
}


# ------------------------------------------------------------------------------- locations
def cache_dir() -> Path:
    """Where downloaded weights live: $SSRSEG_CACHE, $XDG_CACHE_HOME/ssrseg or ~/.cache/ssrseg."""
    if os.environ.get("SSRSEG_CACHE"):
        return Path(os.environ["SSRSEG_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "ssrseg"


def offline() -> bool:
    """True when the user asked for no network (HF_HUB_OFFLINE / SSRSEG_OFFLINE)."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "SSRSEG_OFFLINE")
    )


def package_path(entry: Pretrained) -> Path:
    assert entry.package_file is not None
    return ASSETS_DIR / entry.package_file


def local_path(entry: Pretrained) -> Path:
    """Where a registry entry's weight file is expected on this machine."""
    if entry.package_file is not None:
        return package_path(entry)
    assert entry.asset is not None
    return cache_dir() / entry.asset.filename


def missing_message(asset: Asset, dest: Path, reason: str) -> str:
    return (
        f"{asset.filename} is needed but not available ({reason}).\n"
        f"  Get it from {asset.where or 'its publisher'}:\n    {asset.url}\n"
        f"  and put it at:\n    {dest}\n"
        f"  (or set SSRSEG_CACHE to the folder holding it; "
        f"`ssrseg weights fetch` downloads it when online)"
        + (f"\n  sha256 must be {asset.sha256}" if asset.sha256 else "")
    )


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(asset: Asset, dest: Path) -> Path:
    """Download ``asset`` to ``dest`` (atomically, sha256-checked) or raise WeightsError at once
    when offline / unreachable."""
    if offline():
        raise WeightsError(missing_message(asset, dest, "offline mode: HF_HUB_OFFLINE is set"))
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part{os.getpid()}")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(asset.url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with (
                tmp.open("wb") as out,
                tqdm(total=total, unit="B", unit_scale=True, desc=asset.filename) as bar,
            ):
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        tmp.unlink(missing_ok=True)
        raise WeightsError(missing_message(asset, dest, f"download failed: {err}")) from err
    if asset.sha256 and h.hexdigest() != asset.sha256:
        tmp.unlink(missing_ok=True)
        raise WeightsError(
            f"{asset.url}: sha256 {h.hexdigest()} does not match the published {asset.sha256}"
        )
    os.replace(tmp, dest)
    return dest


def ensure_asset(asset: Asset, dest: Path | None = None, verify: bool = True) -> Path:
    """Path of ``asset`` in the cache, downloading it when missing."""
    dest = dest or cache_dir() / asset.filename
    if dest.is_file():
        if verify and asset.sha256 and sha256_of(dest) != asset.sha256:
            raise WeightsError(
                f"{dest}: sha256 does not match the published {asset.sha256}; the file is "
                "corrupt or a different version: delete it and fetch it again"
            )
        return dest
    return download(asset, dest)


def fetch(name: str) -> list[Path]:
    """Make a registry entry's files available locally (downloading when needed)."""
    entry = registry_entry(name)
    if entry.package_file is not None:
        path = package_path(entry)
        if not path.is_file():
            raise WeightsError(
                f"{path} is missing: it is made by `{entry.how_to_make}` (package data of the "
                "toy world, not downloadable)"
            )
        return [path]
    assert entry.asset is not None
    paths = [ensure_asset(entry.asset)]
    if entry.vocab is not None:
        paths.append(ensure_asset(entry.vocab))
    return paths


def registry_entry(name: str) -> Pretrained:
    if name not in REGISTRY:
        raise WeightsError(
            f"unknown weights name {name!r}; known names: {', '.join(sorted(REGISTRY))} "
            "(or give a local file / folder, or a Hugging Face hub id like org/name)"
        )
    return REGISTRY[name]


# -------------------------------------------------------------------------------- hub ids
HUB_WEIGHT_FILES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
)
HUB_SIDE_FILES = ("config.json", "open_clip_config.json", "vocab.json", "merges.txt")


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    errors: list[type[BaseException]] = [
        OSError,
        ValueError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
    ]
    try:
        import httpx

        errors.append(httpx.HTTPError)
    except ImportError:
        pass
    return tuple(errors)


def resolve_hub(repo_id: str) -> Path:
    """Download (or find in the HF cache) a hub repo's weight file and its side files; returns
    the weight file's path (side files lie beside it in the snapshot folder)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    errors = _hub_errors()
    weight: Path | None = None
    for name in HUB_WEIGHT_FILES:
        cached = try_to_load_from_cache(repo_id, name)
        if isinstance(cached, str):
            weight = Path(cached)
            break
    if weight is None and offline():
        raise WeightsError(
            f"hub id {repo_id!r}: no weights in the Hugging Face cache and HF_HUB_OFFLINE is set.\n"
            f"  Download https://huggingface.co/{repo_id} (model.safetensors and config.json) on "
            "a machine with network, then either copy the HF cache folder or put the files in a "
            "folder and pass that folder's path instead of the hub id"
        )
    if weight is None:
        last: BaseException | None = None
        for name in HUB_WEIGHT_FILES:
            try:
                weight = Path(hf_hub_download(repo_id, name, etag_timeout=DOWNLOAD_TIMEOUT_S))
                break
            except errors as err:
                last = err
        if weight is None:
            raise WeightsError(
                f"hub id {repo_id!r}: could not get any of {list(HUB_WEIGHT_FILES)} ({last}).\n"
                f"  Download them from https://huggingface.co/{repo_id} and pass the local folder"
            )
    for name in HUB_SIDE_FILES:
        if not (weight.parent / name).exists() and not offline():
            try:
                hf_hub_download(repo_id, name, etag_timeout=DOWNLOAD_TIMEOUT_S)
            except errors:
                continue  # side files are optional (a DINO repo has no vocabulary)
    return weight


# ----------------------------------------------------------------------------- reading
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def _find_in_folder(folder: Path) -> Path:
    for name in (*HUB_WEIGHT_FILES, "clip.safetensors", "dino.safetensors"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if len(found) == 1:
        return found[0]
    raise WeightsError(
        f"{folder}: expected one weights file ({', '.join(WEIGHT_SUFFIXES)}) in the folder, "
        f"found {[p.name for p in found]}"
    )


def resolve(spec: str) -> tuple[Path, Pretrained | None]:
    """spec -> (local weight file, registry entry or None). Downloads when needed."""
    if spec in REGISTRY:
        entry = REGISTRY[spec]
        if entry.package_file is not None:
            path = package_path(entry)
            if not path.is_file():
                raise WeightsError(
                    f"{spec}: {path} is missing; create it with `{entry.how_to_make}`"
                )
            return path, entry
        assert entry.asset is not None
        return ensure_asset(entry.asset), entry
    path = Path(spec).expanduser()
    if path.is_dir():
        return _find_in_folder(path), None
    if path.is_file():
        return path, None
    repo = spec.removeprefix("hf-hub:")
    if repo.count("/") == 1 and not spec.startswith((".", "/", "~")) and path.suffix == "":
        return resolve_hub(repo), None
    raise WeightsError(
        f"{spec!r} is neither a registry name ({', '.join(sorted(REGISTRY))}), an existing "
        "file or folder, nor a hub id (org/name)"
    )


def local_file(spec: str) -> Path | None:
    """The weight file ``spec`` names on this machine, without any download: None for a hub
    id or a registry file that is not there yet."""
    if spec in REGISTRY:
        path = local_path(REGISTRY[spec])
        return path if path.is_file() else None
    path = Path(spec).expanduser()
    if path.is_dir():
        try:
            return _find_in_folder(path)
        except WeightsError:
            return None
    return path if path.is_file() else None


_DIGESTS: dict[tuple[str, int, int], str] = {}


def content_digest(path: Path) -> str:
    """sha256 of a weight file, remembered per (path, size, mtime) for this process (a checkpoint
    check may hash a 600 MB CLIP more than once)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_of(path)
    return _DIGESTS[key]


@dataclass
class RawWeights:
    """A file's tensors (in the file's own layout) and its safetensors metadata."""

    path: Path
    tensors: dict[str, Tensor]
    metadata: dict[str, str]


def _read_safetensors(path: Path) -> RawWeights:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err})") from err
    return RawWeights(path, tensors, meta)


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict) and len(obj) <= 3:
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: does not hold a state dict of tensors")
    return {str(k): v for k, v in obj.items()}


UNSAFE_PICKLE_WAY = (
    "Use the publisher's safetensors or tensor-only file (docs/weights.md lists where to get "
    "each); for a file you made yourself and trust, save its tensors alone (a state dict of "
    "tensors, or safetensors) and pass that file."
)


def read_weights(path: Path, trust_torchscript: bool = False) -> RawWeights:
    """Read any supported file into tensors without executing code from it."""
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    with path.open("rb") as f:
        head = f.read(8)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return RawWeights(path, read_torchscript(path, trust=trust_torchscript), {})
    elif len(head) < 8:
        raise WeightsError(f"{path}: file is empty or truncated")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if refused_global(err) or "weights only" in str(err).lower():
            raise WeightsError(refusal_message(path, err, UNSAFE_PICKLE_WAY)) from None
        raise WeightsError(f"{path}: cannot read: a truncated or damaged pickle ({err})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        hint = "" if path.suffix != ".pt" else " (a truncated or non-PyTorch file)"
        raise WeightsError(f"{path}: cannot read as a PyTorch state dict{hint}: {err}") from err
    return RawWeights(path, _unwrap(obj, path), {})


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path}: not valid JSON ({err})") from err
    return data


def _hf_config(path: Path) -> dict[str, Any]:
    """Shape facts from a side file next to the weights, in transformers' ``config.json`` terms.

    open_clip's ``open_clip_config.json`` is translated: its ``quick_gelu`` flag (LAION models
    use plain GELU with OpenAI's key names, so the weights alone cannot tell) and head counts.
    """
    oc = path.parent / "open_clip_config.json"
    if oc.is_file():
        model_cfg = _read_json(oc).get("model_cfg", {})
        act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
        vis, txt = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
        vision: dict[str, Any] = {"hidden_act": act}
        if "width" in vis:
            vision["num_attention_heads"] = vis["width"] // vis.get("head_width", 64)
        text: dict[str, Any] = {"hidden_act": act}
        if "heads" in txt:
            text["num_attention_heads"] = txt["heads"]
        return {"vision_config": vision, "text_config": text}
    cfg = path.parent / "config.json"
    return _read_json(cfg) if cfg.is_file() else {}


# ------------------------------------------------------------------------------- loading
def _finish(module: torch.nn.Module, device: str | torch.device) -> None:
    """Frozen backbone: eval mode, no parameter gradients (activation gradients still flow)."""
    module.to(device).eval()
    module.requires_grad_(False)


def load_clip_model(
    spec: str,
    device: str | torch.device = "cpu",
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    trust_torchscript: bool = False,
) -> tuple[CLIP, RawWeights]:
    """Build :class:`CLIP` from any supported CLIP file (see :func:`load_clip`)."""
    path, entry = resolve(spec)
    raw = read_weights(path, trust_torchscript)
    if entry is not None and entry.kind != "clip":
        raise WeightsError(f"{spec} is a {entry.kind} backbone, not CLIP")
    if is_native(raw.metadata):
        kind, cfg_dict, _, _ = native_info(path, raw.metadata)
        if kind != "clip":
            raise WeightsError(f"{path}: holds a {kind} backbone, not CLIP")
        cfg = clip_config_from_dict(cfg_dict, str(path))
        state = raw.tensors
    else:
        state, cfg = convert_clip(
            raw.tensors, str(path), vision_heads, text_heads, _hf_config(path)
        )
    model = CLIP(cfg)
    load_state_strict(model, state, str(path))
    _finish(model, device)
    return model, raw


def clip_tokenizer_for(raw: RawWeights, cfg: CLIPConfig) -> Tokenizer:
    """The tokenizer that goes with a CLIP file: stored in native files; for public weights the
    BPE vocabulary beside the file, then in the cache, else the OpenAI asset (downloaded)."""
    tok: Tokenizer
    if is_native(raw.metadata):
        _, _, tok_dict, _ = native_info(raw.path, raw.metadata)
        if not tok_dict:
            raise WeightsError(f"{raw.path}: native CLIP file without a tokenizer")
        tok = tokenizer_from_dict(tok_dict)
    else:
        ctx = cfg.text.context_length
        tok = None  # type: ignore[assignment]
        for folder in (raw.path.parent, cache_dir()):
            if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
                tok = BPETokenizer.from_hf_files(
                    folder / "vocab.json", folder / "merges.txt", context_length=ctx
                )
                break
            if (folder / OPENAI_BPE.filename).is_file():
                tok = BPETokenizer.from_openai_file(
                    folder / OPENAI_BPE.filename, context_length=ctx
                )
                break
        if tok is None:
            tok = BPETokenizer.from_openai_file(ensure_asset(OPENAI_BPE), context_length=ctx)
    checks = (
        ("end-of-text id", tok.eot_token_id, cfg.text.eot_token_id),
        ("start-of-text id", tok.sot_token_id, cfg.text.sot_token_id),
        ("context length", tok.context_length, cfg.text.context_length),
    )
    for what, got, want in checks:
        if got != want:
            raise WeightsError(
                f"{raw.path}: tokenizer {what} {got} does not match the text tower's {want}"
            )
    return tok


def load_clip(
    spec: str,
    device: str | torch.device = "cpu",
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    trust_torchscript: bool = False,
) -> tuple[CLIP, Tokenizer]:
    """Load a frozen CLIP and its tokenizer.

    spec: registry name, local file/folder or hub id. Head counts come from native metadata or
    a transformers ``config.json``; otherwise ``width // 64`` unless given here.
    trust_torchscript: TorchScript archives are read without running their code; only if that
        reader fails is ``torch.jit.load`` used, and only with this flag (it executes code).
    """
    model, raw = load_clip_model(
        spec,
        device,
        vision_heads=vision_heads,
        text_heads=text_heads,
        trust_torchscript=trust_torchscript,
    )
    return model, clip_tokenizer_for(raw, model.cfg)


def load_dino(
    spec: str,
    device: str | torch.device = "cpu",
    *,
    heads: int | None = None,
) -> VisionTransformer:
    """Load a frozen DINO-style ViT: DINO v1 or DINOv2 (native, official ``.pth``, timm,
    transformers ViTModel / Dinov2Model / Dinov2WithRegistersModel)."""
    path, entry = resolve(spec)
    if entry is not None and entry.kind != "dino":
        raise WeightsError(f"{spec} is a {entry.kind} backbone, not DINO")
    raw = read_weights(path)
    cfg: ViTConfig
    if is_native(raw.metadata):
        kind, cfg_dict, _, _ = native_info(path, raw.metadata)
        if kind != "dino":
            raise WeightsError(f"{path}: holds a {kind} backbone, not DINO")
        cfg = vit_config_from_dict(cfg_dict, str(path))
        state = raw.tensors
    else:
        state, cfg = convert_vit(raw.tensors, str(path), heads, _hf_config(path))
    model = VisionTransformer(cfg)
    load_state_strict(model, state, str(path))
    _finish(model, device)
    return model


def tokenizer_from_dict(data: dict[str, object]) -> Tokenizer:
    """Rebuild a tokenizer from its ``to_dict()`` (stored in native weight files)."""
    kind = data.get("kind")
    if kind == "word":
        words, ctx = data.get("words"), data.get("context_length", 16)
        if not isinstance(words, list) or not isinstance(ctx, int):
            raise ValueError("a word tokenizer dict needs a list 'words' and an int length")
        return WordTokenizer(words, ctx)
    if kind == "bpe":
        return BPETokenizer.from_dict(data)
    raise ValueError(f"unknown tokenizer kind {kind!r} (known: word, bpe)")
