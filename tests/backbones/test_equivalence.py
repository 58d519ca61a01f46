"""Our backbones equal transformers' CLIPModel / ViTModel on the same (random) weights.

transformers is only a reference implementation here (dev extra); the weights go through our
loader exactly as real files would: a transformers folder (safetensors + config.json), an
OpenAI-layout ``.pt`` state dict, a timm / official-DINO layout and a TorchScript archive.
"""

from __future__ import annotations

import collections

import pytest
import torch
from backbone_fakes import (
    hf_to_openai,
    hf_vit_to_dino_official,
    module_from_state,
    tiny_hf_clip,
    tiny_hf_dino,
)

from ssrseg.backbones.convert import detect_layout
from ssrseg.backbones.weights import WeightsError, load_clip_model, load_dino

ATOL = 2e-5


@pytest.fixture(scope="module")
def hf_clip():
    torch.manual_seed(1)
    return tiny_hf_clip()


@pytest.fixture(scope="module")
def hf_dino():
    torch.manual_seed(2)
    return tiny_hf_dino()


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


def _check_clip_vision(ours, hf, height: int, width: int) -> None:
    x = torch.randn(2, 3, height, width)
    with torch.no_grad():
        out = ours.visual.forward_intermediates(x, attn_layers=range(ours.cfg.vision.layers))
        ref = hf.vision_model(
            pixel_values=x,
            output_hidden_states=True,
            output_attentions=True,
            interpolate_pos_encoding=True,
        )
        hf_img = hf.visual_projection(ref.pooler_output)
        hf_patch = hf.visual_projection(
            hf.vision_model.post_layernorm(ref.last_hidden_state[:, 1:])
        )
        our_img = ours.encode_image(x)
        our_patch = ours.visual.head(out.last[:, 1:])
    assert out.grid == (height // 8, width // 8)
    assert len(out.tokens) == len(ref.hidden_states) - 1  # HF index 0 = embeddings
    for i, tokens in enumerate(out.tokens):
        _close(tokens, ref.hidden_states[i + 1])
        _close(out.attentions[i], ref.attentions[i].mean(dim=1)[:, 1:, 1:])
    _close(our_img, hf_img)
    _close(our_patch, hf_patch)


def _check_clip_text(ours, hf) -> None:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 98, (3, 16), generator=gen)
    ids[:, 0] = 98  # SOT
    for row, end in enumerate((5, 9, 15)):  # EOT at different places, padding after it
        ids[row, end] = 99
        ids[row, end + 1 :] = 0
    with torch.no_grad():
        ref = hf.text_model(input_ids=ids)
        _close(ours.encode_text(ids), hf.text_projection(ref.pooler_output))
    assert ours.logit_scale.item() == pytest.approx(hf.logit_scale.item())


@pytest.mark.slow
def test_transformers_clip_folder_matches_reference(hf_clip, tmp_path):
    hf_clip.save_pretrained(tmp_path / "hf")
    ours, raw = load_clip_model(str(tmp_path / "hf"))
    assert detect_layout(raw.tensors) == "hf_clip"
    # heads come from config.json (4 and 2), not from the width // 64 rule
    assert (ours.cfg.vision.heads, ours.cfg.text.heads) == (4, 2)
    assert ours.cfg.vision.patch_size == 8 and ours.cfg.vision.image_size == 32
    assert (ours.cfg.text.vocab_size, ours.cfg.text.context_length) == (100, 16)
    _check_clip_vision(ours, hf_clip, 32, 32)
    _check_clip_vision(ours, hf_clip, 48, 80)  # non-square: bicubic position interpolation
    _check_clip_text(ours, hf_clip)


def test_openai_layout_pt_matches_reference(hf_clip, tmp_path):
    sd = hf_to_openai(hf_clip.state_dict())
    assert detect_layout(sd) == "openai"
    torch.save(sd, tmp_path / "clip_openai.pt")
    ours, _ = load_clip_model(str(tmp_path / "clip_openai.pt"), vision_heads=4, text_heads=2)
    _check_clip_vision(ours, hf_clip, 40, 24)
    _check_clip_text(ours, hf_clip)


