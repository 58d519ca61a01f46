"""CLIP's byte-level BPE tokenizer, written from the published description of the format.

Steps (as OpenAI CLIP tokenises, see :func:`clip_clean` and :func:`pre_tokenize`): clean the
text (``ftfy`` repair when installed, HTML unescape, collapse whitespace, lower-case), split it
into pre-tokens (special tokens, English contractions, runs of letters, single number
characters, runs of other non-space characters), map each pre-token's UTF-8 bytes to printable
unicode characters, mark the last character with ``</w>`` and apply the ranked merges. Ids come
from the vocabulary; each row is ``[SOT, ids..., EOT, 0...]`` of length ``context_length``.

The vocabulary is an asset of the pretrained model: either Hugging Face's ``vocab.json`` +
``merges.txt`` or OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (merges only; the vocabulary is
derived from them in OpenAI's order: the 256 byte symbols, printable bytes first, see
:func:`byte_symbols`; the same with ``</w>``; one token per merge; SOT; EOT).
"""

from __future__ import annotations

import gzip
import html
import json
import re
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

from torch import Tensor

from ssrseg.backbones.tokenizer import pack_ids

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
END_OF_WORD = "</w>"
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
# OpenAI keeps the first 49152 - 256 - 2 merges of bpe_simple_vocab_16e6.txt.gz (vocab 49408).
OPENAI_NUM_MERGES = 49152 - 256 - 2

# The printable Latin-1 bytes, which stand for themselves; OpenAI lists them first.
_PRINTABLE_BYTES = (
    *range(ord("!"), ord("~") + 1),
    *range(ord("¡"), ord("¬") + 1),
    *range(ord("®"), ord("ÿ") + 1),
)
# Unicode White_Space: what OpenAI's ``\s`` (the ``regex`` package) matches. Python's
# str.isspace() also counts U+001C..U+001F, which ``regex`` does not.
WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_WHITESPACE_RUN = re.compile("[" + "".join(sorted(WHITESPACE)) + "]+")
# Matched by no alternative of OpenAI's case-insensitive pattern, so skipped like a space:
# COMBINING GREEK YPOGEGRAMMENI case-folds to a letter, which excludes it from [^\s\p{L}\p{N}].
_SKIPPED = frozenset("\u0345")
# The only non-ASCII character that the case-insensitive pattern matches in place of a letter of
# a contraction or special token (long s folds to s; upper case is gone after lower-casing).
_FOLD = str.maketrans({"ſ": "s"})


@lru_cache(maxsize=1)
def byte_symbols() -> tuple[str, ...]:
    """The 256 byte symbols in OpenAI's order, which is the order of token ids 0..255.

    Printable bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) come first and stand for
    themselves; the 68 other bytes follow in byte order as ``chr(256 + n)``, n = 0..67.
    """
    others = [b for b in range(256) if b not in _PRINTABLE_BYTES]
    return (*(chr(b) for b in _PRINTABLE_BYTES), *(chr(256 + n) for n in range(len(others))))


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Byte value -> its printable symbol; iteration order is OpenAI's (see byte_symbols)."""
    others = [b for b in range(256) if b not in _PRINTABLE_BYTES]
    return dict(zip((*_PRINTABLE_BYTES, *others), byte_symbols(), strict=True))


def _ftfy_fix() -> Callable[[str], str] | None:
    try:
        import ftfy
    except ImportError:
        return None
    fix: Callable[[str], str] = ftfy.fix_text
    return fix


_FTFY_FIX = _ftfy_fix()
_FTFY_NEUTRAL = frozenset(chr(c) for c in range(0x20, 0x7F) if chr(c) != "&") | set("\t\n\r\x0c")
_warned_no_ftfy = False


def clip_clean(text: str, fix_text: Callable[[str], str] | None = _FTFY_FIX) -> str:
    """OpenAI's clean-up before BPE: ``ftfy.fix_text`` (when installed), HTML unescape twice,
    strip, collapse runs of Unicode white space to one space, strip, lower-case.

    Without ``ftfy`` the repair step is skipped; that changes only text with characters outside
    printable ASCII, ``&`` or control characters (a warning says so once).
    """
    global _warned_no_ftfy
    if fix_text is not None:
        text = fix_text(text)
    elif not _warned_no_ftfy and not set(text) <= _FTFY_NEUTRAL:
        _warned_no_ftfy = True
        warnings.warn(
            "ftfy is not installed: CLIP text is not repaired with ftfy.fix_text as OpenAI's "
            "tokenizer does, so non-ASCII text may get other token ids (pip install ftfy)",
            stacklevel=2,
        )
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE_RUN.sub(" ", text).strip().lower()


