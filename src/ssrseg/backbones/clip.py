"""CLIP: the image tower (:class:`~ssrseg.backbones.vit.VisionTransformer`) and a text tower.

Both OpenAI CLIP ViT-B/16 and the toy world's tiny CLIP are instances of :class:`CLIP`; only the
:class:`CLIPConfig` differs. The text tower pools the token at the end-of-text id (the first
occurrence of ``eot_token_id``; for OpenAI's BPE that is the highest id, the same as ``argmax``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssrseg.backbones.vit import Block, LayerNorm, VisionTransformer, ViTConfig


@dataclass(frozen=True)
class TextConfig:
    """Shape of CLIP's text transformer. Defaults are OpenAI ViT-B/16's."""

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    eot_token_id: int = 49407
    sot_token_id: int = 49406
    act: str = "quick_gelu"
    ln_eps: float = 1e-5


@dataclass(frozen=True)
class CLIPConfig:
    """Image tower + text tower + shared embedding width. Defaults are OpenAI ViT-B/16."""

    vision: ViTConfig = field(default_factory=ViTConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 512

    def __post_init__(self) -> None:
        if self.vision.output_dim != self.embed_dim:
            raise ValueError(
                f"vision.output_dim {self.vision.output_dim} != embed_dim {self.embed_dim}"
            )


class TextTransformer(nn.Module):
    """Causal transformer over token ids, pooled at the end-of-text token and projected."""

    def __init__(self, cfg: TextConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        block_cfg = ViTConfig(
            width=cfg.width, layers=cfg.layers, heads=cfg.heads, act=cfg.act, ln_eps=cfg.ln_eps
        )
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.zeros(cfg.context_length, cfg.width))
        self.blocks = nn.ModuleList([Block(block_cfg) for _ in range(cfg.layers)])
        self.norm = LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.proj = nn.Parameter(torch.zeros(cfg.width, embed_dim))
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        nn.init.normal_(self.proj, std=cfg.width**-0.5)

    def eot_positions(self, tokens: Tensor) -> Tensor:
        """tokens: ``B x L`` -> index of the first end-of-text token per row, ``B``."""
        is_eot = tokens == self.cfg.eot_token_id
        if not bool(is_eot.any(dim=1).all()):
            raise ValueError("every token row must contain the end-of-text token")
        return is_eot.int().argmax(dim=1)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens: ``B x L`` (L <= context_length) -> text embeddings ``B x E`` (not normalised)."""
        if tokens.shape[1] > self.cfg.context_length:
            raise ValueError(
                f"{tokens.shape[1]} tokens exceed the context length {self.cfg.context_length}"
            )
        # in the blocks' dtype (fp16 after half_weights: OpenAI's encode_text casts both terms)
        dtype = self.proj.dtype
        x = self.token_embed(tokens).to(dtype) + self.pos_embed[: tokens.shape[1]].to(dtype)
        for block in self.blocks:
            x, _ = block(x, causal=True)
        x = self.norm(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), self.eot_positions(tokens)]
        return pooled @ self.proj


class CLIP(nn.Module):
    """CLIP with the encoders the method needs.

    ``encode_image`` uses the class token (standard CLIP); SSR's Grad-CAM instead pools the
    projected patch tokens (see ``ssrseg.cam.gradcam``), available from ``visual.head``.
    """

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTransformer(cfg.vision)
        self.text = TextTransformer(cfg.text, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: Tensor) -> Tensor:
        """images: ``B x 3 x H x W`` normalised -> ``B x E`` (class token, not normalised)."""
        out = self.visual.forward_intermediates(images)
        return self.visual.head(out.last[:, 0])

    def encode_text(self, tokens: Tensor) -> Tensor:
        """tokens: ``B x L`` -> ``B x E`` (not normalised)."""
        return self.text(tokens)

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled cosine logits: (image->text ``B x T``, text->image ``T x B``)."""
        img = F.normalize(self.encode_image(images), dim=-1)
        txt = F.normalize(self.encode_text(tokens), dim=-1)
        logits = self.logit_scale.exp() * img @ txt.t()
        return logits, logits.t()
