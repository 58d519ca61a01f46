"""One Vision Transformer for CLIP's image tower, DINO and DINOv2.

The method needs more than a classifier's forward: every layer's patch tokens (decoder input),
head-averaged attention matrices (affinity), and a way to run the last block on its own with
gradients (Grad-CAM at the last block's ``ln_1``). :meth:`VisionTransformer.forward_intermediates`
returns all of it as a named :class:`ViTOutput`.

Parameter names are this project's own (``blocks.i.norm1``, ``attn.qkv`` ...);
``ssrseg.backbones.weights`` converts the OpenAI / open_clip / transformers / timm / DINO layouts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a ViT. Defaults are CLIP ViT-B/16."""

    image_size: int = 224  # pretrained input size; sets the stored position-embedding grid
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    act: str = "quick_gelu"  # quick_gelu (OpenAI CLIP) | gelu (DINO)
    ln_eps: float = 1e-5  # 1e-5 CLIP, 1e-6 DINO
    ln_pre: bool = True  # CLIP normalises the embedded tokens before block 1; DINO does not
    patch_bias: bool = False  # CLIP's patch conv has no bias; DINO's has
    output_dim: int | None = 512  # CLIP's projection width; None for DINO
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    # DINOv2 (ssrseg.backbones.dinov2); the defaults leave CLIP and DINO v1 unchanged.
    layer_scale: bool = False  # learned per-channel scale on both residual branches (ls1, ls2)
    num_registers: int = 0  # register tokens, inserted between CLS and the patches
    pos_antialias: bool = False  # antialiased bicubic position resize (DINOv2 with registers)

    @property
    def pretrained_grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_prefix(self) -> int:
        """Tokens before the patches: CLS and the registers."""
        return 1 + self.num_registers


@dataclass
class ViTOutput:
    """What one forward pass yields.

    tokens: per block, its output, ``B x (P+N) x D`` (index 0 is block 1; CLS first, then the
        registers: P = 1 + registers, 1 for CLIP and DINO v1).
    attentions: block index (0-based) -> head-averaged softmax attention restricted to
        patch-to-patch pairs (CLS and register rows and columns dropped), ``B x N x N``,
        float32.
    grid: (h, w) patch grid, N = h * w.
    prefix: P, the number of tokens before the patches.
    """

    tokens: list[Tensor]
    attentions: dict[int, Tensor] = field(default_factory=dict)
    grid: tuple[int, int] = (0, 0)
    prefix: int = 1

    @property
    def last(self) -> Tensor:
        """Output of the last block run, ``B x (1+N) x D``."""
        return self.tokens[-1]


