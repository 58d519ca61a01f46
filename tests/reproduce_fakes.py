"""Fakes for the ``ssrseg reproduce`` tests: tiny random-weight backbones (native format, a word
tokenizer covering the VOC and COCO prompts) and tiny VOC / COCO folders in the real layouts
(tests/data/data_fakes.py), with a config that runs every stage in seconds on a CPU."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent / "data"))
from data_fakes import make_coco, make_voc

from ssrseg.backbones.clip import CLIP, CLIPConfig, TextConfig
from ssrseg.backbones.native import save_native
from ssrseg.backbones.tokenizer import WordTokenizer
from ssrseg.backbones.vit import VisionTransformer, ViTConfig
from ssrseg.cam.prompts import ClassPrompts
from ssrseg.data.classes import VOC_CLASSES

REPO = Path(__file__).resolve().parents[1]


def prompt_words() -> list[str]:
    """Every word of the VOC and COCO class and background sentences."""
    tok = WordTokenizer([], 8)
    words: list[str] = []
    for prompts in (ClassPrompts.voc(), ClassPrompts.coco()):
        for text in (*prompts.class_texts(), *prompts.background_texts()):
            words += tok.split(text)
    return list(dict.fromkeys(words))


def write_weights(folder: Path) -> tuple[Path, Path]:
    """Random CLIP (ViT patch 8, 2 blocks, embed 16) and DINO (patch 8) in the native format."""
    torch.manual_seed(0)
    tok = WordTokenizer(prompt_words(), context_length=24)
    vision = ViTConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2, output_dim=16)
    text = TextConfig(
        vocab_size=tok.vocab_size, context_length=24, width=16, layers=1, heads=2,
        eot_token_id=tok.eot_token_id, sot_token_id=tok.sot_token_id,
    )  # fmt: skip
    ccfg = CLIPConfig(vision=vision, text=text, embed_dim=16)
    clip = save_native(folder / "clip.safetensors", CLIP(ccfg), "clip", ccfg, tok)
    dcfg = dataclasses.replace(
        vision, width=24, heads=2, output_dim=None, act="gelu", ln_pre=False, patch_bias=True
    )
    dino = save_native(folder / "dino.safetensors", VisionTransformer(dcfg), "dino", dcfg)
    return clip, dino


def tiny_overrides(clip: Path, dino: Path, root: Path) -> list[str]:
    """Overrides of configs/voc.yaml / coco.yaml that make every stage take seconds."""
    return [
        f"backbone.clip={clip}",
        f"backbone.dino={dino}",
        f"data.root={root}",
        "backbone.half_precision=false",
        "affinity.clip_layers=1",
        "sgc.n_segments=6",
        "sgc.n_clusters=3",
        "par.iterations=2",
        "par.dilations=[1,2]",
        "cmpa.in_dim=16",
        "cmpa.hidden_dim=16",
        "cmpa.out_dim=8",
        "cmpa.refresh_every=2",
        "cmpa.projected_cam_from=2",
        "decoder.embed_dim=16",
        "decoder.num_layers=1",
        "decoder.num_heads=2",
        "decoder.use_layers=1",
        "loss.aff_radius=2",
        "data.crop_size=32",
        "data.num_workers=0",
        "train.iterations=4",
        "train.batch_size=2",
        "train.warmup_iters=1",
        "train.val_every=0",
        "train.ckpt_every=2",
        "train.log_every=1",
        "train.amp=off",
        "train.lr=1e-3",
        "infer.long_side=32",
        "infer.scales=[1.0]",
        "crf.iterations=2",
    ]


# 0-based VOC classes per image id; train_aug = SegmentationClassAug ids minus val.
VOC_SPLITS: dict[str, dict[str, list[int]]] = {
    "train": {"2007_000001": [0], "2007_000002": [14], "2007_000003": [0, 14]},
    "val": {"2008_000001": [0, 14], "2008_000002": [6]},
    "test": {"2009_000001": [], "2009_000002": []},
}
VOC_AUG = {"2010_000001": [6], "2010_000002": [11, 14]}


def make_fake_voc(root: Path) -> Path:
    """VOCdevkit/VOC2012 under ``root`` with train / val / test lists and SBD-style extras."""
    return make_voc(root, VOC_SPLITS, VOC_CLASSES, aug=VOC_AUG)


def make_fake_coco(root: Path) -> Path:
    """COCO 2014 split-folder layout with 3 train and 2 val images (instances JSON tags)."""
    make_coco(root, {"11": [0], "12": [2, 56], "13": [16]}, layout="split", split="train")
    make_coco(root, {"21": [0, 2], "22": [56]}, layout="split", split="val")
    return root
