"""Tokenizers for CLIP's text tower.

Every tokenizer maps a list of strings to a ``B x context_length`` LongTensor of ids: the
start-of-text id, the text's ids, the end-of-text id, then zeros. The text tower pools at the
first end-of-text id.

- :class:`WordTokenizer`: word-level, for the toy world's tiny CLIP (vocabulary = the world's
  words).
- The CLIP BPE tokenizer for OpenAI weights lives beside it (see ``BPETokenizer``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor


class Tokenizer(Protocol):
    """What the text side needs from any tokenizer."""

    context_length: int
    sot_token_id: int
    eot_token_id: int

    def __call__(self, texts: Sequence[str]) -> Tensor: ...


def clean_text(text: str) -> str:
    """The word tokenizer's clean-up: unescape HTML twice, collapse whitespace, strip,
    lower-case (the BPE tokenizer follows OpenAI's exactly: ``bpe.clip_clean``)."""
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip().lower()


def pack_ids(
    rows: Sequence[Sequence[int]], context_length: int, sot: int, eot: int, truncate: bool
) -> Tensor:
    """Wrap each id row in SOT/EOT and zero-pad to ``context_length``: ``B x context_length``."""
    out = torch.zeros(len(rows), context_length, dtype=torch.long)
    for i, ids in enumerate(rows):
        seq = [sot, *ids, eot]
        if len(seq) > context_length:
            if not truncate:
                raise ValueError(
                    f"text {i} needs {len(seq)} tokens, more than the context length "
                    f"{context_length}"
                )
            seq = [*seq[: context_length - 1], eot]
        out[i, : len(seq)] = torch.tensor(seq)
    return out


class WordTokenizer:
    """Word-level tokenizer over a fixed vocabulary.

    Ids: 0 padding, 1 unknown, then the words in order, then SOT and EOT (EOT is the highest id,
    as in OpenAI's BPE, so ``argmax`` pooling and first-EOT pooling agree).
    """

    PAD, UNK = 0, 1

    def __init__(self, words: Sequence[str], context_length: int = 16) -> None:
        unique = list(dict.fromkeys(w.lower() for w in words))
        self.words: tuple[str, ...] = tuple(unique)
        self.context_length = context_length
        self.index = {w: i + 2 for i, w in enumerate(self.words)}
        self.sot_token_id = len(self.words) + 2
        self.eot_token_id = len(self.words) + 3

    @property
    def vocab_size(self) -> int:
        return self.eot_token_id + 1

    def split(self, text: str) -> list[str]:
        """Lower-cased words; punctuation is dropped."""
        return re.findall(r"[a-z0-9]+", clean_text(text))

    def encode(self, text: str, strict: bool = True) -> list[int]:
        """Ids of ``text``'s words; an unknown word is an error when ``strict``."""
        ids = []
        for word in self.split(text):
            if word not in self.index and strict:
                raise KeyError(f"word '{word}' (in '{text}') is not in the tokenizer vocabulary")
            ids.append(self.index.get(word, self.UNK))
        return ids

    def __call__(self, texts: Sequence[str], truncate: bool = False) -> Tensor:
        """texts -> ``B x context_length`` ids."""
        rows = [self.encode(t) for t in texts]
        return pack_ids(rows, self.context_length, self.sot_token_id, self.eot_token_id, truncate)

    def to_dict(self) -> dict[str, object]:
        """Serialisable description (stored with the weights)."""
        return {"kind": "word", "words": list(self.words), "context_length": self.context_length}