def test_openai_layout_needs_heads_when_width_is_not_a_multiple_of_64(hf_clip, tmp_path):
    torch.save(hf_to_openai(hf_clip.state_dict()), tmp_path / "c.pt")
    with pytest.raises(WeightsError, match="attention heads for width 32"):
        load_clip_model(str(tmp_path / "c.pt"), vision_heads=4)


def test_torchscript_archive_read_without_running_code(hf_clip, tmp_path):
    # OpenAI ships fp16 weights in its archive: the reader keeps them, the loader casts.
    sd = {k: v.half() for k, v in hf_to_openai(hf_clip.state_dict()).items()}
    module = module_from_state(sd)
    # Non-weight tensors OpenAI's archive also carries: metadata scalars and the causal mask.
    module.register_buffer("input_resolution", torch.tensor(32))
    module.transformer.resblocks.get_submodule("0").register_buffer(
        "attn_mask", torch.full((16, 16), float("-inf")).triu(1)
    )
    traced = torch.jit.trace(module, torch.ones(1, dtype=torch.half))
    traced.save(str(tmp_path / "ViT-tiny.pt"))

    from ssrseg.backbones.torchscript import read_torchscript

    tensors = read_torchscript(tmp_path / "ViT-tiny.pt")
    assert set(tensors) == {*sd, "input_resolution", "transformer.resblocks.0.attn_mask"}
    for k, v in sd.items():
        assert tensors[k].dtype == torch.float16 and torch.equal(tensors[k], v), k

    from_ts, _ = load_clip_model(str(tmp_path / "ViT-tiny.pt"), vision_heads=4, text_heads=2)
    torch.save({k: v.float() for k, v in sd.items()}, tmp_path / "half_as_float.pt")
    from_pt, _ = load_clip_model(str(tmp_path / "half_as_float.pt"), vision_heads=4, text_heads=2)
    for k, v in from_pt.state_dict().items():
        assert torch.equal(v, from_ts.state_dict()[k]), k


def test_transformers_vit_dino_matches_reference(hf_dino, tmp_path):
    hf_dino.save_pretrained(tmp_path / "dino")
    ours = load_dino(str(tmp_path / "dino"))
    assert ours.cfg.heads == 4 and ours.cfg.ln_eps == 1e-6 and ours.cfg.act == "gelu"
    _check_vit(ours, hf_dino, 32, 32)
    _check_vit(ours, hf_dino, 24, 56)


def test_transformers5_vit_names_match_reference(hf_dino, tmp_path):
    """In-memory transformers 5 names (layers.N.attention.q_proj ...) load too."""
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in hf_dino.state_dict().items()}
    assert any(k.startswith("layers.0.attention.q_proj") for k in sd)
    save_file(sd, str(tmp_path / "vit5.safetensors"))
    _check_vit(load_dino(str(tmp_path / "vit5.safetensors"), heads=4), hf_dino, 32, 24)


def test_official_dino_layout_matches_reference(hf_dino, tmp_path):
    sd = hf_vit_to_dino_official(hf_dino.state_dict())
    assert detect_layout(sd) == "timm"
    torch.save(sd, tmp_path / "dino_tiny_pretrain.pth")
    ours = load_dino(str(tmp_path / "dino_tiny_pretrain.pth"), heads=4)
    assert not ours.cfg.ln_pre and ours.cfg.patch_bias and ours.cfg.mean == (0.485, 0.456, 0.406)
    _check_vit(ours, hf_dino, 40, 32)


def _check_vit(ours, hf, height: int, width: int) -> None:
    x = torch.randn(2, 3, height, width)
    with torch.no_grad():
        out = ours.forward_intermediates(x, attn_layers=range(ours.cfg.layers))
        ref = hf(
            pixel_values=x,
            output_hidden_states=True,
            output_attentions=True,
            interpolate_pos_encoding=True,
        )
    for i, tokens in enumerate(out.tokens):
        _close(tokens, ref.hidden_states[i + 1])
        _close(out.attentions[i], ref.attentions[i].mean(dim=1)[:, 1:, 1:])
    _close(ours.head(out.last), ref.last_hidden_state)


