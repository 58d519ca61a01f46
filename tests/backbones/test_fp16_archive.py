"""OpenAI's fp16 archive on CPU gives the weights CLIP-ES computes with.

CLIP-ES loads ``ViT-B-16.pt`` with OpenAI's ``clip.load``: it rebuilds the model, keeps the
parameters of every Conv / Linear / MultiheadAttention module and the two projections in fp16
(``convert_weights``), loads the archive's values into them and, on CPU, casts the model to
float32. The reference below re-enacts that with real torch module types (the rounding is
decided by module type, as OpenAI's code does it, not by name as ours).
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from backbone_fakes import hf_to_openai, module_from_state, tiny_hf_clip
from torch import nn

from ssrseg.backbones.weights import load_clip_model

VISION = dict(width=64, heads=4, layers=2, patch=8, grid=4)
TEXT = dict(width=32, heads=2, layers=2, context=16, vocab=100)
EMBED = 24
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads)
        self.ln_1 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(d, 4 * d), gelu=nn.Identity(), c_proj=nn.Linear(4 * d, d))
        )
        self.ln_2 = nn.LayerNorm(d)


class _Transformer(nn.Module):
    def __init__(self, d: int, heads: int, layers: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*(_Block(d, heads) for _ in range(layers)))


class _Visual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        w, p, g = VISION["width"], VISION["patch"], VISION["grid"]
        self.conv1 = nn.Conv2d(3, w, p, p, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros(g * g + 1, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = _Transformer(w, VISION["heads"], VISION["layers"])
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.zeros(w, EMBED))


class _OpenAIClip(nn.Module):
    """OpenAI CLIP's module tree (names and module types), no forward needed."""

    def __init__(self) -> None:
        super().__init__()
        w = TEXT["width"]
        self.visual = _Visual()
        self.transformer = _Transformer(w, TEXT["heads"], TEXT["layers"])
        self.token_embedding = nn.Embedding(TEXT["vocab"], w)
        self.positional_embedding = nn.Parameter(torch.zeros(TEXT["context"], w))
        self.ln_final = nn.LayerNorm(w)
        self.text_projection = nn.Parameter(torch.zeros(w, EMBED))
        self.logit_scale = nn.Parameter(torch.zeros(()))


def _clip_es_cpu_weights(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What CLIP-ES's model holds on CPU after loading ``sd`` (OpenAI names)."""
    model = _OpenAIClip()
    for m in model.modules():  # OpenAI's convert_weights: by module type
        if isinstance(m, nn.Conv2d | nn.Linear):
            m.weight.data = m.weight.data.half()
            if m.bias is not None:
                m.bias.data = m.bias.data.half()
        if isinstance(m, nn.MultiheadAttention):
            m.in_proj_weight.data = m.in_proj_weight.data.half()
            m.in_proj_bias.data = m.in_proj_bias.data.half()
        for name in ("text_projection", "proj"):
            if isinstance(getattr(m, name, None), nn.Parameter):
                getattr(m, name).data = getattr(m, name).data.half()
    model.load_state_dict(sd)
    model.float()  # clip.load on CPU
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _save_archive(sd: dict[str, torch.Tensor], path) -> None:
    """A TorchScript archive with OpenAI's key names holding ``sd`` as stored."""
    root = module_from_state(sd)
    example = torch.ones(1, dtype=sd["logit_scale"].dtype)
    torch.jit.trace(root, example).save(str(path))


@pytest.fixture(scope="module")
def openai_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(11)
    return {k: v.detach().clone() for k, v in hf_to_openai(tiny_hf_clip().state_dict()).items()}


def _ours(path) -> dict[str, torch.Tensor]:
    model, _ = load_clip_model(str(path), vision_heads=4, text_heads=2)
    state = model.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values())
    return state


@pytest.mark.parametrize("stored", [torch.float16, torch.float32])
def test_archive_gives_clip_es_cpu_weights(openai_sd, tmp_path, stored):
    sd = {k: v.to(stored) for k, v in openai_sd.items()}
    _save_archive(sd, tmp_path / "ViT-tiny.pt")
    reference = _clip_es_cpu_weights(sd)
    # the reference, stored as a plain float32 state dict, goes through our (non-rounding) path
    torch.save(reference, tmp_path / "clip_es_cpu.pt")
    want = _ours(tmp_path / "clip_es_cpu.pt")
    got = _ours(tmp_path / "ViT-tiny.pt")
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    if stored == torch.float32:  # the rounding did something, and only where OpenAI's does
        assert not torch.equal(got["visual.blocks.0.attn.qkv.weight"], sd[
            "visual.transformer.resblocks.0.attn.in_proj_weight"
        ])  # fmt: skip
        assert torch.equal(got["visual.pos_embed"], sd["visual.positional_embedding"])
        assert torch.equal(got["text.token_embed.weight"], sd["token_embedding.weight"])
        assert torch.equal(
            got["visual.blocks.0.norm1.weight"], sd["visual.transformer.resblocks.0.ln_1.weight"]
        )


def test_plain_state_dicts_keep_their_precision(openai_sd, tmp_path):
    torch.save(openai_sd, tmp_path / "fp32.pt")
    got = _ours(tmp_path / "fp32.pt")
    assert torch.equal(
        got["visual.blocks.0.attn.qkv.weight"],
        openai_sd["visual.transformer.resblocks.0.attn.in_proj_weight"],
    )
