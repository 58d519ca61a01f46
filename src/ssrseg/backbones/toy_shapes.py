"""The toy world's backbone shapes: its word tokenizer, the tiny CLIP and the tiny DINO ViT.

Here, beside the backbones, so that both the toy trainers (:mod:`ssrseg.toy`) and the random
weights of ``ssrseg weights fake`` (:mod:`ssrseg.backbones.random_weights`) build the same
models.
"""

from __future__ import annotations

import dataclasses

from ssrseg.backbones.clip import CLIPConfig, TextConfig
from ssrseg.backbones.tokenizer import WordTokenizer
from ssrseg.backbones.vit import ViTConfig, dino_vit_s16_config
from ssrseg.data.toy import vocabulary


def toy_tokenizer(context_length: int = 32) -> WordTokenizer:
    """Word tokenizer over the toy world's whole vocabulary."""
    return WordTokenizer(vocabulary(), context_length=context_length)


def toy_clip_config(
    tokenizer: WordTokenizer,
    image_size: int = 128,
    patch_size: int = 8,
    width: int = 128,
    layers: int = 4,
    heads: int = 4,
    embed_dim: int = 128,
    text_layers: int = 2,
) -> CLIPConfig:
    """The tiny CLIP: CLIP ViT-B/16's code path (pre-LN, QuickGELU) at toy width and depth."""
    vision = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        width=width,
        layers=layers,
        heads=heads,
        output_dim=embed_dim,
    )
    text = word_text_config(tokenizer, width, text_layers, heads)
    return CLIPConfig(vision=vision, text=text, embed_dim=embed_dim)


def word_text_config(tokenizer: WordTokenizer, width: int, layers: int, heads: int) -> TextConfig:
    """CLIP's text tower over a word tokenizer (its vocabulary, context length and SOT / EOT
    ids) at the given width, depth and head count."""
    return TextConfig(
        vocab_size=tokenizer.vocab_size,
        context_length=tokenizer.context_length,
        width=width,
        layers=layers,
        heads=heads,
        eot_token_id=tokenizer.eot_token_id,
        sot_token_id=tokenizer.sot_token_id,
    )


def toy_dino_config(
    image_size: int = 96, patch_size: int = 8, width: int = 128, layers: int = 4, heads: int = 4
) -> ViTConfig:
    """The tiny DINO ViT: DINO's code path (GELU, no ln_pre, patch bias, ImageNet stats) of
    :func:`~ssrseg.backbones.vit.dino_vit_s16_config` at toy size."""
    return dataclasses.replace(
        dino_vit_s16_config(),
        image_size=image_size,
        patch_size=patch_size,
        width=width,
        layers=layers,
        heads=heads,
    )
