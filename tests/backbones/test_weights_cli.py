"""``ssrseg weights list|fetch|convert`` through ssrseg.cli.main."""

from __future__ import annotations

import pytest
import torch
from backbone_fakes import tiny_hf_clip, tiny_hf_dino, write_hf_bpe

from ssrseg.backbones.bpe import BPETokenizer
from ssrseg.backbones.weights import load_clip, load_dino
from ssrseg.cli import main


def test_help_texts(capsys):
    with pytest.raises(SystemExit) as code:
        main(["weights", "--help"])
    assert code.value.code == 0
    out = capsys.readouterr().out
    for word in ("list", "fetch", "convert", "HF_HUB_OFFLINE", "SSRSEG_CACHE"):
        assert word in out
    with pytest.raises(SystemExit):
        main(["weights", "convert", "--help"])
    assert "--trust-torchscript" in capsys.readouterr().out


def test_list_shows_names_files_and_presence(capsys, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "dino_deitsmall16_pretrain.pth").write_bytes(b"x")
    assert main(["weights", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_name = {ln.split()[0]: ln for ln in lines if ln and not ln.startswith(" ")}
    assert set(by_name) >= {"clip_vit_b16.openai", "dino_vit_s16", "toy_clip", "toy_dino"}
    assert " present " in by_name["dino_vit_s16"]
    assert (
        " missing " in by_name["clip_vit_b16.openai"]
        and "ViT-B-16.pt" in by_name["clip_vit_b16.openai"]
    )
    assert any("bpe_simple_vocab_16e6.txt.gz" in ln for ln in lines)


def test_fetch_offline_fails_with_guidance(capsys):
    assert main(["weights", "fetch", "clip_vit_b16.openai"]) == 2
    err = capsys.readouterr().err
    assert "ViT-B-16.pt" in err and "put it at" in err


def test_convert_clip_and_dino_to_native(tmp_path, capsys):
    torch.manual_seed(5)
    hf = tiny_hf_clip()
    hf.save_pretrained(tmp_path / "hf")
    write_hf_bpe(tmp_path / "hf")  # the vocabulary that goes with the weights
    assert main(["weights", "convert", str(tmp_path / "hf"), str(tmp_path / "c.safetensors")]) == 0
    assert "(clip)" in capsys.readouterr().out
    native, tok = load_clip(str(tmp_path / "c.safetensors"))
    direct, tok_direct = load_clip(str(tmp_path / "hf"))
    assert isinstance(tok, BPETokenizer)
    texts = ["a photo of the cat.", "clean origami bird"]
    assert torch.equal(tok(texts), tok_direct(texts))
    with torch.no_grad():
        assert torch.equal(native.encode_text(tok(texts)), direct.encode_text(tok(texts)))
        x = torch.rand(1, 3, 32, 32)
        assert torch.equal(native.encode_image(x), direct.encode_image(x))

    tiny_hf_dino().save_pretrained(tmp_path / "dino")
    assert (
        main(["weights", "convert", str(tmp_path / "dino"), str(tmp_path / "d.safetensors")]) == 0
    )
    assert load_dino(str(tmp_path / "d.safetensors")).cfg == load_dino(str(tmp_path / "dino")).cfg


def test_convert_reports_errors(capsys, tmp_path):
    assert main(["weights", "convert", "nope_name", str(tmp_path / "o.safetensors")]) == 2
    assert "neither a registry name" in capsys.readouterr().err
