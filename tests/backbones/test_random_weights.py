"""``ssrseg weights random``: random weights in the exact file layout of a registry name.

The layouts are checked against independent references: transformers' CLIPModel / ViTModel
converted to OpenAI / official-DINO key names by the test helpers (written from the published
key lists), with matching shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from backbone_fakes import hf_to_openai, hf_vit_to_dino_official, tiny_hf_dino

from ssrseg.backbones import random_weights
from ssrseg.backbones.random_weights import (
    ClipShape,
    VitShape,
    dino_official_state,
    openai_clip_state,
    synthetic_bpe,
    write_random_weights,
)
from ssrseg.backbones.weights import load_clip, load_dino
from ssrseg.cli import main


def _hf_clip_like(shape: ClipShape):  # -> transformers.CLIPModel
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=shape.vocab_size,
            hidden_size=shape.text_width,
            intermediate_size=4 * shape.text_width,
            num_hidden_layers=shape.text_layers,
            num_attention_heads=max(1, shape.text_width // 64),
            max_position_embeddings=shape.context_length,
        ),
        vision_config=dict(
            hidden_size=shape.width,
            intermediate_size=4 * shape.width,
            num_hidden_layers=shape.layers,
            num_attention_heads=max(1, shape.width // 64),
            image_size=shape.image_size,
            patch_size=shape.patch_size,
        ),
        projection_dim=shape.embed_dim,
    )
    return CLIPModel(cfg)


def _shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def test_openai_clip_layout_matches_the_reference() -> None:
    shape = ClipShape(width=64, layers=3, embed_dim=32, text_width=64, text_layers=2)
    ours = openai_clip_state(shape, seed=1)
    reference = hf_to_openai(_hf_clip_like(shape).state_dict())
    assert _shapes(ours) == _shapes(reference)
    assert all(v.dtype == torch.float16 for v in ours.values())  # as OpenAI's file
    assert not torch.equal(ours["visual.proj"], openai_clip_state(shape, seed=2)["visual.proj"])


def test_dino_layout_matches_the_reference() -> None:
    shape = VitShape(width=64, layers=2, image_size=32, patch_size=8)
    hf = tiny_hf_dino()  # transformers ViTModel: width 64, 2 layers, MLP 256, 32 px, patch 8
    reference = hf_vit_to_dino_official(hf.state_dict())
    assert _shapes(dino_official_state(shape)) == _shapes(reference)


def test_tiny_files_load_with_the_real_vocabulary_and_real_block_count(tmp_path: Path) -> None:
    files = write_random_weights("clip_vit_b16.openai", tmp_path / "ViT-B-16.pt", size="tiny")
    assert files[0] == tmp_path / "ViT-B-16.pt"
    clip, tok = load_clip(str(files[0]))
    assert clip.cfg.vision.layers == 12 and clip.cfg.vision.patch_size == 16
    assert clip.cfg.text.vocab_size == 49408 and tok.vocab_size == 49408
    assert (tok.sot_token_id, tok.eot_token_id) == (49406, 49407)
    emb = clip.encode_text(tok(["a clean origami aeroplane."]))
    assert emb.shape == (1, 512) and bool(torch.isfinite(emb).all())  # the real embedding
    dino_path = write_random_weights("dino_vit_s16", tmp_path / "dino.pth", size="tiny")[0]
    dino = load_dino(str(dino_path))
    assert dino.cfg.patch_size == 16 and dino.cfg.pretrained_grid == 14


def test_without_a_real_vocabulary_a_synthetic_one_of_the_real_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(random_weights, "find_openai_vocab", lambda extra=(): None)
    files = write_random_weights("clip_vit_b16.openai", tmp_path / "c.pt", size="tiny")
    assert [f.name for f in files] == ["c.pt", "vocab.json", "merges.txt"]
    _, tok = load_clip(str(files[0]))
    assert tok.vocab_size == 49408 and tok.eot_token_id == 49407
    ids = tok(["any text at all: 3 ü €!"])  # byte-level base: every string tokenizes
    assert ids.shape == (1, 77)


def test_synthetic_bpe_sizes() -> None:
    vocab, merges = synthetic_bpe(49408)
    assert len(vocab) == 49408 and vocab[-2:] == ["<|startoftext|>", "<|endoftext|>"]
    assert len(merges) == 49408 - 2 - 512
    small, _ = synthetic_bpe(100)
    assert len(small) == 100
    with pytest.raises(ValueError, match="cannot hold"):
        synthetic_bpe(70)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "toy.safetensors"
    assert main(["weights", "random", "toy_dino", "--out", str(out), "--seed", "3"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert load_dino(str(out)).cfg.width == 128
    assert main(["weights", "random", "vit_h14", "--out", str(out)]) == 2
    assert "no random-weights recipe for 'vit_h14'" in capsys.readouterr().err
