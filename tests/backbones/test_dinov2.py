"""DINOv2 on our ViT equals transformers' Dinov2Model / Dinov2WithRegistersModel.

Random tiny transformers models are the reference; their weights reach our loader as real
files would: a transformers folder (safetensors + config.json, classic names), transformers 5's
in-memory names, the official ``*_pretrain.pth`` names and timm's names (written here from the
published key lists, independently of ssrseg's converter). Every layer's tokens (CLS, registers,
patches), every layer's patch attention and the final normed tokens are compared, at sizes that
need position interpolation (non-square included).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from backbone_fakes import cls_and_patch_tokens, hf_embeddings_to_official

from ssrseg.backbones.convert import convert_vit, detect_layout
from ssrseg.backbones.dinov2 import (
    DINOV2_NAMES,
    DINOV2_SIZES,
    dinov2_config,
    write_random_dinov2,
)
from ssrseg.backbones.native import save_native
from ssrseg.backbones.vit import VisionTransformer
from ssrseg.backbones.weights import REGISTRY, WeightsError, load_dino
from ssrseg.cli import main

ATOL = 2e-5
PATCH = 7
# (height, width): the pretrained 28 x 28 (no resize), then non-square grids that need it
SIZES = [(28, 28), (35, 49), (56, 21)]


def tiny_hf_dinov2(registers: int, seed: int):  # -> Dinov2Model | Dinov2WithRegistersModel
    """Width 48, 2 layers, 4 heads, patch 7, 28 px (4 x 4 pretrained grid)."""
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    torch.manual_seed(seed)
    kw = dict(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=28,
        patch_size=PATCH,
        layerscale_value=1.0,
        attn_implementation="eager",
    )
    model = (
        Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **kw))
        if registers
        else Dinov2Model(Dinov2Config(**kw))
    ).eval()
    with torch.no_grad():  # non-trivial LayerScales, norms, biases and tokens: mistakes show
        for name, p in model.named_parameters():
            if "lambda" in name:
                p.copy_(0.5 + torch.rand_like(p))
            elif name.endswith("bias") or "norm" in name or "token" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif "position" in name:
                p.copy_(torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_plain():
    return tiny_hf_dinov2(0, seed=11)


@pytest.fixture(scope="module")
def hf_reg():
    return tiny_hf_dinov2(4, seed=12)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)


def _check(ours: VisionTransformer, hf, height: int, width: int) -> None:
    p = ours.cfg.num_prefix
    x = torch.randn(2, 3, height, width)
    with torch.no_grad():
        out = ours.forward_intermediates(x, attn_layers=range(ours.cfg.layers))
        ref = hf(pixel_values=x, output_hidden_states=True, output_attentions=True)
    assert out.grid == (height // PATCH, width // PATCH) and out.prefix == p
    assert len(out.tokens) == len(ref.hidden_states) - 1  # HF index 0 = embeddings
    for i, tokens in enumerate(out.tokens):
        _close(tokens, ref.hidden_states[i + 1])  # CLS, registers and patches
        _close(out.attentions[i], ref.attentions[i].mean(dim=1)[:, p:, p:])
    final = ours.head(out.last)
    _close(final, ref.last_hidden_state)
    _close(final[:, 0], ref.pooler_output)  # CLS after the final norm
    _close(ours(x), ref.last_hidden_state[:, p:])  # patch tokens only


# ------------------------------------------------------------------ layouts written by hand
def hf_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers Dinov2 state dict (classic names) -> facebookresearch/dinov2 names."""
    out = hf_embeddings_to_official(sd)
    out["mask_token"] = sd["embeddings.mask_token"]
    if "embeddings.register_tokens" in sd:
        out["register_tokens"] = sd["embeddings.register_tokens"]
    n = len({k.split(".")[2] for k in sd if k.startswith("encoder.layer.")})
    for i in range(n):
        h, b = f"encoder.layer.{i}.", f"blocks.{i}."
        a = h + "attention.attention."
        for t in ("weight", "bias"):
            out[f"{b}attn.qkv.{t}"] = torch.cat(
                [sd[f"{a}{x}.{t}"] for x in ("query", "key", "value")]
            )
            out[f"{b}attn.proj.{t}"] = sd[f"{h}attention.output.dense.{t}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{b}{name}.{t}"] = sd[f"{h}{name}.{t}"]
        out[b + "ls1.gamma"] = sd[h + "layer_scale1.lambda1"]
        out[b + "ls2.gamma"] = sd[h + "layer_scale2.lambda1"]
    return out


