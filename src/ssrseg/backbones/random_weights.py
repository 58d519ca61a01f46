"""Random weights in the exact file layout of a named backbone, for tests and dry runs.

``ssrseg weights random NAME --out FILE`` writes what the real download of ``NAME`` would be
(the same key names, shapes, dtypes and file format, loaded by the same code path) but with
random values, plus the tokenizer files a CLIP needs beside it. The real-size pipeline can so
run end to end without any download; the numbers it produces mean nothing.

Shapes: ``full`` is the real model; ``tiny`` keeps the layout, the key names, the vocabulary,
the context length, the image size, the patch size, the embedding width and the number of
vision blocks (presets address blocks by index and size the CMPA heads by the embedding) but
shrinks the tower widths, so a CPU runs it in seconds.

Tokenizers: a CLIP gets OpenAI's real BPE vocabulary when one is on this machine (``--vocab``,
the weights cache, or the copy inside an installed ``open_clip_torch`` wheel), else a
synthetic BPE vocabulary of the real size (same special-token ids) from :func:`synthetic_bpe`.

Add a name by adding a :class:`RandomSpec` to :data:`SPECS`.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ssrseg.atomic import atomic_path
from ssrseg.backbones.bpe import END_OF_WORD, EOT, SOT, bytes_to_unicode
from ssrseg.backbones.clip import CLIP
from ssrseg.backbones.dinov2 import write_random_dinov2
from ssrseg.backbones.native import WeightsError, save_native
from ssrseg.backbones.toy_shapes import toy_clip_config, toy_dino_config, toy_tokenizer
from ssrseg.backbones.vit import VisionTransformer
from ssrseg.backbones.weights import cache_dir

SIZES = ("full", "tiny")
OPENAI_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"


@dataclass(frozen=True)
class ClipShape:
    """The numbers an OpenAI-layout CLIP file implies (heads are width // 64, as OpenAI's)."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    embed_dim: int = 512
    vocab_size: int = 49408
    context_length: int = 77
    text_width: int = 512
    text_layers: int = 12


@dataclass(frozen=True)
class VitShape:
    """The numbers an official-DINO-layout ViT file implies (heads are width // 64)."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 384
    layers: int = 12
    mlp_ratio: int = 4


# ----------------------------------------------------------------------------- tensors
class _Init:
    """Seeded random tensors with the scales of the real initialisations (so activations stay
    finite and moderate through many blocks)."""

    def __init__(self, seed: int, dtype: torch.dtype) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.dtype = dtype

    def normal(self, *shape: int, std: float) -> Tensor:
        return (torch.randn(*shape, generator=self.gen) * std).to(self.dtype)

    def ones(self, n: int) -> Tensor:
        return torch.ones(n, dtype=self.dtype)

    def zeros(self, *shape: int) -> Tensor:
        return torch.zeros(*shape, dtype=self.dtype)


def _openai_blocks(init: _Init, prefix: str, width: int, layers: int) -> dict[str, Tensor]:
    """``<prefix>resblocks.<i>.*`` of OpenAI's ``Transformer`` (fused qkv, ``c_fc``/``c_proj``)."""
    out: dict[str, Tensor] = {}
    attn_std, proj_std = width**-0.5, (width**-0.5) * ((2 * layers) ** -0.5)
    fc_std = (2 * width) ** -0.5
    for i in range(layers):
        p = f"{prefix}resblocks.{i}."
        out[p + "attn.in_proj_weight"] = init.normal(3 * width, width, std=attn_std)
        out[p + "attn.in_proj_bias"] = init.zeros(3 * width)
        out[p + "attn.out_proj.weight"] = init.normal(width, width, std=proj_std)
        out[p + "attn.out_proj.bias"] = init.zeros(width)
        out[p + "ln_1.weight"], out[p + "ln_1.bias"] = init.ones(width), init.zeros(width)
        out[p + "mlp.c_fc.weight"] = init.normal(4 * width, width, std=fc_std)
        out[p + "mlp.c_fc.bias"] = init.zeros(4 * width)
        out[p + "mlp.c_proj.weight"] = init.normal(width, 4 * width, std=proj_std)
        out[p + "mlp.c_proj.bias"] = init.zeros(width)
        out[p + "ln_2.weight"], out[p + "ln_2.bias"] = init.ones(width), init.zeros(width)
    return out


def openai_clip_state(
    shape: ClipShape, seed: int = 0, dtype: torch.dtype = torch.float16
) -> dict[str, Tensor]:
    """A random CLIP state dict with the key names and shapes of OpenAI's ``model.state_dict()``
    (``visual.conv1.weight`` ... ``logit_scale``)."""
    init = _Init(seed, dtype)
    w, tw, grid = shape.width, shape.text_width, shape.image_size // shape.patch_size
    sd: dict[str, Tensor] = {
        "positional_embedding": init.normal(shape.context_length, tw, std=0.01),
        "text_projection": init.normal(tw, shape.embed_dim, std=tw**-0.5),
        "logit_scale": torch.tensor(math.log(100.0), dtype=dtype),  # the trained value
        "visual.class_embedding": init.normal(w, std=w**-0.5),
        "visual.positional_embedding": init.normal(grid * grid + 1, w, std=w**-0.5),
        "visual.proj": init.normal(w, shape.embed_dim, std=w**-0.5),
        "visual.conv1.weight": init.normal(w, 3, shape.patch_size, shape.patch_size, std=0.02),
        "visual.ln_pre.weight": init.ones(w),
        "visual.ln_pre.bias": init.zeros(w),
    }
    sd.update(_openai_blocks(init, "visual.transformer.", w, shape.layers))
    sd["visual.ln_post.weight"], sd["visual.ln_post.bias"] = init.ones(w), init.zeros(w)
    sd.update(_openai_blocks(init, "transformer.", tw, shape.text_layers))
    sd["token_embedding.weight"] = init.normal(shape.vocab_size, tw, std=0.02)
    sd["ln_final.weight"], sd["ln_final.bias"] = init.ones(tw), init.zeros(tw)
    return sd


def dino_official_state(
    shape: VitShape, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """A random ViT state dict with the key names and shapes of the official DINO backbone
    checkpoints (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.<i>.*``, ``norm``)."""
    init = _Init(seed, dtype)
    w, grid, hidden = (
        shape.width,
        shape.image_size // shape.patch_size,
        shape.width * shape.mlp_ratio,
    )
    sd: dict[str, Tensor] = {
        "cls_token": init.normal(1, 1, w, std=0.02),
        "pos_embed": init.normal(1, grid * grid + 1, w, std=0.02),
        "patch_embed.proj.weight": init.normal(w, 3, shape.patch_size, shape.patch_size, std=0.02),
        "patch_embed.proj.bias": init.zeros(w),
    }
    for i in range(shape.layers):
        p = f"blocks.{i}."
        sd[p + "norm1.weight"], sd[p + "norm1.bias"] = init.ones(w), init.zeros(w)
        sd[p + "attn.qkv.weight"] = init.normal(3 * w, w, std=0.02)
        sd[p + "attn.qkv.bias"] = init.zeros(3 * w)
        sd[p + "attn.proj.weight"] = init.normal(w, w, std=0.02)
        sd[p + "attn.proj.bias"] = init.zeros(w)
        sd[p + "norm2.weight"], sd[p + "norm2.bias"] = init.ones(w), init.zeros(w)
        sd[p + "mlp.fc1.weight"] = init.normal(hidden, w, std=0.02)
        sd[p + "mlp.fc1.bias"] = init.zeros(hidden)
        sd[p + "mlp.fc2.weight"] = init.normal(w, hidden, std=0.02)
        sd[p + "mlp.fc2.bias"] = init.zeros(w)
    sd["norm.weight"], sd["norm.bias"] = init.ones(w), init.zeros(w)
    return sd


# ----------------------------------------------------------------------------- vocabularies
TINY_WORDS = ("a", "photo", "of", "the", "cat", "dog", "bird", "clean", "origami", "sky", "s")


def synthetic_bpe(
    size: int = 100, words: Sequence[str] = TINY_WORDS
) -> tuple[list[str], list[tuple[str, str]]]:
    """A CLIP-style BPE vocabulary of exactly ``size`` tokens: base characters (with and
    without ``</w>``), merges that spell out ``words`` first, then letter-pair merges as filler,
    SOT and EOT last (ids ``size - 2`` and ``size - 1``, as OpenAI's 49406 / 49407).

    Below 512 tokens the base alphabet is lower-case letters and a few symbols (small test
    vocabularies); from 512 it is OpenAI's 256 byte characters, so any text tokenizes.
    """
    if size >= 512 + 2:
        base = list(bytes_to_unicode().values())
    else:
        base = [*"abcdefghijklmnopqrstuvwxyz", ".", ",", "!", "'", "1", "2"]
    vocab = [*base, *(c + END_OF_WORD for c in base)]
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()

    def add(pair: tuple[str, str]) -> None:
        if pair not in seen:
            seen.add(pair)
            merges.append(pair)

    for word in words:
        parts = [*word[:-1], word[-1] + END_OF_WORD]
        while len(parts) > 1:
            add((parts[0], parts[1]))
            parts = [parts[0] + parts[1], *parts[2:]]
    filler = _pairs(base, "etaoinshrdlu" if size < 512 + 2 else "".join(base))
    need = size - 2 - len(vocab)
    if need < len(merges):
        raise ValueError(f"a vocabulary of {size} tokens cannot hold the merges of {list(words)}")
    while len(merges) < need:
        add(next(filler))
    vocab += list(dict.fromkeys("".join(m) for m in merges))
    if len(vocab) + 2 != size:
        raise ValueError(f"synthetic vocabulary has {len(vocab) + 2} tokens, wanted {size}")
    return [*vocab, SOT, EOT], merges


def _pairs(base: Sequence[str], letters: str) -> Iterator[tuple[str, str]]:
    """Letter pairs, then letter + end-of-word pairs, in a fixed order (filler merges)."""
    for a in letters:
        for b in letters:
            yield (a, b)
    for a in letters:
        for b in letters:
            yield (a, b + END_OF_WORD)
    raise ValueError("synthetic vocabulary: out of filler merges")


def write_hf_bpe(
    folder: Path, size: int = 100, words: Sequence[str] = TINY_WORDS
) -> tuple[Path, Path]:
    """``vocab.json`` + ``merges.txt`` (Hugging Face's format) of :func:`synthetic_bpe`."""
    vocab, merges = synthetic_bpe(size, words)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    merges_path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return vocab_path, merges_path


def find_openai_vocab(extra: Sequence[Path] = ()) -> Path | None:
    """OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` on this machine: ``extra`` paths, the weights
    cache, or the copy shipped inside an installed ``open_clip_torch`` wheel (read as a file;
    the package is not imported)."""
    for path in (*extra, cache_dir() / OPENAI_VOCAB_FILE):
        if Path(path).is_file():
            return Path(path)
    try:
        dist = importlib.metadata.distribution("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.parts == ("open_clip", OPENAI_VOCAB_FILE):
            located = Path(str(dist.locate_file(f)))
            return located if located.is_file() else None
    return None


# ----------------------------------------------------------------------------- named specs
@dataclass(frozen=True)
class RandomSpec:
    """How to write random weights for one registry name.

    write(out, size, seed, vocab) -> the files written (weights first).
    """

    name: str
    kind: str  # clip | dino
    layout: str  # the real file's layout, for the listing
    write: Callable[[Path, str, int, Path | None], list[Path]]


def _clip_openai(out: Path, size: str, seed: int, vocab: Path | None) -> list[Path]:
    shape = ClipShape()
    if size == "tiny":
        # the real embedding width stays: presets size the CMPA heads by it (cmpa.in_dim)
        shape = ClipShape(width=64, text_width=64, text_layers=2)
    out.parent.mkdir(parents=True, exist_ok=True)

    with atomic_path(out, suffix=".tmp") as tmp:
        torch.save(openai_clip_state(shape, seed), tmp)
    written = [out]
    found = find_openai_vocab([vocab] if vocab is not None else [])
    if vocab is not None and found != vocab:
        raise WeightsError(f"--vocab {vocab}: no such file")
    if found is not None:
        dest = out.parent / OPENAI_VOCAB_FILE
        if found.resolve() != dest.resolve():
            shutil.copyfile(found, dest)
        written.append(dest)
    else:  # the real size and special ids, made-up merges
        written += list(write_hf_bpe(out.parent, shape.vocab_size))
    return written


def _dino_official(out: Path, size: str, seed: int, vocab: Path | None) -> list[Path]:
    shape = VitShape(width=64, layers=2) if size == "tiny" else VitShape()

    with atomic_path(out, suffix=".tmp") as tmp:
        torch.save(dino_official_state(shape, seed), tmp)
    return [out]


def _toy(kind: str) -> Callable[[Path, str, int, Path | None], list[Path]]:
    def write(out: Path, size: str, seed: int, vocab: Path | None) -> list[Path]:
        torch.manual_seed(seed)
        extra = {"random": True, "seed": seed}
        if kind == "clip":
            tok = toy_tokenizer()
            cfg = toy_clip_config(tok)
            return [save_native(out, CLIP(cfg), "clip", cfg, tok, extra)]
        dcfg = toy_dino_config()
        return [save_native(out, VisionTransformer(dcfg), "dino", dcfg, None, extra)]

    return write


def _dinov2(name: str) -> Callable[[Path, str, int, Path | None], list[Path]]:
    """DINOv2 names: the official ``.pth`` layout (``ssrseg.backbones.dinov2``)."""

    def write(out: Path, size: str, seed: int, vocab: Path | None) -> list[Path]:
        return write_random_dinov2(name, out, tiny=size == "tiny", seed=seed)

    return write


_DINOV2 = tuple(f"dinov2_vit{s}14{r}" for s in "sbl" for r in ("", "_reg"))

SPECS: dict[str, RandomSpec] = {
    s.name: s
    for s in (
        RandomSpec("clip_vit_b16.openai", "clip", "OpenAI CLIP state dict (.pt)", _clip_openai),
        RandomSpec("dino_vit_s16", "dino", "official DINO backbone (.pth)", _dino_official),
        *(RandomSpec(n, "dino", "official DINOv2 backbone (.pth)", _dinov2(n)) for n in _DINOV2),
        RandomSpec("toy_clip", "clip", "ssrseg native (.safetensors)", _toy("clip")),
        RandomSpec("toy_dino", "dino", "ssrseg native (.safetensors)", _toy("dino")),
    )
}


def write_random_weights(
    name: str,
    out: str | Path,
    size: str = "full",
    seed: int = 0,
    vocab: str | Path | None = None,
) -> list[Path]:
    """Write random weights for registry name ``name`` to ``out`` (plus tokenizer files beside
    it for a CLIP); returns the files written, weights first."""
    if name not in SPECS:
        raise WeightsError(
            f"no random-weights recipe for {name!r}; known: {', '.join(sorted(SPECS))}"
        )
    if size not in SIZES:
        raise WeightsError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    return SPECS[name].write(Path(out), size, seed, Path(vocab) if vocab is not None else None)
