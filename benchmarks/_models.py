"""Random-weight models of the real sizes for the benchmarks (weights do not change the cost).

CLIP ViT-B/16 image tower and DINO ViT-S/16 at their real sizes; the text tower only encodes the
prompts once, so a 1-layer one over a word vocabulary will do. ``tiny=True`` builds narrow towers
(width 64) for the quick end-to-end check of the benchmark scripts (``--tiny``), whose timings
mean nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ssrseg.backbones.clip import CLIP, CLIPConfig
from ssrseg.backbones.tokenizer import WordTokenizer
from ssrseg.backbones.toy_shapes import word_text_config
from ssrseg.backbones.vit import VisionTransformer, ViTConfig, dino_vit_s16_config
from ssrseg.cam.prompts import ClassPrompts
from ssrseg.config import SSRConfig, load_config
from ssrseg.pseudo.labeler import PseudoLabeler

CONFIGS = Path(__file__).parents[1] / "configs"


def preset(name: str, overrides: list[str] | None = None) -> SSRConfig:
    """A config preset of ``configs/`` (``voc``, ``clip_es``, ...) with overrides."""
    return load_config(CONFIGS / f"{name}.yaml", ["data.num_workers=0", *(overrides or [])])


def vision_configs(tiny: bool) -> tuple[ViTConfig, ViTConfig]:
    """(CLIP image tower, DINO) shapes: ViT-B/16 and ViT-S/16, or narrow 12-layer stand-ins."""
    clip, dino = ViTConfig(), dino_vit_s16_config()
    if tiny:
        clip = dataclasses.replace(clip, width=64, heads=2)
        dino = dataclasses.replace(dino, width=64, heads=2, layers=2)
    return clip, dino


def word_tokenizer(prompts: ClassPrompts) -> WordTokenizer:
    words = " ".join(prompts.class_texts() + prompts.background_texts())
    return WordTokenizer(words.replace(",", " ").replace(".", " ").split(), context_length=16)


Towers = tuple[CLIP, WordTokenizer, VisionTransformer]


def build_towers(tiny: bool = False, seed: int = 0) -> Towers:
    """Random CLIP (real image tower, 1-layer text tower) + tokenizer + DINO."""
    prompts = ClassPrompts.voc()
    tok = word_tokenizer(prompts)
    text = word_text_config(tok, width=512, layers=1, heads=8)
    vision, dino_cfg = vision_configs(tiny)
    torch.manual_seed(seed)
    clip = CLIP(CLIPConfig(vision=vision, text=text))
    dino = VisionTransformer(dino_cfg)
    return clip, tok, dino


def make_labeler(
    cfg: SSRConfig,
    device: torch.device,
    towers: Towers | None = None,
    tiny: bool = False,
) -> PseudoLabeler:
    """A pseudo labeller for ``cfg`` on (shared) towers; DINO only when the config uses it."""
    clip, tok, dino = towers if towers is not None else build_towers(tiny)
    use_dino = cfg.backbone.use_dino and cfg.affinity.use_dino_attention
    labeler = PseudoLabeler(clip, tok, dino if use_dino else None, ClassPrompts.voc(), cfg)
    return labeler.to(device)
