"""Fakes for the ``ssrseg reproduce`` tests: random-weight backbones in the real files' layouts
(``ssrseg.backbones.random_weights``, tiny widths) and tiny VOC / COCO folders in the real
layouts (tests/data/data_fakes.py), with a config that runs every stage in seconds on a CPU."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent / "data"))
from data_fakes import make_coco, make_voc

from ssrseg.data.classes import VOC_CLASSES

REPO = Path(__file__).resolve().parents[1]


def write_weights(folder: Path) -> tuple[Path, Path]:
    """Random CLIP ViT-B/16 and DINO ViT-S/16 in their real files' layouts (OpenAI state dict
    with its BPE vocabulary beside it, official DINO ``.pth``), tiny widths, patch 16."""
    from ssrseg.backbones.random_weights import write_random_weights

    clip = write_random_weights("clip_vit_b16.openai", folder / "clip" / "ViT-B-16.pt", "tiny")
    dino = folder / "dino" / "dino_deitsmall16_pretrain.pth"
    write_random_weights("dino_vit_s16", dino, "tiny")
    return clip[0], dino


def embed_dim(clip: Path) -> int:
    """CLIP's joint embedding width, read from the OpenAI state dict (sizes ``cmpa.in_dim``)."""
    state = torch.load(clip, map_location="cpu", weights_only=True)
    return int(state["text_projection"].shape[1])


def tiny_overrides(clip: Path, dino: Path, root: Path) -> list[str]:
    """Overrides of configs/voc.yaml / coco.yaml that make every stage take seconds."""
    return [
        f"backbone.clip={clip}",
        f"backbone.dino={dino}",
        f"data.root={root}",
        "backbone.half_precision=false",
        "sgc.n_segments=6",
        "sgc.n_clusters=3",
        "par.iterations=2",
        "par.dilations=[1,2]",
        f"cmpa.in_dim={embed_dim(clip)}",
        "cmpa.hidden_dim=16",
        "cmpa.out_dim=8",
        "cmpa.refresh_every=2",
        "cmpa.projected_cam_from=2",
        "decoder.embed_dim=16",
        "decoder.num_layers=1",
        "decoder.num_heads=2",
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


def fake_voc_world(base: Path) -> dict[str, Any]:
    """A fake VOC with real-layout tiny random weights under ``base``: ``{"base", "overrides"}``."""
    make_fake_voc(base / "data")
    clip, dino = write_weights(base)
    return {"base": base, "overrides": tiny_overrides(clip, dino, base / "data")}
