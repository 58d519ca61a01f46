"""Native safetensors format: save_native -> load_clip / load_dino round trips."""

from __future__ import annotations

import json

import pytest
import torch
from backbone_fakes import tiny_clip_config, tiny_dino_config
from safetensors import safe_open

from ssrseg.backbones import weights
from ssrseg.backbones.clip import CLIP
from ssrseg.backbones.tokenizer import WordTokenizer
from ssrseg.backbones.vit import VisionTransformer
from ssrseg.backbones.weights import WeightsError, load_clip, load_dino, save_native


def _randomize(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)


def test_clip_round_trip_gives_identical_outputs(tmp_path):
    cfg = tiny_clip_config()
    words = [f"w{i}" for i in range(96)]  # ids 2..97, SOT 98, EOT 99 = vocab - 1
    tok = WordTokenizer(words, context_length=cfg.text.context_length)
    model = CLIP(cfg)
    _randomize(model)
    path = save_native(tmp_path / "clip.safetensors", model, "clip", cfg, tok, {"steps": 3})

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["extra"]) == {"steps": 3}
    assert json.loads(meta["tokenizer"])["words"] == words

    loaded, tok2 = load_clip(str(path))
    assert loaded.cfg == cfg
    assert isinstance(tok2, WordTokenizer) and tok2.words == tok.words
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    images = torch.rand(2, 3, 32, 48)
    ids = tok(["w1 w2", "w3"])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), loaded.encode_image(images))
        assert torch.equal(model.encode_text(ids), loaded.encode_text(tok2(["w1 w2", "w3"])))


def test_dino_round_trip(tmp_path):
    cfg = tiny_dino_config()
    model = VisionTransformer(cfg)
    _randomize(model)
    path = save_native(tmp_path / "d.safetensors", model, "dino", cfg, None, {})
    loaded = load_dino(str(path))
    assert loaded.cfg == cfg
    x = torch.rand(1, 3, 40, 24)
    model.eval()
    with torch.no_grad():
        a = model.forward_intermediates(x, attn_layers=(-1,))
        b = loaded.forward_intermediates(x, attn_layers=(-1,))
    assert torch.equal(a.last, b.last) and torch.equal(a.attentions[1], b.attentions[1])


def test_kind_mismatch_and_bad_arguments(tmp_path):
    dcfg = tiny_dino_config()
    path = save_native(tmp_path / "d.safetensors", VisionTransformer(dcfg), "dino", dcfg)
    with pytest.raises(WeightsError, match="holds a dino backbone, not CLIP"):
        load_clip(str(path))
    with pytest.raises(TypeError, match="CLIPConfig"):
        save_native(tmp_path / "x.safetensors", VisionTransformer(dcfg), "clip", dcfg)
    with pytest.raises(ValueError, match="kind"):
        save_native(tmp_path / "x.safetensors", VisionTransformer(dcfg), "vit", dcfg)


def test_toy_entries_point_at_package_data_and_explain_when_missing(monkeypatch, tmp_path):
    assert weights.package_path(weights.REGISTRY["toy_clip"]).parts[-3:] == (
        "assets",
        "toy",
        "clip.safetensors",
    )
    assert weights.package_path(weights.REGISTRY["toy_dino"]).name == "dino.safetensors"
    monkeypatch.setattr(weights, "ASSETS_DIR", tmp_path / "nothing")
    with pytest.raises(WeightsError, match="ssrseg toy train-clip"):
        load_clip("toy_clip")
    with pytest.raises(WeightsError, match="ssrseg toy train-dino"):
        load_dino("toy_dino")


def test_unknown_name_lists_available_names():
    with pytest.raises(WeightsError) as err:
        load_clip("clip_vit_l14")
    for name in ("clip_vit_b16.openai", "dino_vit_s16", "toy_clip", "toy_dino"):
        assert name in str(err.value)


def _rewrite_metadata(path, **changes: str | None) -> None:
    """Change a safetensors file's header metadata (None deletes a key), keeping its tensors."""
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    save_file(load_file(str(path)), str(path), metadata=meta)


def _tiny_bpe_clip(tmp_path, name: str = "clip.safetensors"):
    from backbone_fakes import tiny_bpe

    from ssrseg.backbones.bpe import BPETokenizer

    cfg = tiny_clip_config()
    vocab, merges = tiny_bpe(100)
    tok = BPETokenizer(vocab, merges, context_length=cfg.text.context_length)
    extra = {"converted_from": "clip_vit_b16.openai"}
    return save_native(tmp_path / name, CLIP(cfg), "clip", cfg, tok, extra), tok


def test_native_files_carry_format_version_2(tmp_path):
    path, tok = _tiny_bpe_clip(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format_version"] == "2"
    _, loaded = load_clip(str(path))
    assert loaded(["a cat"]).tolist() == tok(["a cat"]).tolist()


def test_format_1_clip_with_bpe_is_refused_with_the_reconvert_command(tmp_path):
    path, _ = _tiny_bpe_clip(tmp_path)
    _rewrite_metadata(path, format_version="1")
    with pytest.raises(WeightsError) as err:
        load_clip(str(path))
    msg = str(err.value)
    assert str(path) in msg and "native format 1" in msg and "byte order" in msg
    assert f"ssrseg weights convert clip_vit_b16.openai {path}" in msg
    with pytest.raises(WeightsError, match="ssrseg weights convert"):
        weights.load_clip_model(str(path))  # the model alone is refused as well
    # without provenance the command names a placeholder for the original weights
    _rewrite_metadata(path, extra="{}")
    with pytest.raises(WeightsError, match=f"ssrseg weights convert ORIGINAL_WEIGHTS {path}"):
        load_clip(str(path))


def test_format_1_without_bpe_still_loads(tmp_path):
    cfg = tiny_clip_config()
    tok = WordTokenizer([f"w{i}" for i in range(96)], context_length=cfg.text.context_length)
    clip_path = save_native(tmp_path / "toy.safetensors", CLIP(cfg), "clip", cfg, tok)
    dcfg = tiny_dino_config()
    dino_path = save_native(tmp_path / "d.safetensors", VisionTransformer(dcfg), "dino", dcfg)
    for path in (clip_path, dino_path):
        _rewrite_metadata(path, format_version="1")
    _, tok2 = load_clip(str(clip_path))
    assert isinstance(tok2, WordTokenizer) and tok2.words == tok.words
    assert load_dino(str(dino_path)).cfg == dcfg


@pytest.mark.parametrize("version", [None, "0", "3"])
def test_missing_or_unknown_version_is_refused(tmp_path, version):
    path, _ = _tiny_bpe_clip(tmp_path)
    _rewrite_metadata(path, format_version=version)
    with pytest.raises(WeightsError, match=r"version .* is not supported.*re-convert") as err:
        load_clip(str(path))
    assert f"ssrseg weights convert clip_vit_b16.openai {path}" in str(err.value)