class LayerNorm(nn.LayerNorm):
    """LayerNorm that computes in float32 when its input is half precision and autocast is
    off, then casts back (OpenAI CLIP's ``LayerNorm`` subclass: its weights stay float32 when
    the rest of the model is converted to fp16). A float32 input with float32 weights takes
    ``nn.LayerNorm``'s own path unchanged; under autocast, autocast already runs ``layer_norm``
    in float32."""

    def forward(self, x: Tensor) -> Tensor:
        params_fp32 = self.weight is None or self.weight.dtype == torch.float32
        if (x.dtype == torch.float32 and params_fp32) or torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        # also float32 input with bf16 weights (the trainer's bf16 backbones, Grad-CAM's
        # float32 last block reading them): torch has no layer_norm for that mix
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def half_weights(module: nn.Module) -> nn.Module:
    """Convert ``module`` in place to the references' fp16 GPU numerics and return it: the
    weights and biases of every Linear and Conv2d and the output projections (``proj``) to
    float16; LayerNorms, class / register tokens, position tables and the logit scale stay
    float32 (OpenAI CLIP's ``convert_weights``; activations then follow the weights' dtype,
    and :class:`LayerNorm` computes in float32)."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear | nn.Conv2d):
            sub.half()
        proj = getattr(sub, "proj", None)
        if isinstance(proj, nn.Parameter):
            proj.data = proj.data.half()
    return module


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation, x * sigmoid(1.702 x)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv that can return its attention matrix."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(
        self, x: Tensor, need_attn: bool = False, causal: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x: ``B x L x D`` -> (``B x L x D``, head-averaged attention ``B x L x L`` or None).

        ``causal`` masks future positions (CLIP's text tower)."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each B x H x L x hd
        if not need_attn:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return self.proj(out.transpose(1, 2).reshape(b, n, d)), None
        future = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1) if causal else None
        if (
            x.device.type == "cpu"
            and torch.get_num_threads() == 1
            and not (torch.is_grad_enabled() and qkv.requires_grad)
        ):
            out, mean_attn = self._attention_per_head(q, k, v, future)
            return self.proj(out.reshape(b, n, d)), mean_attn
        logits = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)
        if future is not None:
            logits = logits.masked_fill(future, float("-inf"))
        attn = logits.float().softmax(dim=-1)
        out = attn.to(v.dtype) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d)), attn.mean(dim=1)

    def _attention_per_head(
        self, q: Tensor, k: Tensor, v: Tensor, future: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Explicit attention one head at a time (CPU, one thread, no autograd graph).

        q, k, v: ``B x H x L x hd``; future: ``L x L`` bool mask of the causal positions or None.
        Returns (``B x L x H x hd`` output, ``B x L x L`` float32 head-averaged attention).

        Why: all heads at once materialise two ``B x H x L x L`` tensors (logits, softmax) and
        read the softmax once more for the head mean; at L = 769 that is 28 MB each, far out
        of cache. One head's ``B x L x L`` block stays in cache between its matmul, softmax,
        value product and the running sum. The output and the softmax of every head are
        bit-identical to the batched formula; the mean is a sequential sum over the heads, then
        the division, which can differ from ``mean(dim=1)`` in the last bit (that kernel's
        summation order depends on the CPU's vector width and the tensor's layout).
        One thread only: with two, the per-head kernels are too small to split well (measured
        3x slower than all heads at once with the second core busy), and a GEMM's thread split
        makes the per-head products differ in the last bit from the batched ones.
        """
        b, heads, n, hd = q.shape
        q = q * (1.0 / math.sqrt(hd))
        k_t = k.transpose(-2, -1)
        out = torch.empty(b, n, heads, hd, dtype=v.dtype, device=v.device)
        probs = torch.empty(b, n, n, dtype=torch.float32, device=v.device)
        total = torch.zeros(b, n, n, dtype=torch.float32, device=v.device)
        for i in range(heads):
            logits = q[:, i] @ k_t[:, i]
            if future is not None:
                logits.masked_fill_(future, float("-inf"))
            torch.softmax(logits.float(), dim=-1, out=probs)
            out[:, :, i] = probs.to(v.dtype) @ v[:, i]
            total += probs
        return out, total.div_(heads)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act: nn.Module = QuickGELU() if act == "quick_gelu" else nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """DINOv2's LayerScale: a residual branch times a learned per-channel ``gamma``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma.to(x.dtype)


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))); x + ls2(mlp(norm2(x))).

    ``ls1`` / ``ls2`` are LayerScale for DINOv2 (``cfg.layer_scale``), identities otherwise."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.attn = Attention(cfg.width, cfg.heads)
        self.norm2 = LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp = MLP(cfg.width, int(cfg.width * cfg.mlp_ratio), cfg.act)
        self.ls1: nn.Module = LayerScale(cfg.width) if cfg.layer_scale else nn.Identity()
        self.ls2: nn.Module = LayerScale(cfg.width) if cfg.layer_scale else nn.Identity()

    def forward(
        self, x: Tensor, need_attn: bool = False, causal: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        return self.forward_from_norm1(x, self.norm1(x), need_attn, causal)

    def forward_from_norm1(
        self, x: Tensor, h: Tensor, need_attn: bool = False, causal: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Finish the block given ``h = norm1(x)``; Grad-CAM differentiates w.r.t. ``h``."""
        a, attn = self.attn(h, need_attn, causal)
        x = x + self.ls1(a)
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x, attn


def interpolate_pos_embed(
    pos: Tensor,
    grid: tuple[int, int],
    src_grid: int,
    antialias: bool = False,
    offset: float = 0.0,
) -> Tensor:
    """Resize a position embedding table to a new patch grid (bicubic, in float32).

    pos: ``(1 + S*S) x D`` with the class position first; returns ``(1 + h*w) x D``.
    antialias: torch's antialiased bicubic (DINOv2 with registers, as its reference and
        transformers do); note it uses a different cubic kernel even when upsampling.
    offset: 0 resizes to the explicit size (transformers). The official DINO / DINOv2 code
        passes ``scale_factor=((h + 0.1) / S, (w + 0.1) / S)`` instead (same output size, but
        torch then maps coordinates with that factor): ``offset=0.1`` reproduces it.
    """
    h, w = grid
    if (h, w) == (src_grid, src_grid):
        return pos
    cls_pos, patch_pos = pos[:1], pos[1:]
    d = patch_pos.shape[-1]
    patch_pos = patch_pos.reshape(1, src_grid, src_grid, d).permute(0, 3, 1, 2)
    if offset:
        scale = ((h + offset) / src_grid, (w + offset) / src_grid)
        patch_pos = F.interpolate(
            patch_pos.float(), scale_factor=scale, mode="bicubic", antialias=antialias
        )
    else:
        patch_pos = F.interpolate(
            patch_pos.float(), size=(h, w), mode="bicubic", align_corners=False, antialias=antialias
        )
    patch_pos = patch_pos.to(pos.dtype).permute(0, 2, 3, 1).reshape(h * w, d)
    return torch.cat([cls_pos, patch_pos], dim=0)


