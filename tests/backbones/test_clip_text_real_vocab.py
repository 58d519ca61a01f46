"""Text embeddings through the real OpenAI vocabulary: our tokenizer + text tower equal
transformers' CLIPModel fed with OpenAI's token ids, for every preset prompt, on random weights
of a small model with CLIP's vocabulary size and context length."""

from __future__ import annotations

import shutil

import pytest
import torch
from backbone_fakes import hf_to_openai
from bpe_corpus import preset_prompts, varied_strings
from openai_reference import VOCAB_GZ, package_file, reference_tokenizer, write_hf_files
from safetensors import safe_open

from ssrseg.backbones.bpe import BPETokenizer
from ssrseg.backbones.weights import load_clip
from ssrseg.cli import main


@pytest.fixture(scope="module")
def hf_clip():
    """transformers CLIPModel: text vocabulary 49408, context 77, SOT 49406, EOT 49407."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(7)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            hidden_act="quick_gelu",
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            hidden_act="quick_gelu",
        ),
        projection_dim=24,
        attn_implementation="eager",
    )
    model = CLIPModel(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


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
