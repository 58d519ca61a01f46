"""Weight resolution and loading failures: clear, immediate, naming the file and the problem."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import ClassVar

import pytest
import torch
from backbone_fakes import hf_to_openai, tiny_hf_clip

from ssrseg.backbones import weights
from ssrseg.backbones.weights import WeightsError, load_clip, load_clip_model, load_dino


@pytest.fixture(scope="module")
def openai_sd():
    torch.manual_seed(4)
    return hf_to_openai(tiny_hf_clip().state_dict())


def test_truncated_files_are_reported(openai_sd, tmp_path):
    torch.save(openai_sd, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"cut\.pt: cannot read"):
        load_clip_model(str(tmp_path / "cut.pt"), vision_heads=4, text_heads=2)

    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in openai_sd.items()}, str(tmp_path / "full.st"))
    blob = (tmp_path / "full.st").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) - 100])
    with pytest.raises(WeightsError, match=r"cut\.safetensors: not a readable safetensors"):
        load_clip_model(str(tmp_path / "cut.safetensors"), vision_heads=4, text_heads=2)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match="empty or truncated"):
        load_dino(str(tmp_path / "empty.pth"))


def test_wrong_shape_names_key_and_both_shapes(openai_sd, tmp_path):
    from ssrseg.backbones.clip import CLIP
    from ssrseg.backbones.convert import convert_clip
    from ssrseg.backbones.native import load_state_strict

    state, cfg = convert_clip(openai_sd, "x", vision_heads=4, text_heads=2)
    state["visual.blocks.1.mlp.fc1.bias"] = torch.zeros(7)
    with pytest.raises(WeightsError) as err:
        load_state_strict(CLIP(cfg), state, "model.pt")
    msg = str(err.value)
    assert "model.pt" in msg and "visual.blocks.1.mlp.fc1.bias" in msg
    assert "file has (7,)" in msg and "model expects (256,)" in msg


def test_missing_and_unexpected_keys_are_refused(openai_sd, tmp_path):
    broken = dict(openai_sd)
    del broken["visual.ln_post.bias"]
    torch.save(broken, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match=r"missing key 'visual\.ln_post\.bias'"):
        load_clip_model(str(tmp_path / "missing.pt"), vision_heads=4, text_heads=2)
    extra = {**openai_sd, "visual.attnpool.weight": torch.zeros(3)}
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(WeightsError, match=r"unexpected keys \['visual\.attnpool\.weight'\]"):
        load_clip_model(str(tmp_path / "extra.pt"), vision_heads=4, text_heads=2)
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(WeightsError, match="unknown weight layout"):
        load_dino(str(tmp_path / "foreign.pt"))


def test_pickles_with_code_are_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    with (tmp_path / "evil.pth").open("wb") as f:
        pickle.dump({"x": Evil()}, f, protocol=2)
    with pytest.raises(WeightsError, match=r"evil\.pth: refused to load"):
        load_dino(str(tmp_path / "evil.pth"))


def test_unknown_names(tmp_path):
    with pytest.raises(WeightsError, match=r"known names: clip_vit_b16\.openai, dino_vit_s16"):
        weights.fetch("vit_l14")
    with pytest.raises(WeightsError, match="neither a registry name"):
        load_dino(str(tmp_path / "nope.pth"))


def test_offline_fails_at_once_naming_file_source_and_destination(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("no network access may be attempted offline")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(WeightsError) as err:
        load_clip("clip_vit_b16.openai")
    msg = str(err.value)
    assert "ViT-B-16.pt" in msg and "offline" in msg
    assert "https://openaipublic.azureedge.net/clip/models/5806e77c" in msg
    assert str(tmp_path / "cache" / "ViT-B-16.pt") in msg
    with pytest.raises(WeightsError, match=r"dino_deitsmall16_pretrain\.pth"):
        load_dino("dino_vit_s16")
    import huggingface_hub

    # a real HF cache on the test machine must not change the outcome
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE is set"):
        load_clip("openai/clip-vit-base-patch16")


def test_unreachable_host_fails_with_the_same_guidance(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []

    def unreachable(url, timeout):
        calls.append((url, timeout))
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(WeightsError) as err:
        weights.fetch("dino_vit_s16")
    assert "download failed" in str(err.value) and "Name or service" in str(err.value)
    assert str(tmp_path / "cache" / "dino_deitsmall16_pretrain.pth") in str(err.value)
    assert calls == [(weights.REGISTRY["dino_vit_s16"].asset.url, weights.DOWNLOAD_TIMEOUT_S)]
    assert not list((tmp_path / "cache").glob("*"))  # no partial file left behind


def test_download_checks_sha256(monkeypatch, tmp_path):
    import io

    monkeypatch.delenv("HF_HUB_OFFLINE")

    class Resp(io.BytesIO):
        headers: ClassVar[dict[str, str]] = {"Content-Length": "5"}

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Resp(b"hello"))
    good = weights.Asset("f.bin", "https://example.invalid/f.bin", sha256=None)
    assert weights.download(good, tmp_path / "f.bin").read_bytes() == b"hello"
    import hashlib

    ok = hashlib.sha256(b"hello").hexdigest()
    assert weights.ensure_asset(weights.Asset("f.bin", "u", ok), tmp_path / "f.bin")
    bad = weights.Asset("g.bin", "https://example.invalid/g.bin", sha256="0" * 64)
    with pytest.raises(WeightsError, match="does not match the published"):
        weights.download(bad, tmp_path / "g.bin")
    assert not (tmp_path / "g.bin").exists()
    with pytest.raises(WeightsError, match="corrupt or a different version"):
        weights.ensure_asset(weights.Asset("f.bin", "u", "1" * 64), tmp_path / "f.bin")


def test_cached_file_is_used_without_network(monkeypatch, tmp_path):
    from backbone_fakes import hf_vit_to_dino_official, tiny_hf_dino

    monkeypatch.setattr(urllib.request, "urlopen", None)
    sd = hf_vit_to_dino_official(tiny_hf_dino().state_dict())
    (tmp_path / "cache").mkdir()
    torch.save(sd, tmp_path / "cache" / "dino_deitsmall16_pretrain.pth")
    # DINO has no published sha256, so the cached file is taken as is
    model = load_dino("dino_vit_s16", heads=4)
    assert model.cfg.width == 64


def test_hub_id_unreachable_fails_with_guidance(monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    tried = []

    def unreachable(repo_id, filename, **kwargs):
        tried.append(filename)
        raise OSError("connection refused")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(WeightsError) as err:
        load_clip("someorg/clip-tiny")
    assert "https://huggingface.co/someorg/clip-tiny" in str(err.value)
    assert "connection refused" in str(err.value)
    assert tried == list(weights.HUB_WEIGHT_FILES)


def test_hub_id_found_in_cache_loads_offline(monkeypatch, tmp_path):
    import huggingface_hub
    from backbone_fakes import write_hf_bpe

    torch.manual_seed(7)
    snapshot = tmp_path / "snap"
    tiny_hf_clip().save_pretrained(snapshot)
    write_hf_bpe(snapshot)

    def cached(repo_id, filename, **kwargs):
        assert repo_id == "someorg/clip-tiny"
        path = snapshot / filename
        return str(path) if path.exists() else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cached)
    model, tok = load_clip("hf-hub:someorg/clip-tiny")
    assert model.cfg.vision.heads == 4 and tok.eot_token_id == 99


def test_unsupported_activation_is_refused(tmp_path):
    import json

    from backbone_fakes import tiny_hf_dino

    tiny_hf_dino().save_pretrained(tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    cfg["hidden_act"] = "gelu_new"
    (tmp_path / "d" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="activation 'gelu_new' is not supported"):
        load_dino(str(tmp_path / "d"))


def test_backbones_import_no_forbidden_libraries():
    import subprocess
    import sys

    code = (
        "import sys, ssrseg.backbones, ssrseg.backbones.weights, ssrseg.backbones.convert, "
        "ssrseg.backbones.torchscript, ssrseg.backbones.bpe, ssrseg.commands.weights\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torchvision', 'timm', 'open_clip', 'transformers'})\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