def official_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names -> timm's (``vit_*_patch14[_reg4]_dinov2``): no mask token; with
    registers ``reg_token`` and no_embed_class (class position folded into ``cls_token``)."""
    out = {k: v for k, v in sd.items() if k != "mask_token"}
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
        out["pos_embed"] = out["pos_embed"][:, 1:]
    return out


def _classic_state(hf, tmp_path) -> dict[str, torch.Tensor]:
    """The state dict as transformers writes it to disk (classic names)."""
    from safetensors.torch import load_file

    hf.save_pretrained(tmp_path / "saved")
    return load_file(str(tmp_path / "saved" / "model.safetensors"))


# ----------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("registers", [0, 4])
def test_transformers_folder_matches_reference(registers, hf_plain, hf_reg, tmp_path):
    hf = hf_reg if registers else hf_plain
    hf.save_pretrained(tmp_path / "hf")
    ours = load_dino(str(tmp_path / "hf"))
    cfg = ours.cfg
    assert (cfg.heads, cfg.patch_size, cfg.image_size, cfg.num_registers) == (4, 7, 28, registers)
    assert cfg.layer_scale and cfg.pos_antialias == bool(registers) and cfg.act == "gelu"
    assert cfg.ln_eps == 1e-6 and not cfg.ln_pre and cfg.output_dim is None
    for size in SIZES:
        _check(ours, hf, *size)


def test_transformers5_in_memory_names_match_reference(hf_reg, tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in hf_reg.state_dict().items()}
    assert any(".attention.q_proj." in k for k in sd)  # the new naming
    assert detect_layout(sd) == "hf_dinov2"
    save_file(sd, str(tmp_path / "dinov2_reg.safetensors"))
    _check(load_dino(str(tmp_path / "dinov2_reg.safetensors"), heads=4), hf_reg, 35, 49)


@pytest.mark.parametrize("registers", [0, 4])
def test_official_and_timm_layouts_match_reference(registers, hf_plain, hf_reg, tmp_path):
    hf = hf_reg if registers else hf_plain
    official = hf_to_official(_classic_state(hf, tmp_path))
    assert detect_layout(official) == "timm"
    torch.save(official, tmp_path / "dinov2_tiny_pretrain.pth")
    ours = load_dino(str(tmp_path / "dinov2_tiny_pretrain.pth"), heads=4)
    assert ours.cfg.num_registers == registers and ours.cfg.mean == (0.485, 0.456, 0.406)
    _check(ours, hf, 35, 49)
    timm = official_to_timm(official)
    torch.save(timm, tmp_path / "timm.pth")
    from_timm = load_dino(str(tmp_path / "timm.pth"), heads=4)
    _check(from_timm, hf, 56, 21)


def test_native_round_trip_keeps_registers_and_layer_scale(hf_reg, tmp_path):
    hf_reg.save_pretrained(tmp_path / "hf")
    ours = load_dino(str(tmp_path / "hf"))
    save_native(tmp_path / "native.safetensors", ours, "dino", ours.cfg)
    again = load_dino(str(tmp_path / "native.safetensors"))
    assert again.cfg == ours.cfg
    _check(again, hf_reg, 35, 49)


def test_antialias_changes_positions_so_the_flag_matters(hf_reg, tmp_path):
    """Guards the test itself: the register model's antialiased resize is not the plain one."""
    hf_reg.save_pretrained(tmp_path / "hf")
    ours = load_dino(str(tmp_path / "hf"))
    plain = VisionTransformer(dataclasses.replace(ours.cfg, pos_antialias=False))
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 35, 49)
    with torch.no_grad():
        assert (ours(x) - plain(x)).abs().max() > 1e-3


