"""Text embeddings through the real OpenAI vocabulary: our tokenizer + text tower equal
transformers' CLIPModel fed with OpenAI's token ids, for every preset prompt, on random weights
of a small model with CLIP's vocabulary size and context length."""

from __future__ import annotations

import shutil

import pytest
import torch
from backbone_fakes import hf_to_openai, tiny_hf_clip
from bpe_corpus import preset_prompts, varied_strings
from openai_reference import VOCAB_GZ, package_file, reference_tokenizer, write_hf_files
from safetensors import safe_open

from ssrseg.backbones.bpe import BPETokenizer
from ssrseg.backbones.weights import load_clip
from ssrseg.cli import main


@pytest.fixture(scope="module")
def hf_clip():
    """transformers CLIPModel: text vocabulary 49408, context 77, SOT 49406, EOT 49407 (pad 1,
    transformers' default), one vision block (the vision tower is not under test)."""
    torch.manual_seed(7)
    return tiny_hf_clip(
        vocab_size=49408, context_length=77, sot=49406, eot=49407, pad=1, vision_layers=1
    )


def _texts() -> list[str]:
    prompts = [t for texts in preset_prompts().values() for t in texts]
    return [*prompts, *(t for t in varied_strings(40, seed=2)[-40:] if t.strip())]


def _reference_embeddings(hf, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = reference_tokenizer()(texts)
    with torch.no_grad():
        pooled = hf.text_model(input_ids=ids).pooler_output
        return ids, hf.text_projection(pooled)


def test_text_embeddings_match_transformers_through_both_vocabulary_files(hf_clip, tmp_path):
    texts = _texts()
    ref_ids, ref_emb = _reference_embeddings(hf_clip, texts)

    hub = tmp_path / "hub"  # transformers folder + vocab.json / merges.txt beside
    hf_clip.save_pretrained(hub)
    write_hf_files(hub)
    oa = tmp_path / "openai"  # OpenAI-layout state dict + OpenAI's .txt.gz beside
    oa.mkdir()
    torch.save(hf_to_openai(hf_clip.state_dict()), oa / "clip.pt")
    shutil.copy(package_file(VOCAB_GZ), oa / VOCAB_GZ)

    for spec, heads in ((str(hub), {}), (str(oa / "clip.pt"), dict(vision_heads=4, text_heads=2))):
        model, tok = load_clip(spec, **heads)
        assert isinstance(tok, BPETokenizer)
        ids = tok(texts, truncate=True)
        assert torch.equal(ids, ref_ids), spec
        with torch.no_grad():
            emb = model.encode_text(ids)
        torch.testing.assert_close(emb, ref_emb, atol=2e-5, rtol=1e-4)


def test_convert_stores_the_openai_vocabulary(hf_clip, tmp_path):
    """`ssrseg weights convert` on an OpenAI-layout file with the .txt.gz beside it writes a
    format-2 native file whose tokenizer gives OpenAI's ids."""
    src = tmp_path / "src"
    src.mkdir()
    torch.save(hf_to_openai(hf_clip.state_dict()), src / "clip.pt")
    shutil.copy(package_file(VOCAB_GZ), src / VOCAB_GZ)
    dst = tmp_path / "clip.safetensors"
    args = ["weights", "convert", str(src / "clip.pt"), str(dst), "--heads", "4"]
    assert main([*args, "--text-heads", "2"]) == 0
    with safe_open(str(dst), framework="pt") as f:
        assert f.metadata()["format_version"] == "2"
    texts = _texts()
    ref_ids, ref_emb = _reference_embeddings(hf_clip, texts)
    model, tok = load_clip(str(dst))
    assert torch.equal(tok(texts, truncate=True), ref_ids)
    assert tok(["a photo of a cat."])[0, :8].tolist() == [
        49406, 320, 1125, 539, 320, 2368, 269, 49407,
    ]  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ref_ids), ref_emb, atol=2e-5, rtol=1e-4)
