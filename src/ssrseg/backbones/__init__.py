"""Frozen backbones: one ViT for CLIP's image tower, DINO and DINOv2, CLIP's text tower, tokenizers,
and weight loading (registry names, local files, hub ids; see ``ssrseg.backbones.weights``)."""

from ssrseg.backbones.clip import CLIP, CLIPConfig, TextConfig
from ssrseg.backbones.dino import run_on_grid
from ssrseg.backbones.dinov2 import build_dinov2, dinov2_config
from ssrseg.backbones.native import WeightsError, save_native
from ssrseg.backbones.tokenizer import Tokenizer, WordTokenizer
from ssrseg.backbones.vit import VisionTransformer, ViTConfig, ViTOutput, dino_vit_s16_config
from ssrseg.backbones.weights import load_clip, load_dino

__all__ = [
    "CLIP",
    "CLIPConfig",
    "TextConfig",
    "Tokenizer",
    "ViTConfig",
    "ViTOutput",
    "VisionTransformer",
    "WeightsError",
    "WordTokenizer",
    "build_dinov2",
    "dino_vit_s16_config",
    "dinov2_config",
    "load_clip",
    "load_dino",
    "run_on_grid",
    "save_native",
]