# How the pretrained position table is resized to an input's grid (VisionTransformer attribute
# ``pos_embed_resize``): "bicubic" (interpolate_pos_embed) or "bilinear_fp16" (CLIP-ES / WeCLIP);
# "bicubic_offset": the official DINO / DINOv2 repositories' +0.1 scale factor (models without
# registers; the register models resize to the explicit size there, as "bicubic").
POS_EMBED_RESIZE = ("bicubic", "bilinear_fp16", "bicubic_offset")
# Resized position tables a VisionTransformer keeps (grids x dtypes x modes in use at once).
POS_CACHE_SIZE = 8


def interpolate_pos_embed_bilinear_fp16(
    pos: Tensor, grid: tuple[int, int], src_grid: int
) -> Tensor:
    """CLIP-ES's / WeCLIP's resize (their ``upsample_pos_emb``): the patch positions bilinearly
    (``align_corners=False``, in float32), then the whole table, class position included,
    rounded to fp16. Both do it at every input size, also at the pretrained grid, where the
    resize is the identity but the rounding still applies.

    pos: ``(1 + S*S) x D`` with the class position first; returns ``(1 + h*w) x D`` in
    ``pos.dtype`` holding fp16 values.
    """
    h, w = grid
    cls_pos, patch_pos = pos[:1].float(), pos[1:].float()
    d = patch_pos.shape[-1]
    patch_pos = patch_pos.reshape(1, src_grid, src_grid, d).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bilinear", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(h * w, d)
    return torch.cat([cls_pos, patch_pos], dim=0).half().to(pos.dtype)