# ----------------------------------------------------------------------------- real shapes
@pytest.mark.parametrize("size", sorted(DINOV2_SIZES))
@pytest.mark.parametrize("registers", [False, True])
def test_real_sizes_match_transformers_shapes(size, registers):
    """Our ViT-S/B/L(/reg) configs have exactly the parameters of transformers' models of the
    published shapes (built on the meta device: no memory, no time)."""
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    width, layers, heads = DINOV2_SIZES[size]
    kw = dict(
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=518,
        patch_size=14,
    )
    with torch.device("meta"):
        hf = (
            Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=4, **kw))
            if registers
            else Dinov2Model(Dinov2Config(**kw))
        )
        ours = VisionTransformer(dinov2_config(size, registers))
    sd, cfg = convert_vit(dict(hf.state_dict()), "meta")
    assert cfg == dinov2_config(size, registers)
    own = ours.state_dict()
    assert set(sd) == set(own)
    assert all(sd[k].shape == own[k].shape for k in own)


# ------------------------------------------------------------------------------ registry
def test_registry_names_resolve_official_files():
    names = [f"dinov2_vit{s}14{r}" for s in "sbl" for r in ("", "_reg")]
    for name in names:
        entry = REGISTRY[name]
        assert entry.kind == "dino" and entry.asset is not None
        stem = name.replace("_reg", "_reg4")
        assert entry.asset.filename == f"{stem}_pretrain.pth"
        assert entry.asset.url == (
            f"https://dl.fbaipublicfiles.com/dinov2/{name.removesuffix('_reg')}/{stem}_pretrain.pth"
        )


def test_offline_registry_name_fails_with_the_usual_guidance(tmp_path):
    with pytest.raises(WeightsError) as err:
        load_dino("dinov2_vits14_reg")
    msg = str(err.value)
    assert "dinov2_vits14_reg4_pretrain.pth" in msg and "put it at" in msg
    assert "dl.fbaipublicfiles.com/dinov2/dinov2_vits14/" in msg and str(tmp_path) in msg


def test_cli_lists_and_converts_dinov2(hf_reg, tmp_path, capsys):
    assert main(["weights", "list"]) == 0
    listed = capsys.readouterr().out
    for name in ("dinov2_vits14", "dinov2_vitb14_reg", "dinov2_vitl14"):
        assert name in listed
    torch.save(hf_to_official(_classic_state(hf_reg, tmp_path)), tmp_path / "o.pth")
    assert main(["weights", "convert", str(tmp_path / "o.pth"), str(tmp_path / "n.safetensors"),
                 "--heads", "4"]) == 0  # fmt: skip
    _check(load_dino(str(tmp_path / "n.safetensors")), hf_reg, 28, 35)


