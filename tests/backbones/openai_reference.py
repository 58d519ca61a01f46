"""OpenAI's CLIP tokenizer as shipped in the ``open_clip_torch`` wheel, used as a reference.

``import open_clip`` imports torchvision, which is not installed here, so nothing of the package
is imported: its files are located through the installed distribution's file list, the
vocabulary is read as a file and ``open_clip/tokenizer.py`` (a copy of OpenAI's
``simple_tokenizer.py``; it needs ``ftfy``, ``regex``, ``numpy`` and ``torch``) is executed on
its own from its path. The wheel is a dev dependency (Makefile: ``pip install --no-deps``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

DIST = "open_clip_torch"
VOCAB_GZ = "bpe_simple_vocab_16e6.txt.gz"
# open_clip renames OpenAI's special tokens; ids (49406, 49407) are the same.
SPECIALS = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}


def package_file(name: str) -> Path:
    """Path of ``open_clip/<name>`` inside the installed wheel (the package is not imported)."""
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError as err:
        raise RuntimeError(
            f"{DIST} is a test dependency: `make install`, or "
            f".venv/bin/pip install --no-deps -c constraints.txt {DIST}"
        ) from err
    for f in dist.files or ():
        if f.parts == ("open_clip", name):
            return Path(str(dist.locate_file(f)))
    raise RuntimeError(f"{DIST} {dist.version} has no open_clip/{name}")


@lru_cache(maxsize=1)
def tokenizer_module() -> ModuleType:
    """``open_clip/tokenizer.py`` loaded by path under a private name."""
    path = package_file("tokenizer.py")
    spec = importlib.util.spec_from_file_location("_reference_clip_tokenizer", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=1)
def reference_tokenizer() -> Any:
    """OpenAI's SimpleTokenizer over the wheel's vocabulary (context length 77)."""
    mod = tokenizer_module()
    return mod.SimpleTokenizer(str(package_file(VOCAB_GZ)))


def write_hf_files(folder: Path) -> tuple[Path, Path]:
    """``vocab.json`` + ``merges.txt`` in Hugging Face's format, made from the reference
    tokenizer's own vocabulary (not from the code under test)."""
    ref = reference_tokenizer()
    vocab = {SPECIALS.get(tok, tok): idx for tok, idx in ref.encoder.items()}
    merges = sorted(ref.bpe_ranks, key=ref.bpe_ranks.__getitem__)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_json, merges_txt = folder / "vocab.json", folder / "merges.txt"
    vocab_json.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    body = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    merges_txt.write_text(body, encoding="utf-8")
    return vocab_json, merges_txt
