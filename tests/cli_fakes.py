"""A tiny toy-layout dataset with random-weight backbones (native format) and the config
overrides that point a command at it: the shared world of the CLI tests."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssrseg.backbones.clip import CLIP, CLIPConfig
from ssrseg.backbones.native import save_native
from ssrseg.backbones.tokenizer import WordTokenizer
from ssrseg.backbones.toy_shapes import word_text_config
from ssrseg.backbones.vit import VisionTransformer, ViTConfig

CLASSES = ("square", "disk")
WORDS = ("a", "photo", "of", "square", "disk", "water", "grass")
SIZES = {"img0": (30, 45), "img1": (40, 24), "img2": (33, 33)}  # H x W, not multiples of 8


def _write_dataset(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    tags = {}
    for i, (name, (h, w)) in enumerate(SIZES.items()):
        img = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.png")
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[h // 4 : h // 2, w // 4 : w // 2] = 1 + i % 2
        Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{name}.png")
        tags[name] = [CLASSES[i % 2]] if i < 2 else list(CLASSES)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(SIZES) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "backgrounds.txt").write_text("water\ngrass\n")
    (root / "tags.json").write_text(json.dumps(tags))


def _write_weights(folder: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    tok = WordTokenizer(WORDS, context_length=8)
    vision = ViTConfig(image_size=32, patch_size=8, width=32, layers=2, heads=4, output_dim=16)
    text = word_text_config(tok, width=32, layers=1, heads=4)
    ccfg = CLIPConfig(vision=vision, text=text, embed_dim=16)
    clip_path = save_native(folder / "clip.safetensors", CLIP(ccfg), "clip", ccfg, tok)
    dcfg = dataclasses.replace(
        vision, width=24, heads=3, output_dim=None, act="gelu", ln_pre=False, patch_bias=True
    )
    dino_path = save_native(folder / "dino.safetensors", VisionTransformer(dcfg), "dino", dcfg)
    return clip_path, dino_path


def write_cli_world(base: Path, fast: bool = False) -> list[str]:
    """Dataset and weights under ``base``; returns the overrides that use them (``fast``: one
    PAR iteration, for tests that check behaviour rather than numbers)."""
    _write_dataset(base / "toy")
    clip_path, dino_path = _write_weights(base)
    return [
        f"backbone.clip={clip_path}",
        f"backbone.dino={dino_path}",
        "data.dataset=toy",
        f"data.root={base / 'toy'}",
        "prompts.dataset=toy",
        "prompts.template=a photo of {}",
        "affinity.clip_layers=2",
        f"par.iterations={1 if fast else 2}",
        "sgc.n_segments=10",
    ]


def with_broken_image(overrides: list[str], copy: Path, image_id: str) -> list[str]:
    """``overrides`` (of :func:`write_cli_world`) pointed at a copy of the dataset, made at
    ``copy``, in which image ``image_id`` is not a readable PNG."""
    root = Path(next(s for s in overrides if s.startswith("data.root=")).split("=", 1)[1])
    shutil.copytree(root, copy)
    (copy / "JPEGImages" / f"{image_id}.png").write_bytes(b"not a png")
    return [s for s in overrides if not s.startswith("data.root=")] + [f"data.root={copy}"]
