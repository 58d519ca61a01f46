"""The CLIP BPE tokenizer on OpenAI's real vocabulary, against OpenAI's own tokenizer.

The reference is OpenAI's ``simple_tokenizer`` as the ``open_clip_torch`` wheel ships it (run
from its file, see ``openai_reference``), with the wheel's ``bpe_simple_vocab_16e6.txt.gz``.
Literal ids pin the result independently of the reference.
"""

from __future__ import annotations

import pytest
import regex
import torch
from bpe_corpus import HANDMADE, preset_prompts, varied_strings
from openai_reference import VOCAB_GZ, package_file, reference_tokenizer, write_hf_files

from ssrseg.backbones.bpe import BPETokenizer, byte_symbols, clip_clean, pre_tokenize

# OpenAI's pattern, as in its simple_tokenizer.py (a fact about the format).
OPENAI_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@pytest.fixture(scope="module")
def ours() -> BPETokenizer:
    return BPETokenizer.from_openai_file(package_file(VOCAB_GZ))


@pytest.fixture(scope="module")
def ref():
    return reference_tokenizer()


def _row(tok: BPETokenizer, text: str) -> list[int]:
    row = tok([text])[0]
    n = len(tok.encode(text)) + 2
    assert row[n:].eq(0).all()
    return row[:n].tolist()


def _assert_same(ours: BPETokenizer, ref, texts: list[str]) -> None:
    mine = ours(texts, truncate=True)
    theirs = ref(texts)  # truncates to 77 with the end token last, as ours with truncate=True
    bad = [t for t, a, b in zip(texts, mine, theirs, strict=True) if not torch.equal(a, b)]
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[:3]!r}"


def test_single_byte_ids_follow_openai_order_by_hand(ours):
    # printable bytes first: "!" is id 0, "a" is 64 (ord('a') - ord('!')), "¡" follows "~" (93)
    assert byte_symbols()[:3] == ("!", '"', "#") and byte_symbols()[93:95] == ("~", "¡")
    assert byte_symbols()[188] == chr(256) and len(set(byte_symbols())) == 256
    assert ours.encoder["!"] == 0 and ours.encoder["a"] == 64
    assert ours.encoder["a</w>"] == 256 + 64 == 320
    assert ours.encoder[".</w>"] == 256 + 13 == 269
    assert ours.encoder["x</w>"] == 256 + 87 == 343
    assert ours.encoder[chr(256) + "</w>"] == 256 + 188  # byte 0x00
    assert (ours.sot_token_id, ours.eot_token_id, ours.vocab_size) == (49406, 49407, 49408)


def test_pinned_ids():
    tok = BPETokenizer.from_openai_file(package_file(VOCAB_GZ))
    pinned = {
        "a photo of a cat.": [49406, 320, 1125, 539, 320, 2368, 269, 49407],
        "a clean origami aeroplane.": [49406, 320, 3772, 31832, 27735, 3980, 269, 49407],
        "a clean origami bird avian.": [49406, 320, 3772, 31832, 3329, 24115, 269, 49407],
        "a clean origami diningtable.": [49406, 320, 3772, 31832, 1462, 653, 2175, 269, 49407],
        "a clean origami person with clothes,people,human.": [
            49406, 320, 3772, 31832, 2533, 593, 7080, 267, 1047, 267, 2751, 269, 49407,
        ],
        "a clean origami ground.": [49406, 320, 3772, 31832, 2461, 269, 49407],
        # OpenAI maps the literal special token text to its id (open_clip renames it)
        "x <|endoftext|>": [49406, 343, 49407, 49407],
    }  # fmt: skip
    for text, ids in pinned.items():
        assert _row(tok, text) == ids, text


def test_every_preset_prompt_matches_openai(ours, ref):
    prompts = preset_prompts()
    assert len(prompts["voc"]) == 45 and len(prompts["coco"]) == 103
    for texts in prompts.values():
        _assert_same(ours, ref, texts)


def test_varied_strings_match_openai(ours, ref):
    texts = varied_strings(300)
    assert len(texts) > 300
    _assert_same(ours, ref, texts)


def test_long_text_is_cut_to_77_with_the_end_token(ours, ref):
    text = "a photo of a cat. " * 30
    row = ours([text], truncate=True)[0]
    assert row.shape == (77,) and row[0] == 49406 and row[-1] == 49407 and (row != 0).all()
    assert torch.equal(row, ref([text])[0])
    with pytest.raises(ValueError, match="context length 77"):
        ours([text])


def test_openai_gz_and_hub_files_give_the_same_tokenizer(ours, tmp_path):
    vocab_json, merges_txt = write_hf_files(tmp_path)
    hub = BPETokenizer.from_hf_files(vocab_json, merges_txt)
    assert hub.vocab == ours.vocab and hub.merges == ours.merges
    texts = [*varied_strings(100, seed=1), *(t for v in preset_prompts().values() for t in v)]
    assert torch.equal(hub(texts, truncate=True), ours(texts, truncate=True))


def test_pre_tokenizer_agrees_with_the_regex_package_on_every_assigned_character():
    import unicodedata

    # all assigned characters but unassigned, surrogates and private use; of the ~120k "other
    # letters" (CJK ideographs, syllables...) every 16th keeps the test fast
    cats = {c: unicodedata.category(chr(c)) for c in range(0x110000)}
    lo = [c for c, cat in cats.items() if cat == "Lo"]
    chars = [chr(c) for c, cat in cats.items() if cat not in ("Cn", "Cs", "Co", "Lo")]
    chars += [chr(c) for c in lo[::16]]
    isolated = " ".join(chars)
    assert pre_tokenize(isolated) == OPENAI_PATTERN.findall(isolated)
    # next to letters, digits, punctuation and apostrophes (runs, contractions)
    sample = chars[::5]
    mixed = "".join(f"a{c}1{c}!{c}'{c}s{c} " for c in sample).lower()  # as after cleaning
    assert pre_tokenize(mixed) == OPENAI_PATTERN.findall(mixed)


def test_cleaning_without_ftfy(monkeypatch):
    import ssrseg.backbones.bpe as bpe

    monkeypatch.setattr(bpe, "_warned_no_ftfy", True)  # the warning is checked below
    # control separators U+001C..U+001F are white space for str.isspace, not for OpenAI's \s
    assert clip_clean(" A\x1cB\u3000\u2009C\t ", fix_text=None) == "a\x1cb c"
    assert pre_tokenize("a\x1cb") == ["a", "\x1c", "b"] == OPENAI_PATTERN.findall("a\x1cb")
    # long s counts as s in OpenAI's case-insensitive contraction alternative
    assert pre_tokenize("dog'ſ") == ["dog", "'ſ"] == OPENAI_PATTERN.findall("dog'ſ")
    # ASCII text without '&' or control characters is what ftfy leaves alone
    for text in preset_prompts()["voc"]:
        assert clip_clean(text, fix_text=None) == clip_clean(text)
    monkeypatch.setattr(bpe, "_warned_no_ftfy", False)
    with pytest.warns(UserWarning, match="ftfy is not installed"):
        clip_clean("café", fix_text=None)
    assert clip_clean("dog’s", fix_text=None) == "dog’s"  # ftfy would straighten the quote
    assert clip_clean("dog’s") == "dog's"


def test_handmade_strings_are_in_the_varied_set():
    assert set(HANDMADE) <= set(varied_strings(0))
