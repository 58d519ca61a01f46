"""State-dict layouts of public CLIP / DINO weights -> this project's names and configs.

Pure functions: a ``{name: tensor}`` dict in, ``(our state dict, config)`` out. Supported layouts
(:func:`detect_layout` tells them apart by key names, never by file names):

- ``openai``: OpenAI CLIP (``visual.conv1.weight``, ``visual.transformer.resblocks.N...``,
  ``token_embedding``...); open_clip's QuickGELU ViT-B-16 files use the same keys.
- ``hf_clip``: Hugging Face ``transformers`` CLIPModel (``vision_model.*``, ``text_model.*``,
  ``visual_projection``, ``text_projection``).
- ``timm``: timm ViT (``patch_embed.proj``, ``blocks.N...``); with ``norm_pre`` it is the CLIP
  image tower (``vit_base_patch16_clip_224.openai``), without it DINO
  (``vit_small_patch16_224.dino`` and the official DINO ``.pth``, which share these names).
- ``hf_vit``: ``transformers`` ViTModel (DINO on the hub, ``facebook/dino-vits16``), both the
  classic names (``encoder.layer.N.attention.attention.query``) and transformers 5's
  (``layers.N.attention.q_proj``).
- ``hf_dinov2``: ``transformers`` Dinov2Model / Dinov2WithRegistersModel
  (``facebook/dinov2-small``, ``facebook/dinov2-with-registers-small``...): ``layer_scale1``,
  ``embeddings.register_tokens``, both attention namings.

DINOv2 in the ``timm`` layout: the official ``*_pretrain.pth`` files (``blocks.N.ls1.gamma``,
``register_tokens``, ``mask_token``) and timm's ``vit_*_patch14_dinov2`` /
``vit_*_patch14_reg4_dinov2`` (``reg_token``; timm folds the class position into ``cls_token``
and stores only the patch positions, which converts back exactly with a zero class position).
``mask_token`` (used only by DINOv2's masked training) is read and dropped.

Shapes (widths, depths, patch, grid, context, vocabulary) are read from the tensors, so tiny
test models and the real ones take the same path. Head counts cannot be read from weights: they
come from the model's ``config.json`` when there is one, else the rule ``width // 64`` (true for
CLIP ViT-B/16 and DINO ViT-S/16), else the caller's override.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ssrseg.backbones.clip import CLIPConfig, TextConfig
from ssrseg.backbones.native import WeightsError
from ssrseg.backbones.vit import ViTConfig, dino_vit_s16_config

LAYOUTS = ("openai", "hf_clip", "timm", "hf_vit", "hf_dinov2")
CLIP_MEAN_STD = (ViTConfig().mean, ViTConfig().std)
IMAGENET_MEAN_STD = (dino_vit_s16_config().mean, dino_vit_s16_config().std)

# Entries that real files carry but that are not weights of the model (dropped on purpose).
_IGNORED = (
    re.compile(r"^(input_resolution|context_length|vocab_size)$"),  # OpenAI metadata scalars
    re.compile(r"(^|\.)position_ids$"),  # transformers index buffers
    re.compile(r"(^|\.)attn_mask$"),  # OpenAI text causal mask (TorchScript attribute)
    re.compile(r"^(vit\.)?pooler\."),  # transformers ViT pooler: not part of DINO's backbone
)


def _strip_prefix(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove wrappers' prefixes (DDP ``module.``, DINO's ``backbone.``) shared by every key."""
    for prefix in ("module.", "backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def detect_layout(sd: dict[str, Tensor]) -> str:
    """Name of the layout of ``sd`` (one of :data:`LAYOUTS`) or a WeightsError."""
    keys = set(_strip_prefix(sd))
    if "visual.conv1.weight" in keys:
        return "openai"
    if "vision_model.embeddings.patch_embedding.weight" in keys:
        return "hf_clip"
    if "patch_embed.proj.weight" in keys:
        return "timm"
    bare = {re.sub(r"^(vit|dinov2)\.", "", k) for k in keys}
    if "embeddings.patch_embeddings.projection.weight" in bare:
        # DINOv2 is the ViT with LayerScale
        return "hf_dinov2" if any(".layer_scale1." in k for k in bare) else "hf_vit"
    sample = sorted(keys)[:6]
    raise WeightsError(
        f"unknown weight layout (first keys {sample}); supported: OpenAI / open_clip CLIP, "
        "transformers CLIPModel / ViTModel / Dinov2Model, timm ViT, official DINO / DINOv2, "
        "ssrseg native"
    )


class _Reader:
    """Takes tensors out of a state dict by name and reports what was left over."""

    def __init__(self, sd: dict[str, Tensor], source: str) -> None:
        self.sd = sd
        self.used: set[str] = set()
        self.source = source

    def __call__(self, key: str) -> Tensor:
        if key not in self.sd:
            raise WeightsError(f"{self.source}: missing key {key!r}")
        self.used.add(key)
        return self.sd[key]

    def has(self, key: str) -> bool:
        return key in self.sd

    def count(self, pattern: str) -> int:
        """Number of distinct N in keys matching ``pattern`` (a regex with one group)."""
        rx = re.compile(pattern)
        return len({m.group(1) for k in self.sd if (m := rx.match(k))})

    def finish(self) -> None:
        left = sorted(
            k for k in self.sd if k not in self.used and not any(p.search(k) for p in _IGNORED)
        )
        if left:
            more = " ..." if len(left) > 8 else ""
            raise WeightsError(f"{self.source}: unexpected keys {left[:8]}{more}")


def _heads(width: int, override: int | None, what: str) -> int:
    if override is not None:
        return override
    if width % 64:
        raise WeightsError(
            f"cannot infer the number of {what} attention heads for width {width} "
            "(rule: width // 64); pass the head count explicitly"
        )
    return width // 64


SUPPORTED_ACTS = ("quick_gelu", "gelu")


def _act(name: str) -> str:
    """Only activations our MLP implements exactly; anything else would load but compute wrong."""
    if name not in SUPPORTED_ACTS:
        raise WeightsError(f"activation {name!r} is not supported (supported: {SUPPORTED_ACTS})")
    return name


def _grid(num_pos: int, source: str) -> int:
    side = math.isqrt(num_pos)
    if side * side != num_pos:
        raise WeightsError(f"{source}: {num_pos} patch positions do not form a square grid")
    return side


BlockMap = Callable[[int], dict[str, Tensor]]


def _blocks(r: _Reader, base: str, one: BlockMap) -> dict[str, Tensor]:
    """Every block the file holds under ``base`` (``<base><i>.*``, counted from the keys), as
    our ``blocks.<i>.*`` through ``one`` (the per-block key map of the file's layout)."""
    out: dict[str, Tensor] = {}
    for i in range(r.count("^" + re.escape(base) + r"(\d+)\.")):
        out.update({f"blocks.{i}.{k}": v for k, v in one(i).items()})
    return out


def _renamed(r: _Reader, p: str, names: dict[str, str]) -> dict[str, Tensor]:
    """``{our module: the file's module under p}`` -> our ``.weight`` and ``.bias`` tensors."""
    return {f"{ours}.{t}": r(f"{p}{theirs}.{t}") for ours, theirs in names.items() for t in _WB}


_WB = ("weight", "bias")
_MLP_AND_NORMS = {n: n for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2")}


def _openai_block(r: _Reader, base: str) -> BlockMap:
    def one(i: int) -> dict[str, Tensor]:
        p = f"{base}{i}."
        out = {f"attn.qkv.{t}": r(f"{p}attn.in_proj_{t}") for t in _WB}
        names = {"attn.proj": "attn.out_proj", "norm1": "ln_1", "norm2": "ln_2"}
        out.update(_renamed(r, p, {**names, "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}))
        return out

    return one


def _hf_clip_block(r: _Reader, base: str) -> BlockMap:
    def one(i: int) -> dict[str, Tensor]:
        p = f"{base}{i}."
        a = p + "self_attn."
        out = {f"attn.qkv.{t}": torch.cat([r(f"{a}{x}_proj.{t}") for x in "qkv"]) for t in _WB}
        names = {"attn.proj": "self_attn.out_proj", "norm1": "layer_norm1", "norm2": "layer_norm2"}
        out.update(_renamed(r, p, {**names, "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}))
        return out

    return one


def _same_block(r: _Reader, base: str) -> BlockMap:
    names = {**_MLP_AND_NORMS, "attn.qkv": "attn.qkv", "attn.proj": "attn.proj"}

    def one(i: int) -> dict[str, Tensor]:
        return _renamed(r, f"{base}{i}.", names)

    return one


def _hf_attention(r: _Reader, p: str, classic: bool) -> dict[str, Tensor]:
    """Our fused ``attn.qkv`` and ``attn.proj`` of block ``p`` of a transformers ViT / DINOv2,
    from either attention naming (classic ``attention.attention.query`` or transformers 5's
    ``attention.q_proj``)."""
    if classic:
        qkv = [f"attention.attention.{x}" for x in ("query", "key", "value")]
        o = "attention.output.dense"
    else:
        qkv, o = [f"attention.{x}_proj" for x in "qkv"], "attention.o_proj"
    out = {f"attn.qkv.{t}": torch.cat([r(f"{p}{x}.{t}") for x in qkv]) for t in _WB}
    out.update(_renamed(r, p, {"attn.proj": o}))
    return out


def _hf_vit_block(r: _Reader, base: str, classic: bool) -> BlockMap:
    mlp = ("intermediate.dense", "output.dense") if classic else ("mlp.fc1", "mlp.fc2")
    names = {"norm1": "layernorm_before", "norm2": "layernorm_after"}
    names.update({"mlp.fc1": mlp[0], "mlp.fc2": mlp[1]})

    def one(i: int) -> dict[str, Tensor]:
        p = f"{base}{i}."
        return {**_hf_attention(r, p, classic), **_renamed(r, p, names)}

    return one


def _hf_dinov2_block(r: _Reader, base: str, classic: bool) -> BlockMap:
    def one(i: int) -> dict[str, Tensor]:
        p = f"{base}{i}."
        out = _hf_attention(r, p, classic)
        out.update({f"ls{n}.gamma": r(f"{p}layer_scale{n}.lambda1") for n in (1, 2)})
        out.update(_renamed(r, p, _MLP_AND_NORMS))
        return out

    return one


def _hf_vit_embeddings(r: _Reader) -> dict[str, Tensor]:
    """Patch, class and position embeddings and the final norm of a transformers ViT / DINOv2
    (the same names in both)."""
    return {
        "patch_embed.weight": r("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.bias": r("embeddings.patch_embeddings.projection.bias"),
        "cls_token": r("embeddings.cls_token").reshape(-1),
        "pos_embed": r("embeddings.position_embeddings").flatten(0, -2),
        "norm.weight": r("layernorm.weight"),
        "norm.bias": r("layernorm.bias"),
    }


def _layer_scales(r: _Reader, n: int) -> dict[str, Tensor]:
    """DINOv2's LayerScale gammas in the official / timm names (``blocks.N.ls1.gamma``)."""
    return {
        f"blocks.{i}.{ls}.gamma": r(f"blocks.{i}.{ls}.gamma")
        for i in range(n)
        for ls in ("ls1", "ls2")
    }


def _refuse_swiglu(keys: Any, hf: dict[str, Any], source: str) -> None:
    """DINOv2 ViT-g/14 uses a SwiGLU MLP, which this ViT does not implement."""
    if hf.get("use_swiglu_ffn") or any(".mlp.w12." in k or ".weights_in." in k for k in keys):
        raise WeightsError(
            f"{source}: SwiGLU MLP (DINOv2 ViT-g/14) is not supported; use ViT-S/B/L"
        )


def _vision_config(
    sd: dict[str, Tensor], heads: int | None, clip_style: bool, hf: dict[str, Any]
) -> ViTConfig:
    """ViTConfig from converted vision weights (our names, no prefix)."""
    w = sd["patch_embed.weight"]
    width, patch = w.shape[0], w.shape[-1]
    grid = _grid(sd["pos_embed"].shape[0] - 1, "position embedding")
    layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    mean, std = CLIP_MEAN_STD if clip_style else IMAGENET_MEAN_STD
    proj = sd.get("proj")
    registers = sd["register_tokens"].shape[0] if "register_tokens" in sd else 0
    return ViTConfig(
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        layers=layers,
        heads=hf.get("num_attention_heads") or _heads(width, heads, "image"),
        mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / width,
        act=_act(hf.get("hidden_act") or ("quick_gelu" if clip_style else "gelu")),
        ln_eps=hf.get("layer_norm_eps") or (1e-5 if clip_style else 1e-6),
        ln_pre="ln_pre.weight" in sd,
        patch_bias="patch_embed.bias" in sd,
        output_dim=None if proj is None else proj.shape[1],
        mean=mean,
        std=std,
        layer_scale="blocks.0.ls1.gamma" in sd,
        num_registers=registers,
        # DINOv2's reference and transformers antialias the resize for the register models only
        pos_antialias=registers > 0,
    )


def convert_vit(
    sd: dict[str, Tensor],
    source: str = "weights",
    heads: int | None = None,
    hf_config: dict[str, Any] | None = None,
) -> tuple[dict[str, Tensor], ViTConfig]:
    """A stand-alone ViT (timm CLIP tower, timm / official DINO and DINOv2, transformers
    ViTModel / Dinov2Model) -> (state dict for :class:`VisionTransformer`, its config)."""
    sd = _strip_prefix(sd)
    layout = detect_layout(sd)
    hf = hf_config or {}
    _refuse_swiglu(sd, hf, source)
    if layout in ("hf_vit", "hf_dinov2"):
        sd = {re.sub(r"^(vit|dinov2)\.", "", k): v for k, v in sd.items()}
    r = _Reader(sd, source)
    out: dict[str, Tensor]
    if layout == "timm":
        pos = r("pos_embed").flatten(0, -2)
        if math.isqrt(pos.shape[0]) ** 2 == pos.shape[0]:
            # timm's no_embed_class (DINOv2 with registers): the class position is already
            # added to cls_token, so a zero class position reproduces it exactly
            pos = torch.cat([pos.new_zeros(1, pos.shape[1]), pos])
        out = {
            "patch_embed.weight": r("patch_embed.proj.weight"),
            "cls_token": r("cls_token").reshape(-1),
            "pos_embed": pos,
            "norm.weight": r("norm.weight"),
            "norm.bias": r("norm.bias"),
        }
        for reg in ("register_tokens", "reg_token"):  # official / timm name
            if r.has(reg):
                out["register_tokens"] = r(reg).flatten(0, -2)
        if r.has("mask_token"):
            r("mask_token")  # DINOv2's masked-training token: not part of inference
        if r.has("patch_embed.proj.bias"):
            out["patch_embed.bias"] = r("patch_embed.proj.bias")
        if r.has("norm_pre.weight"):
            out["ln_pre.weight"], out["ln_pre.bias"] = r("norm_pre.weight"), r("norm_pre.bias")
        if r.has("head.weight"):
            out["proj"] = r("head.weight").t()
            if r.has("head.bias") and bool(r("head.bias").abs().max() > 0):
                raise WeightsError(f"{source}: a non-zero head.bias has no place in CLIP's proj")
        n = r.count(r"^blocks\.(\d+)\.")  # the LayerScale gammas below need the count too
        out.update(_blocks(r, "blocks.", _same_block(r, "blocks.")))
        if r.has("blocks.0.ls1.gamma"):
            out.update(_layer_scales(r, n))
        clip_style = "ln_pre.weight" in out
    elif layout == "hf_vit":
        classic = r.has("encoder.layer.0.layernorm_before.weight")
        base = "encoder.layer." if classic else "layers."
        out = _hf_vit_embeddings(r)
        out.update(_blocks(r, base, _hf_vit_block(r, base, classic)))
        clip_style = False
    elif layout == "hf_dinov2":
        base = "encoder.layer." if r.has("encoder.layer.0.norm1.weight") else "layers."
        classic = r.has(base + "0.attention.attention.query.weight")
        out = _hf_vit_embeddings(r)
        if r.has("embeddings.register_tokens"):
            out["register_tokens"] = r("embeddings.register_tokens").flatten(0, -2)
        if r.has("embeddings.mask_token"):
            r("embeddings.mask_token")  # masked-training token: not part of inference
        out.update(_blocks(r, base, _hf_dinov2_block(r, base, classic)))
        clip_style = False
    else:
        raise WeightsError(
            f"{source}: layout {layout!r} is a CLIP model, not a stand-alone ViT; "
            "load it with load_clip"
        )
    r.finish()
    return out, _vision_config(out, heads, clip_style, hf)


# our CLIP names (``<tower>.<name>``; a trailing dot: a LayerNorm's weight and bias) ->
# (OpenAI / open_clip key, transformers CLIPModel key)
_CLIP_NAMES = {
    "visual.patch_embed.weight": (
        "visual.conv1.weight",
        "vision_model.embeddings.patch_embedding.weight",
    ),
    "visual.cls_token": ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    "visual.pos_embed": (
        "visual.positional_embedding",
        "vision_model.embeddings.position_embedding.weight",
    ),
    "visual.ln_pre.": ("visual.ln_pre.", "vision_model.pre_layrnorm."),
    "visual.norm.": ("visual.ln_post.", "vision_model.post_layernorm."),
    "visual.proj": ("visual.proj", "visual_projection.weight"),
    "text.token_embed.weight": (
        "token_embedding.weight",
        "text_model.embeddings.token_embedding.weight",
    ),
    "text.pos_embed": ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    "text.norm.": ("ln_final.", "text_model.final_layer_norm."),
    "text.proj": ("text_projection", "text_projection.weight"),
}
# where the (vision, text) blocks start, per layout (the columns above)
_CLIP_BLOCKS = (
    ("visual.transformer.resblocks.", "transformer.resblocks."),
    ("vision_model.encoder.layers.", "text_model.encoder.layers."),
)


def convert_clip(
    sd: dict[str, Tensor],
    source: str = "weights",
    vision_heads: int | None = None,
    text_heads: int | None = None,
    hf_config: dict[str, Any] | None = None,
) -> tuple[dict[str, Tensor], CLIPConfig]:
    """OpenAI / open_clip / transformers CLIP weights -> (state dict for :class:`CLIP`, config).

    hf_config: the ``config.json`` of a transformers CLIPModel when available (head counts,
    activation, LayerNorm eps)."""
    sd = _strip_prefix(sd)
    layout = detect_layout(sd)
    r = _Reader(sd, source)
    hf = hf_config or {}
    if layout not in ("openai", "hf_clip"):
        raise WeightsError(
            f"{source}: layout {layout!r} holds only an image tower; CLIP needs the text tower "
            "too (use OpenAI / open_clip / transformers CLIPModel weights)"
        )
    column = 0 if layout == "openai" else 1
    towers: dict[str, dict[str, Tensor]] = {"visual": {}, "text": {}}
    for ours, keys in _CLIP_NAMES.items():
        tower, _, name = ours.partition(".")
        theirs = keys[column]
        if theirs.endswith("."):  # a LayerNorm: weight and bias
            towers[tower].update({name + t: r(theirs + t) for t in ("weight", "bias")})
        else:
            towers[tower][name] = r(theirs)
    vis, txt = towers["visual"], towers["text"]
    vis["cls_token"] = vis["cls_token"].reshape(-1)
    if layout == "hf_clip":  # nn.Linear weights are (out, in); our projections (in, out)
        vis["proj"], txt["proj"] = vis["proj"].t(), txt["proj"].t()
    block = _openai_block if layout == "openai" else _hf_clip_block
    for dst, base in zip((vis, txt), _CLIP_BLOCKS[column], strict=True):
        dst.update(_blocks(r, base, block(r, base)))
    logit_scale = r("logit_scale").reshape(())
    r.finish()

    vision = _vision_config(vis, vision_heads, True, hf.get("vision_config") or {})
    tc = hf.get("text_config") or {}
    vocab, width = txt["token_embed.weight"].shape
    text = TextConfig(
        vocab_size=vocab,
        context_length=txt["pos_embed"].shape[0],
        width=width,
        layers=len({k.split(".")[1] for k in txt if k.startswith("blocks.")}),
        heads=tc.get("num_attention_heads") or _heads(width, text_heads, "text"),
        # OpenAI's BPE puts SOT and EOT last; tiny test vocabularies follow the same rule.
        eot_token_id=vocab - 1,
        sot_token_id=vocab - 2,
        act=_act(tc.get("hidden_act") or "quick_gelu"),
        ln_eps=tc.get("layer_norm_eps") or 1e-5,
    )
    if txt["blocks.0.mlp.fc1.weight"].shape[0] != 4 * width:
        raise WeightsError(f"{source}: the text MLP width is not 4 x {width}, unsupported")
    cfg = CLIPConfig(vision=vision, text=text, embed_dim=vision.output_dim or 0)
    out = {f"visual.{k}": x for k, x in vis.items()}
    out.update({f"text.{k}": x for k, x in txt.items()})
    out["logit_scale"] = logit_scale
    return out, cfg