def test_timm_clip_tower_layout(hf_clip, tmp_path):
    """timm's vit_base_patch16_clip_224.openai names (norm_pre, head) load as CLIP's tower."""
    oa = hf_to_openai(hf_clip.state_dict())
    timm = collections.OrderedDict(
        {
            "cls_token": oa["visual.class_embedding"].reshape(1, 1, -1),
            "pos_embed": oa["visual.positional_embedding"].unsqueeze(0),
            "patch_embed.proj.weight": oa["visual.conv1.weight"],
            "norm_pre.weight": oa["visual.ln_pre.weight"],
            "norm_pre.bias": oa["visual.ln_pre.bias"],
            "norm.weight": oa["visual.ln_post.weight"],
            "norm.bias": oa["visual.ln_post.bias"],
            "head.weight": oa["visual.proj"].t().contiguous(),
            "head.bias": torch.zeros(oa["visual.proj"].shape[1]),
        }
    )
    names = {"ln_1": "norm1", "ln_2": "norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for k, v in oa.items():
        if k.startswith("visual.transformer.resblocks."):
            rest = k[len("visual.transformer.resblocks.") :]
            rest = rest.replace("attn.in_proj_weight", "attn.qkv.weight")
            rest = rest.replace("attn.in_proj_bias", "attn.qkv.bias")
            rest = rest.replace("attn.out_proj", "attn.proj")
            for a, b in names.items():
                rest = rest.replace(a, b)
            timm["blocks." + rest] = v
    torch.save(dict(timm), tmp_path / "timm_clip.pth")
    vit = load_dino(str(tmp_path / "timm_clip.pth"), heads=4)
    assert vit.cfg.ln_pre and vit.cfg.act == "quick_gelu" and vit.cfg.output_dim == 24
    clip, _ = load_clip_model(_save_openai(oa, tmp_path), vision_heads=4, text_heads=2)
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        _close(vit(x), clip.visual(x))


def _save_openai(sd: dict[str, torch.Tensor], tmp_path) -> str:
    torch.save(sd, tmp_path / "oa.pt")
    return str(tmp_path / "oa.pt")


def test_torchscript_fallback_needs_explicit_trust(hf_clip, tmp_path, monkeypatch):
    from ssrseg.backbones import torchscript

    # fp16 as OpenAI's archive (an archive's fp32 Linear weights would be rounded to fp16)
    sd = {k: v.half() for k, v in hf_to_openai(hf_clip.state_dict()).items()}
    example = torch.ones(1, dtype=torch.half)
    torch.jit.trace(module_from_state(sd), example).save(str(tmp_path / "ts.pt"))

    def refuse(self, module, name):
        raise torchscript.pickle.UnpicklingError(f"refusing to load {module}.{name}")

    # Simulate an archive the tensor-only reader cannot handle.
    monkeypatch.setattr(torchscript._TensorOnlyUnpickler, "find_class", refuse)
    with pytest.raises(WeightsError, match="trust_torchscript=True"):
        load_clip_model(str(tmp_path / "ts.pt"), vision_heads=4, text_heads=2)
    trusted, _ = load_clip_model(
        str(tmp_path / "ts.pt"), vision_heads=4, text_heads=2, trust_torchscript=True
    )
    torch.save(sd, tmp_path / "plain.pt")
    plain, _ = load_clip_model(str(tmp_path / "plain.pt"), vision_heads=4, text_heads=2)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, trusted.state_dict()[k]), k


def test_open_clip_config_sets_activation_and_heads(hf_clip, tmp_path):
    """open_clip files use OpenAI key names; its config tells QuickGELU (OpenAI) from GELU."""
    import json

    torch.save(hf_to_openai(hf_clip.state_dict()), tmp_path / "open_clip_pytorch_model.bin")
    model_cfg = {
        "quick_gelu": True,
        "vision_cfg": {"width": 64, "head_width": 16},
        "text_cfg": {"heads": 2},
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    ours, _ = load_clip_model(str(tmp_path))
    assert (ours.cfg.vision.heads, ours.cfg.text.heads) == (4, 2)
    _check_clip_vision(ours, hf_clip, 32, 32)
    _check_clip_text(ours, hf_clip)
    model_cfg["quick_gelu"] = False  # e.g. LAION ViT-B-16: same keys, plain GELU
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    laion, _ = load_clip_model(str(tmp_path))
    assert laion.cfg.vision.act == "gelu" and laion.cfg.text.act == "gelu"
