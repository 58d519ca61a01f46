"""Tiny backbone shapes shared by the backbone tests (CPU, milliseconds per forward)."""

from __future__ import annotations

import torch
from torch import nn

from ssrseg.backbones.clip import CLIPConfig, TextConfig
from ssrseg.backbones.random_weights import TINY_WORDS, synthetic_bpe, write_hf_bpe  # noqa: F401 (re-exported)
from ssrseg.backbones.toy_shapes import toy_dino_config
from ssrseg.backbones.vit import VisionTransformer, ViTConfig


def tiny_vision(**kw: object) -> ViTConfig:
    base = dict(image_size=32, patch_size=8, width=64, layers=2, heads=4, output_dim=24)
    base.update(kw)
    return ViTConfig(**base)  # type: ignore[arg-type]


def tiny_clip_config() -> CLIPConfig:
    text = TextConfig(
        vocab_size=100,
        context_length=16,
        width=32,
        layers=2,
        heads=2,
        eot_token_id=99,
        sot_token_id=98,
    )
    return CLIPConfig(vision=tiny_vision(), text=text, embed_dim=24)


def tiny_dino_config() -> ViTConfig:
    """DINO ViT-S/16's code path at 32 px, patch 8, width 64, 2 layers, 4 heads."""
    return toy_dino_config(image_size=32, patch_size=8, width=64, layers=2, heads=4)


def tiny_hf_clip(
    vocab_size: int = 100,
    context_length: int = 16,
    sot: int = 98,
    eot: int = 99,
    pad: int = 0,
    vision_layers: int = 2,
):  # -> transformers.CLIPModel
    """A random transformers CLIPModel: vision 64 wide / ``vision_layers`` layers / 4 heads /
    patch 8 / 32 px, text 32 wide / 2 layers / 2 heads / ``vocab_size`` (SOT ``sot``, EOT
    ``eot``) / context ``context_length``. The defaults are the tiny vocabulary of
    :func:`tiny_bpe`; the real-vocabulary tests pass CLIP's 49408 / 77 / 49406 / 49407."""
    from transformers import CLIPConfig as HFCLIPConfig
    from transformers import CLIPModel

    cfg = HFCLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=context_length,
            bos_token_id=sot,
            eos_token_id=eot,
            pad_token_id=pad,
            hidden_act="quick_gelu",
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=vision_layers,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            hidden_act="quick_gelu",
        ),
        projection_dim=24,
        attn_implementation="eager",
    )
    model = CLIPModel(cfg).eval()
    with torch.no_grad():  # make LayerNorms and biases non-trivial so mistakes show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def tiny_hf_dino():  # -> transformers.ViTModel
    from transformers import ViTConfig as HFViTConfig
    from transformers import ViTModel

    cfg = HFViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        image_size=32,
        patch_size=8,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
        attn_implementation="eager",
    )
    model = ViTModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "token" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


class _Node(nn.Module):
    """Container of parameters with arbitrary (OpenAI-style) names."""


class _Root(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.logit_scale.exp()


def module_from_state(sd: dict[str, torch.Tensor]) -> nn.Module:
    """A module whose parameters are ``sd`` under its dotted names (``visual.conv1.weight`` ...),
    traceable with a 1-element input (``x * logit_scale.exp()``) so ``torch.jit.trace(...).save``
    writes a TorchScript archive with OpenAI's key names, as ``ViT-B-16.pt`` is."""
    root: nn.Module = _Root()
    for key, value in sd.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, _Node())
            node = getattr(node, part)
        node.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
    return root


def _hf_key(sd, *options):
    for k in options:
        if k in sd:
            return sd[k]
    raise KeyError(options)


def hf_to_openai(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPModel state dict -> OpenAI CLIP key names (written independently of the
    library's converter, from the published key lists)."""
    out = {
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].t().contiguous(),
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t().contiguous(),
        "logit_scale": sd["logit_scale"],
    }
    for src, dst in (("vision_model.", "visual.transformer."), ("text_model.", "transformer.")):
        n = len({k.split(".")[3] for k in sd if k.startswith(src + "encoder.layers.")})
        for i in range(n):
            p, q = f"{src}encoder.layers.{i}.", f"{dst}resblocks.{i}."
            a = p + "self_attn."
            out[q + "attn.in_proj_weight"] = torch.cat([sd[a + f"{x}_proj.weight"] for x in "qkv"])
            out[q + "attn.in_proj_bias"] = torch.cat([sd[a + f"{x}_proj.bias"] for x in "qkv"])
            for ours, theirs in (
                ("attn.out_proj", "self_attn.out_proj"),
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ):
                for t in ("weight", "bias"):
                    out[f"{q}{ours}.{t}"] = sd[f"{p}{theirs}.{t}"]
    return out


def hf_embeddings_to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The class / position / patch embeddings and the final norm of a transformers ViTModel or
    Dinov2Model state dict (the same names in both) under the official DINO / DINOv2 names."""
    return {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }


def hf_vit_to_dino_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ViTModel state dict (either naming) -> the official DINO ``.pth`` names."""
    out = hf_embeddings_to_official(sd)
    classic = any(k.startswith("encoder.layer.") for k in sd)
    n = len(
        {k.split(".")[2 if classic else 1] for k in sd if ".layer" in k and "norm" not in k[:9]}
    )
    for i in range(n):
        p = f"encoder.layer.{i}." if classic else f"layers.{i}."
        if classic:
            q, k_, v = (p + f"attention.attention.{x}" for x in ("query", "key", "value"))
            o, f1, f2 = p + "attention.output.dense", p + "intermediate.dense", p + "output.dense"
        else:
            q, k_, v = (p + f"attention.{x}_proj" for x in "qkv")
            o, f1, f2 = p + "attention.o_proj", p + "mlp.fc1", p + "mlp.fc2"
        b = f"blocks.{i}."
        for t in ("weight", "bias"):
            out[b + f"attn.qkv.{t}"] = torch.cat([sd[f"{x}.{t}"] for x in (q, k_, v)])
            out[b + f"attn.proj.{t}"] = sd[f"{o}.{t}"]
            out[b + f"mlp.fc1.{t}"] = sd[f"{f1}.{t}"]
            out[b + f"mlp.fc2.{t}"] = sd[f"{f2}.{t}"]
            out[b + f"norm1.{t}"] = sd[f"{p}layernorm_before.{t}"]
            out[b + f"norm2.{t}"] = sd[f"{p}layernorm_after.{t}"]
    return out


def cls_and_patch_tokens(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """[CLS, patch tokens] of ``x`` before positions, written out: ``B x (1 + h*w) x width``."""
    patches = vit.patch_embed(x).flatten(2).transpose(1, 2)
    return torch.cat([vit.cls_token.expand(x.shape[0], 1, -1), patches], dim=1)


# The synthetic BPE vocabulary lives in the package (``ssrseg weights random`` writes it too).
tiny_bpe = synthetic_bpe
