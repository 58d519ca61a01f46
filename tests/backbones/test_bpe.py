"""CLIP BPE tokenizer on small vocabularies built here (no downloaded asset)."""

from __future__ import annotations

import gzip

import pytest
import torch
from backbone_fakes import tiny_bpe, write_hf_bpe

from ssrseg.backbones.bpe import BPETokenizer, bytes_to_unicode, pre_tokenize
from ssrseg.backbones.tokenizer import WordTokenizer
from ssrseg.backbones.weights import tokenizer_from_dict


@pytest.fixture()
def tok():
    vocab, merges = tiny_bpe(100)
    return BPETokenizer(vocab, merges, context_length=77)


def test_byte_table_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord("!")] == "!" and table[0xE9] == "é"
    # space is the 33rd byte outside the printable ranges: 256 + 32
    assert table[ord(" ")] == chr(256 + 32)
    assert all(not c.isspace() for c in table.values())


def test_byte_symbols_are_numbered_in_openai_order():
    # ids 0..187: the printable bytes '!'..'~', '¡'..'¬', '®'..'ÿ'; then the other 68 bytes
    # (0x00.., space is the 33rd) as chr(256 + n); ids 256..511 the same with </w>
    tok = BPETokenizer.from_merges([])
    printable = [chr(c) for c in [*range(33, 127), *range(161, 173), *range(174, 256)]]
    assert tok.vocab[:188] == printable
    assert tok.vocab[188:256] == [chr(256 + n) for n in range(68)]
    assert tok.vocab[256:512] == [c + "</w>" for c in tok.vocab[:256]]
    assert tok.encode("a") == [256 + 64]
    # é is UTF-8 C3 A9: 'Ã' (the 22nd of '®'..'ÿ', after 94 + 12) and '©</w>' (9th of '¡'..'¬')
    assert tok.encode("é") == [94 + 12 + 0xC3 - 0xAE, 256 + 94 + 0xA9 - 0xA1]
    table = bytes_to_unicode()
    assert list(table.values()) == tok.vocab[:256]  # iteration order is the id order
    old = dict(tok.to_dict(), vocab=[*(table[b] for b in range(256)), *tok.vocab[256:]])
    with pytest.raises(ValueError, match="byte-value order"):
        BPETokenizer.from_dict(old)


def test_pre_tokenizer_follows_clips_pattern():
    assert pre_tokenize("a dog's photo!!'s 123 <|endoftext|>x") == [
        "a",
        "dog",
        "'s",
        "photo",
        "!!'",
        "s",
        "1",
        "2",
        "3",
        "<|endoftext|>",
        "x",
    ]
    assert pre_tokenize("東京 café") == ["東京", "café"]


def test_encode_cleans_lowercases_and_merges(tok):
    ids = tok.encode("  A   Photo of the CAT.\n")
    words = ["a</w>", "photo</w>", "of</w>", "the</w>", "cat</w>", ".</w>"]
    assert ids == [tok.vocab.index(w) for w in words]
    assert tok.encode("dog&#39;s") == [tok.vocab.index(t) for t in ("dog</w>", "'", "s</w>")]
    assert tok.decode(ids) == "a photo of the cat ."


def test_packing_sot_eot_context(tok):
    out = tok(["a cat", "the dog"])
    assert out.shape == (2, 77) and out.dtype == torch.long
    assert out[0, :4].tolist() == [98, tok.vocab.index("a</w>"), tok.vocab.index("cat</w>"), 99]
    assert out[0, 4:].eq(0).all()
    assert (tok.sot_token_id, tok.eot_token_id) == (98, 99)
    assert tok.decode(out[1].tolist()) == "the dog"
    with pytest.raises(ValueError, match="context length 77"):
        tok(["cat " * 80])
    cut = tok(["cat " * 80], truncate=True)
    assert cut[0, -1] == 99 and cut[0, 0] == 98


def test_unknown_characters_fail_clearly(tok):
    with pytest.raises(KeyError, match="not in the vocabulary"):
        tok.encode("cat & dog")


def test_full_byte_vocabulary_round_trips_any_text():
    tok = BPETokenizer.from_merges([("c", "a"), ("ca", "t</w>")])
    assert tok.vocab_size == 512 + 2 + 2
    assert tok.encode("cat") == [512 + 1]
    for text in ("héllo wörld 東京", "naïve café", "x1 y2"):
        assert tok.decode(tok.encode(text)) == " ".join(pre_tokenize(text))


def test_openai_merges_file_and_truncation(tmp_path):
    _, merges = tiny_bpe(100)
    body = "#version: 0.2 (header line)\n" + "".join(f"{a} {b}\n" for a, b in merges)
    path = tmp_path / "bpe.txt.gz"
    path.write_bytes(gzip.compress(body.encode()))
    full = BPETokenizer.from_openai_file(path, num_merges=None)
    assert full.vocab_size == 512 + len(merges) + 2
    assert full.eot_token_id == full.vocab_size - 1
    cat_merge = merges.index(("ca", "t</w>"))
    assert full.encode("cat") == [512 + cat_merge]
    few = BPETokenizer.from_openai_file(path, num_merges=cat_merge)  # without the cat merge
    assert few.encode("cat") == [few.vocab.index("ca"), few.vocab.index("t</w>")]
    with pytest.raises(ValueError, match="expected >="):
        BPETokenizer.from_openai_file(path, num_merges=len(merges) + 1)


def test_hf_files_and_dict_round_trip(tmp_path, tok):
    write_hf_bpe(tmp_path)
    from_files = BPETokenizer.from_hf_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    texts = ["a photo of the bird", "clean origami sky!", "the cats"]
    assert torch.equal(from_files(texts), tok(texts))
    rebuilt = tokenizer_from_dict(tok.to_dict())
    assert isinstance(rebuilt, BPETokenizer) and torch.equal(rebuilt(texts), tok(texts))
    word = WordTokenizer(["cat", "dog"], context_length=8)
    assert torch.equal(tokenizer_from_dict(word.to_dict())(["dog cat"]), word(["dog cat"]))
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenizer_from_dict({"kind": "sentencepiece"})


def test_ids_match_transformers_clip_tokenizer(tok):
    from transformers import CLIPTokenizer

    vocab, merges = tiny_bpe(100)
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    ref = CLIPTokenizer(
        vocab={t: i for i, t in enumerate(vocab)},
        merges=merges,
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        **specials,
    )
    for text in ("a photo of the cat.", "Clean  ORIGAMI dog's sky", "bird, bird! 12"):
        expected = ref(text)["input_ids"]
        assert [tok.sot_token_id, *tok.encode(text), tok.eot_token_id] == expected, text