# -------------------------------------------------------------------------------- errors
def test_wrong_shape_missing_and_unknown_keys_are_refused(hf_reg, tmp_path):
    official = hf_to_official(_classic_state(hf_reg, tmp_path))
    bad = dict(official, **{"blocks.1.ls2.gamma": torch.ones(47)})
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match=r"blocks\.1\.ls2\.gamma: file has \(47,\), model"):
        load_dino(str(tmp_path / "shape.pth"), heads=4)
    missing = {k: v for k, v in official.items() if k != "blocks.1.ls1.gamma"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"missing key 'blocks\.1\.ls1\.gamma'"):
        load_dino(str(tmp_path / "missing.pth"), heads=4)
    extra = dict(official, **{"blocks.0.ls3.gamma": torch.ones(48)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"unexpected keys \['blocks\.0\.ls3\.gamma'\]"):
        load_dino(str(tmp_path / "extra.pth"), heads=4)
    reg = dict(official, register_tokens=torch.zeros(1, 4, 40))
    torch.save(reg, tmp_path / "reg.pth")
    with pytest.raises(WeightsError, match="register_tokens: file has"):
        load_dino(str(tmp_path / "reg.pth"), heads=4)


def test_swiglu_giant_and_unknown_names_are_refused(hf_plain, tmp_path):
    official = hf_to_official(_classic_state(hf_plain, tmp_path))
    glu = {
        k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"): v for k, v in official.items()
    }
    torch.save(glu, tmp_path / "g.pth")
    with pytest.raises(WeightsError, match="SwiGLU"):
        load_dino(str(tmp_path / "g.pth"), heads=4)
    with pytest.raises(WeightsError, match="dinov2_vits14_reg"):
        load_dino("dinov2_vits16")


def official_interpolation(pos: torch.Tensor, h: int, w: int, offset: float, antialias: bool):
    """facebookresearch/dinov2 ``interpolate_pos_encoding`` for an ``h x w`` patch grid:
    ``pos`` is ``1 x (1 + M*M) x D``; scale factor ``(grid + offset) / M`` when ``offset``."""
    m = int(math.sqrt(pos.shape[1] - 1))
    patch = pos[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    kwargs: dict = (
        {"scale_factor": ((h + offset) / m, (w + offset) / m)} if offset else {"size": (h, w)}
    )
    patch = F.interpolate(patch, mode="bicubic", antialias=antialias, **kwargs)
    assert patch.shape[-2:] == (h, w)
    return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)


@pytest.mark.parametrize("registers", [0, 4])
def test_official_offset_resize_is_available(registers, hf_plain, hf_reg, tmp_path):
    """pos_embed_resize="bicubic_offset" reproduces the official code: +0.1 scale factor without
    registers; the register models use the explicit size there, so nothing changes for them."""
    hf = hf_reg if registers else hf_plain
    hf.save_pretrained(tmp_path / "hf")
    ours = load_dino(str(tmp_path / "hf"))
    x = torch.randn(1, 3, 35, 49)
    with torch.no_grad():
        plain, _ = ours.embed(x)
        ours.pos_embed_resize = "bicubic_offset"
        offset, _ = ours.embed(x)
        tokens = cls_and_patch_tokens(ours, x)
        pos = official_interpolation(
            ours.pos_embed[None], 5, 7, 0.0 if registers else 0.1, bool(registers)
        )
        ref = tokens + pos
        if registers:
            ref = torch.cat([ref[:, :1], ours.register_tokens[None], ref[:, 1:]], dim=1)
    _close(offset, ref)
    if registers:
        assert torch.equal(offset, plain)
    else:
        assert (offset - plain).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(DINOV2_NAMES))
def test_random_official_layout_files_load(name, tmp_path):
    """Random weights in the official file layout (tiny width, real depth) load by the same
    path as Meta's files and give the registry name's shape."""
    size, registers = DINOV2_NAMES[name]
    (path,) = write_random_dinov2(name, tmp_path / f"{name}.pth", tiny=True, seed=3)
    ours = load_dino(str(path))
    expected = dataclasses.replace(dinov2_config(size, registers), width=64, heads=1)
    assert ours.cfg == expected
    with torch.no_grad():
        out = ours(torch.rand(1, 3, 28, 42))
    assert out.shape == (1, 6, 64) and bool(torch.isfinite(out).all())


def test_random_full_size_vits14_file_has_the_real_shape(tmp_path):
    (path,) = write_random_dinov2("dinov2_vits14_reg", tmp_path / "r.pth")
    official = torch.load(path, weights_only=True)
    assert official["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    assert official["register_tokens"].shape == (1, 4, 384)
    assert official["mask_token"].shape == (1, 384)
    assert load_dino(str(path)).cfg == dinov2_config("s", registers=True)