class VisionTransformer(nn.Module):
    """ViT with a class token; CLIP's image tower, DINO or DINOv2 (LayerScale, registers)
    depending on :class:`ViTConfig`.

    ``pos_embed_resize`` (one of :data:`POS_EMBED_RESIZE`, default ``"bicubic"``) picks the
    position-table resize; it is a run-time choice (``backbone.pos_embed_resize`` for CLIP),
    not part of the stored config.
    """

    pos_embed_resize: str = "bicubic"

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.patch_embed = nn.Conv2d(3, d, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(d))
        self.pos_embed = nn.Parameter(torch.zeros(1 + cfg.pretrained_grid**2, d))
        # DINOv2's registers: learned tokens without a position, placed after CLS
        self.register_tokens: nn.Parameter | None = (
            nn.Parameter(torch.zeros(cfg.num_registers, d)) if cfg.num_registers else None
        )
        self.ln_pre: nn.Module = LayerNorm(d, eps=cfg.ln_eps) if cfg.ln_pre else nn.Identity()
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        self.norm = LayerNorm(d, eps=cfg.ln_eps)
        self.proj: nn.Parameter | None = (
            nn.Parameter(torch.zeros(d, cfg.output_dim)) if cfg.output_dim else None
        )
        # resized position tables (see position_table): key -> table, valid while the
        # parameter is the one recorded in _pos_source (its storage and version counter)
        self._pos_cache: dict[tuple[object, ...], Tensor] = {}
        self._pos_source: tuple[Tensor, int] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random initialisation (tests and toy training); pretrained weights overwrite it."""
        std = self.cfg.width**-0.5
        nn.init.normal_(self.cls_token, std=std)
        nn.init.normal_(self.pos_embed, std=0.01)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=std)
        if self.proj is not None:
            nn.init.normal_(self.proj, std=std)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid of an input, or a ValueError if a side is not a multiple of the patch."""
        p = self.cfg.patch_size
        if height % p or width % p or height < p or width < p:
            raise ValueError(
                f"input size {height}x{width} is not a positive multiple of the patch size {p}"
            )
        return height // p, width // p

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """images: ``B x 3 x H x W`` (normalised) -> tokens ``B x (P+N) x D`` and the grid
        (P = 1 + registers: CLS, the registers, then the patches)."""
        grid = self.grid_for(images.shape[-2], images.shape[-1])
        x = self.patch_embed(images.to(self.patch_embed.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # B x N x D
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.position_table(grid, x.dtype)
        if self.register_tokens is not None:
            reg = self.register_tokens.to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], reg, x[:, 1:]], dim=1)
        return self.ln_pre(x), grid

    def resize_position_table(self, grid: tuple[int, int]) -> Tensor:
        """``pos_embed`` resized to ``grid`` with ``pos_embed_resize``: ``(1 + h*w) x D`` in the
        parameter's dtype (recomputed; :meth:`position_table` caches it)."""
        if self.pos_embed_resize == "bilinear_fp16":
            return interpolate_pos_embed_bilinear_fp16(
                self.pos_embed, grid, self.cfg.pretrained_grid
            )
        if self.pos_embed_resize in ("bicubic", "bicubic_offset"):
            offset = (
                0.1
                if self.pos_embed_resize == "bicubic_offset" and not self.cfg.num_registers
                else 0.0
            )
            return interpolate_pos_embed(
                self.pos_embed, grid, self.cfg.pretrained_grid, self.cfg.pos_antialias, offset
            )
        raise ValueError(
            f"pos_embed_resize {self.pos_embed_resize!r} is not one of {POS_EMBED_RESIZE}"
        )

    def position_table(self, grid: tuple[int, int], dtype: torch.dtype) -> Tensor:
        """The position table for ``grid`` in ``dtype``: ``(1 + h*w) x D``.

        The resize is a function of the parameter alone, so it is cached per (grid, dtype,
        resize mode) and reused while the parameter is unchanged: same storage (``data_ptr``,
        kept alive by the cache, so the address cannot be reused by another table) and same
        version counter (bumped by every in-place update through autograd-visible ops, e.g.
        ``load_state_dict``, optimisers, EMA). Writes through ``.data`` bypass the counter and
        are not detected. With gradients enabled and ``pos_embed.requires_grad`` the table is
        always recomputed: autograd needs the graph back to the parameter.
        """
        pos = self.pos_embed
        if torch.is_grad_enabled() and pos.requires_grad:
            return self.resize_position_table(grid).to(dtype)
        source = self._pos_source
        if (
            source is None
            or source[0].device != pos.device
            or source[0].data_ptr() != pos.data_ptr()
            or source[1] != pos._version
        ):
            self._pos_cache.clear()
            self._pos_source = (pos.detach(), pos._version)
        # tensors made under inference mode may only be used there: the mode is part of the key
        key = (grid, dtype, self.pos_embed_resize, torch.is_inference_mode_enabled())
        table = self._pos_cache.get(key)
        if table is None:
            if len(self._pos_cache) >= POS_CACHE_SIZE:  # drop the oldest entry
                del self._pos_cache[next(iter(self._pos_cache))]
            with torch.no_grad():  # also with grad enabled: pos_embed is frozen here
                table = self.resize_position_table(grid).to(dtype)
            self._pos_cache[key] = table
        return table

    def forward_intermediates(
        self,
        images: Tensor,
        attn_layers: Sequence[int] = (),
        n_blocks: int | None = None,
    ) -> ViTOutput:
        """Run the first ``n_blocks`` blocks (all by default).

        images: ``B x 3 x H x W``; H and W multiples of the patch size.
        attn_layers: 0-based block indices (negative counts from the last block of the model)
            whose head-averaged patch-to-patch attention to return.
        """
        n = self.cfg.layers if n_blocks is None else n_blocks
        wanted = {i % self.cfg.layers for i in attn_layers}
        x, grid = self.embed(images)
        p = self.cfg.num_prefix
        out = ViTOutput(tokens=[], grid=grid, prefix=p)
        for i, block in enumerate(self.blocks[:n]):
            x, attn = block(x, need_attn=i in wanted)
            out.tokens.append(x)
            if attn is not None:
                out.attentions[i] = attn[:, p:, p:]
        return out

    def head(self, tokens: Tensor) -> Tensor:
        """Final norm and (CLIP) projection: ``B x L x D`` -> ``B x L x E`` (E = D without proj)."""
        x = self.norm(tokens)
        return x @ self.proj.to(x.dtype) if self.proj is not None else x

    def forward(self, images: Tensor) -> Tensor:
        """Patch embeddings ``proj(norm(patch tokens))``: ``B x N x E``."""
        return self.head(self.forward_intermediates(images).last[:, self.cfg.num_prefix :])

    def normalize(self, images01: Tensor) -> Tensor:
        """``B x 3 x H x W`` in [0, 1] -> normalised with this backbone's mean/std."""
        mean = torch.tensor(self.cfg.mean, device=images01.device, dtype=images01.dtype)
        std = torch.tensor(self.cfg.std, device=images01.device, dtype=images01.dtype)
        return (images01 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def dino_vit_s16_config() -> ViTConfig:
    """DINO v1 ViT-S/16: width 384, 12 layers, 6 heads, GELU, LayerNorm eps 1e-6, ImageNet stats."""
    return ViTConfig(
        image_size=224,
        patch_size=16,
        width=384,
        layers=12,
        heads=6,
        act="gelu",
        ln_eps=1e-6,
        ln_pre=False,
        patch_bias=True,
        output_dim=None,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