def _is_letter(ch: str) -> bool:
    return unicodedata.category(ch).startswith("L")


def _is_number(ch: str) -> bool:
    return unicodedata.category(ch).startswith("N")


def _is_other(ch: str) -> bool:
    """In OpenAI's ``[^\\s\\p{L}\\p{N}]`` class."""
    return not (ch in WHITESPACE or ch in _SKIPPED or _is_letter(ch) or _is_number(ch))


def pre_tokenize(text: str) -> list[str]:
    """Split cleaned text as OpenAI's pattern does (``regex``, case-insensitive):
    ``SOT|EOT|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+``.

    text: cleaned and lower-cased (:func:`clip_clean`); the case-insensitive pattern is only
    emulated for lower-case text. At each position the first alternative that matches wins; a
    character no alternative matches (white space) is skipped. Letter and number classes come
    from Python's Unicode database; they agree with the ``regex`` package on every character
    assigned there.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in WHITESPACE or ch in _SKIPPED:
            i += 1
            continue
        fixed = next(
            (s for s in (SOT, EOT, *CONTRACTIONS) if text[i : i + len(s)].translate(_FOLD) == s),
            None,
        )
        if fixed is not None:
            out.append(text[i : i + len(fixed)])
            i += len(fixed)
            continue
        j = i + 1
        if _is_letter(ch):
            while j < n and _is_letter(text[j]):
                j += 1
        elif not _is_number(ch):
            while j < n and _is_other(text[j]):
                j += 1
        out.append(text[i:j])
        i = j
    return out


class BPETokenizer:
    """CLIP BPE tokenizer. ``vocab``: token strings in id order; ``merges``: ``(a, b)`` pairs,
    best first. The last two vocabulary entries must be SOT and EOT (as in OpenAI's)."""

    def __init__(
        self, vocab: Sequence[str], merges: Sequence[tuple[str, str]], context_length: int = 77
    ) -> None:
        self.vocab = list(vocab)
        self.merges = [tuple(m) for m in merges]
        self.encoder = {tok: i for i, tok in enumerate(self.vocab)}
        if len(self.encoder) != len(self.vocab):
            raise ValueError("the BPE vocabulary has duplicate tokens")
        for special in (SOT, EOT):
            if special not in self.encoder:
                raise ValueError(f"the BPE vocabulary lacks {special}")
        self.ranks = {pair: r for r, pair in enumerate(self.merges)}
        self.context_length = context_length
        self.sot_token_id = self.encoder[SOT]
        self.eot_token_id = self.encoder[EOT]
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ----------------------------------------------------------------------------- builders
    @classmethod
    def from_merges(
        cls, merges: Sequence[tuple[str, str]], context_length: int = 77
    ) -> BPETokenizer:
        """OpenAI's convention: vocab = the 256 byte symbols in :func:`byte_symbols` order, the
        same with ``</w>``, one token per merge, then SOT and EOT."""
        base = byte_symbols()
        vocab = [*base, *(c + END_OF_WORD for c in base), *("".join(m) for m in merges), SOT, EOT]
        return cls(vocab, merges, context_length)

    @classmethod
    def from_openai_file(
        cls, path: str | Path, num_merges: int | None = OPENAI_NUM_MERGES, context_length: int = 77
    ) -> BPETokenizer:
        """Read ``bpe_simple_vocab_16e6.txt.gz`` (or a plain/gzipped merges list of that shape:
        a header line, then ``a b`` per line); keeps the first ``num_merges`` merges."""
        path = Path(path)
        raw = path.read_bytes()
        text = gzip.decompress(raw).decode("utf-8") if raw[:2] == b"\x1f\x8b" else raw.decode()
        lines = text.split("\n")[1:]
        merges = _parse_merges(lines, path)
        if num_merges is not None:
            if len(merges) < num_merges:
                raise ValueError(f"{path}: has {len(merges)} merges, expected >= {num_merges}")
            merges = merges[:num_merges]
        return cls.from_merges(merges, context_length)

    @classmethod
    def from_hf_files(
        cls, vocab_json: str | Path, merges_txt: str | Path, context_length: int = 77
    ) -> BPETokenizer:
        """Read Hugging Face's ``vocab.json`` (token -> id) and ``merges.txt``."""
        mapping = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
        vocab = [""] * len(mapping)
        for tok, idx in mapping.items():
            if not 0 <= idx < len(vocab) or vocab[idx]:
                raise ValueError(f"{vocab_json}: ids are not a permutation of 0..{len(vocab) - 1}")
            vocab[idx] = tok
        lines = Path(merges_txt).read_text(encoding="utf-8").split("\n")
        lines = [ln for ln in lines if not ln.startswith("#version")]
        return cls(vocab, _parse_merges(lines, Path(merges_txt)), context_length)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> BPETokenizer:
        vocab = data["vocab"]
        merges = data["merges"]
        ctx = data.get("context_length", 77)
        if not isinstance(vocab, list) or not isinstance(merges, list) or not isinstance(ctx, int):
            raise ValueError("a BPE tokenizer dict needs lists 'vocab', 'merges' and an int")
        if [str(t) for t in vocab[:256]] == _byte_value_order():
            raise ValueError(
                "this BPE vocabulary numbers the 256 byte symbols in byte-value order (as ssrseg's "
                "native format 1 stored it), not in OpenAI's order, so its token ids are wrong: "
                "re-convert the original weights with `ssrseg weights convert`"
            )
        pairs = [(a, b) for a, b in (str(m).split(" ", 1) for m in merges)]
        return cls([str(t) for t in vocab], pairs, ctx)

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": "bpe",
            "context_length": self.context_length,
            "vocab": self.vocab,
            "merges": [f"{a} {b}" for a, b in self.merges],
        }

    # ------------------------------------------------------------------------------ encoding
    def bpe(self, token: str) -> list[str]:
        """Apply the merges to one pre-token already mapped to byte characters."""
        if token in self._cache:
            return self._cache[token]
        word = [*token[:-1], token[-1] + END_OF_WORD]
        while len(word) > 1:
            pairs = {(word[k], word[k + 1]) for k in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            k = 0
            while k < len(word):
                if k < len(word) - 1 and (word[k], word[k + 1]) == best:
                    merged.append(word[k] + word[k + 1])
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            word = merged
        self._cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without SOT/EOT."""
        ids: list[int] = []
        for piece in pre_tokenize(clip_clean(text)):
            if piece in (SOT, EOT):
                ids.append(self.encoder[piece])
                continue
            chars = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            for tok in self.bpe(chars):
                if tok not in self.encoder:
                    raise KeyError(f"BPE token {tok!r} (from {text!r}) is not in the vocabulary")
                ids.append(self.encoder[tok])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text; SOT, EOT and padding (0 after EOT) are dropped."""
        parts = []
        for i in ids:
            if i == self.eot_token_id:
                break  # padding follows
            if i == self.sot_token_id:
                continue
            parts.append(self.vocab[i])
        # </w> ends a word: it becomes the byte character of a space, then everything decodes.
        chars = "".join(parts).replace(END_OF_WORD, self.byte_encoder[ord(" ")])
        data = bytearray(self.byte_decoder[c] for c in chars)
        return data.decode("utf-8", errors="replace").strip()

    def __call__(self, texts: Sequence[str], truncate: bool = False) -> Tensor:
        """texts -> ``B x context_length`` LongTensor (SOT, ids, EOT, zeros)."""
        rows = [self.encode(t) for t in texts]
        return pack_ids(rows, self.context_length, self.sot_token_id, self.eot_token_id, truncate)


def _byte_value_order() -> list[str]:
    """The byte symbols in byte-value order: how native format 1 wrongly numbered them."""
    table = bytes_to_unicode()
    return [table[b] for b in range(256)]


def _parse_merges(lines: Sequence[str], path: Path) -> list[tuple[str, str]]:
    merges: list[tuple[str, str]] = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}: merge line {n + 1} is not 'a b': {line!r}")
        merges.append((parts[0], parts[1]))
    return merges
