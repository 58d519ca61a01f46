"""Tiny stand-ins for the tests of the trainable side.

``FakeLabeler`` honours the ``PseudoLabeler`` call contract (``clip``, ``class_emb``,
``labeler(images01, labels, superpixels=None, cmpa=None)``) with a deterministic rule, so the
decoder / CMPA / trainer tests do not depend on the pseudo-label stage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssrseg.backbones.clip import CLIP, CLIPConfig, TextConfig
from ssrseg.backbones.tokenizer import WordTokenizer
from ssrseg.backbones.toy_shapes import word_text_config
from ssrseg.backbones.vit import ViTConfig
from ssrseg.config import SSRConfig, load_config
from ssrseg.engine.train import Trainer
from ssrseg.model.ssr import SSRModel


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread for the test (autouse where a test module imports it): on tiny tensors
    thread hand-offs cost far more than the maths on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_clip(seed: int = 0, patch: int = 8, layers: int = 3, width: int = 32) -> CLIP:
    torch.manual_seed(seed)
    vision = ViTConfig(
        image_size=32, patch_size=patch, width=width, layers=layers, heads=2, output_dim=16
    )
    text = TextConfig(
        vocab_size=20, context_length=8, width=16, layers=1, heads=2, eot_token_id=1, sot_token_id=0
    )
    clip = CLIP(CLIPConfig(vision=vision, text=text, embed_dim=16))
    return clip.eval()


def word_clip(words: tuple[str, ...], seed: int = 0) -> tuple[CLIP, WordTokenizer, ViTConfig]:
    """Seeded patch-8 CLIP (32 px, 3 vision blocks of width 32, 4 heads; one text block) with a
    word tokenizer over ``words`` (context 8), for tests that need real text embeddings of
    their prompts. Returns the vision config too: DINO stand-ins are derived from it."""
    torch.manual_seed(seed)
    tok = WordTokenizer(words, context_length=8)
    vision = ViTConfig(image_size=32, patch_size=8, width=32, layers=3, heads=4, output_dim=16)
    text = word_text_config(tok, width=32, layers=1, heads=4)
    return CLIP(CLIPConfig(vision=vision, text=text, embed_dim=16)), tok, vision


def tiny_config(**over: Any) -> SSRConfig:
    items = [
        "cmpa.in_dim=16",
        "cmpa.hidden_dim=16",
        "cmpa.out_dim=8",
        "decoder.embed_dim=16",
        "decoder.num_heads=2",
        "decoder.num_layers=1",
        "loss.aff_radius=2",
        "train.lr=1e-3",
        "train.warmup_iters=2",
        "train.amp=off",
    ]
    items += [f"{k.replace('__', '.')}={v}" for k, v in over.items()]
    return load_config(None, items)


class FakeLabeler(nn.Module):
    """CAMs = ReLU(cosine(patch embedding, class embedding)); pseudo label = argmax of
    [0.3 background, CAMs of the image's classes] at the patch grid, upsampled nearest."""

    def __init__(self, clip: CLIP, num_fg: int, seed: int = 0) -> None:
        super().__init__()
        self.clip = clip
        g = torch.Generator().manual_seed(seed)
        emb = torch.randn(num_fg, clip.cfg.embed_dim, generator=g)
        self.register_buffer("class_emb", F.normalize(emb, dim=-1))
        self.calls: list[bool] = []

    def forward(
        self,
        images01: Tensor,
        labels: list[tuple[int, ...]],
        superpixels: Tensor | None = None,
        cmpa: nn.Module | None = None,
    ) -> SimpleNamespace:
        self.calls.append(cmpa is not None)
        visual = self.clip.visual
        with torch.no_grad():
            out = visual.forward_intermediates(visual.normalize(images01), attn_layers=(-1,))
            emb = F.normalize(visual.head(out.last[:, 1:]), dim=-1)  # B x N x E
        h, w = out.grid
        cams, masks = [], []
        for b, lab in enumerate(labels):
            idx = torch.tensor(lab, dtype=torch.long)
            cam = (emb[b] @ self.class_emb[idx].t()).t().clamp_min(0).reshape(len(lab), h, w)
            cam = cam / (cam.flatten(1).amax(1)[:, None, None] + 1e-6)
            cams.append(cam)
            scores = torch.cat([torch.full((1, h, w), 0.3), cam])
            cls = torch.cat([torch.zeros(1, dtype=torch.long), idx + 1])
            masks.append(cls[scores.argmax(0)])
        small = torch.stack(masks)[:, None].float()
        full = F.interpolate(small, size=images01.shape[-2:], mode="nearest")[:, 0].long()
        return SimpleNamespace(
            cams=cams,
            refined=cams,
            labels=full,
            clip_out=out,
            patch_emb=emb.detach(),
            grid=out.grid,
        )


def tiny_ssr_model(cfg: SSRConfig, seed: int) -> SSRModel:
    """SSRModel on :func:`tiny_clip` (the same frozen backbone, seed 0, for every model) and a
    :class:`FakeLabeler` of 3 foreground classes; ``seed`` seeds the trainable parts."""
    clip = tiny_clip()
    torch.manual_seed(seed)
    return SSRModel(cfg, FakeLabeler(clip, 3), 4)


# tiny_config overrides of a quick training run on TinySegDataset (crop 32, batch 2, a log line
# every step, no validation, no affinity mask)
FAST_TRAIN = {
    "data__crop_size": 32,
    "data__num_workers": 0,
    "data__scale_range": "[0.75, 1.25]",
    "train__batch_size": 2,
    "train__val_every": 0,
    "train__log_every": 1,
    "affinity__mask": "none",
}


def kill_and_resume(cfg: SSRConfig, tmp_path: Path, stop_after: int) -> SSRModel:
    """Train ``cfg`` on :class:`TinySegDataset` uninterrupted (``tmp_path/a``) and, in
    ``tmp_path/b``, stopped after ``stop_after`` steps then resumed by a model that starts from
    other rng states and weights (a "new process"); asserts the resumed run ends at
    ``cfg.train.iterations`` with exactly the uninterrupted trainable state. Returns the
    resumed model."""
    straight = tiny_ssr_model(cfg, 0)
    Trainer(cfg, straight, TinySegDataset(), tmp_path / "a", progress=False).fit()
    first = tiny_ssr_model(cfg, 0)
    Trainer(cfg, first, TinySegDataset(), tmp_path / "b", progress=False).fit(stop_after=stop_after)
    torch.manual_seed(123)
    resumed = tiny_ssr_model(cfg, 7)
    trainer = Trainer(cfg, resumed, TinySegDataset(), tmp_path / "b", progress=False)
    assert trainer.fit(resume=tmp_path / "b") == cfg.train.iterations
    a, b = straight.trainable_state_dict(), resumed.trainable_state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    return resumed


def proto_inputs(
    model: SSRModel, batch: dict[str, Any], bg: Tensor | None = None
) -> dict[str, Any]:
    """The labeller's outputs on ``batch`` as :meth:`SSRModel.losses` takes them: ``tokens``,
    ``grid``, ``pseudo`` and the ``proto`` inputs (``bg_emb``: ``bg``, ``n_bg x in_dim``)."""
    out = model.labeler(batch["images"], batch["labels"])
    proto = {
        "patch_emb": out.patch_emb,
        "cams": out.cams,
        "labels": batch["labels"],
        "text_emb": model.labeler.class_emb,
    }
    if bg is not None:
        proto["bg_emb"] = bg
    return {"tokens": out.clip_out.tokens, "grid": out.grid, "pseudo": out.labels, "proto": proto}


def record_loss_targets(model: SSRModel) -> list[Tensor]:
    """Wrap ``model.losses.forward`` so each call's pseudo-label targets ``(B, H, W)`` are
    copied into the returned list (the trainer's padding / ignore handling shows there)."""
    seen: list[Tensor] = []
    real = model.losses.forward

    def spy(tokens, grid, targets, proto_inputs=None):  # type: ignore[no-untyped-def]
        seen.append(targets.clone())
        return real(tokens, grid, targets, proto_inputs)

    model.losses.forward = spy  # type: ignore[method-assign]
    return seen


def synthetic_batch(n: int, size: int = 32, num_fg: int = 3, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g)
    labels = [tuple(sorted({i % num_fg, (i + 1) % num_fg})) for i in range(n)]
    return {"images": images, "labels": labels}


class TinySegDataset:
    """In-memory dataset of ``Sample`` s: a coloured square of class c on a grey background."""

    def __init__(self, n: int = 6, size: int = 32, num_fg: int = 3, seed: int = 0) -> None:
        from ssrseg.data.base import Sample

        rng = np.random.default_rng(seed)
        self.class_names = tuple(f"c{i}" for i in range(num_fg))
        self.num_classes = num_fg + 1
        self.ids = [f"img{i}" for i in range(n)]
        colours = rng.integers(0, 256, size=(num_fg, 3))
        self.samples = []
        for i in range(n):
            c = i % num_fg
            image = np.full((size, size, 3), 128, dtype=np.uint8)
            mask = np.zeros((size, size), dtype=np.uint8)
            y, x = rng.integers(0, size // 2, size=2)
            image[y : y + size // 2, x : x + size // 2] = colours[c]
            mask[y : y + size // 2, x : x + size // 2] = c + 1
            self.samples.append(Sample(self.ids[i], image, (c,), mask, f"mem://{i}"))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Any:
        return self.samples[i]


def write_tiny_world(root: Path, n_train: int = 6, n_val: int = 2, size: int = 32) -> Path:
    """A toy-layout dataset on disk (classes.txt, backgrounds.txt, tags.json, PNG images and
    palette masks, split lists) plus tiny native CLIP / DINO weights; returns a YAML config
    path that trains on it. Images: a coloured square of its class on grey."""
    import json

    import yaml
    from PIL import Image

    from ssrseg.backbones.native import save_native
    from ssrseg.backbones.tokenizer import WordTokenizer
    from ssrseg.backbones.vit import VisionTransformer

    classes, backgrounds = ["red", "blue"], ["grass"]
    colours = {0: (220, 30, 30), 1: (30, 30, 220)}
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    (root / "backgrounds.txt").write_text("\n".join(backgrounds) + "\n")
    rng = np.random.default_rng(0)
    tags, splits = {}, {"train": [], "val": []}
    for i in range(n_train + n_val):
        image_id = f"im{i:03d}"
        c = i % 2
        image = np.full((size, size, 3), 120, dtype=np.uint8)
        mask = np.zeros((size, size), dtype=np.uint8)
        y, x = rng.integers(0, size // 2, size=2)
        image[y : y + size // 2, x : x + size // 2] = colours[c]
        mask[y : y + size // 2, x : x + size // 2] = c + 1
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.png")
        Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{image_id}.png")
        tags[image_id] = [classes[c]]
        splits["train" if i < n_train else "val"].append(image_id)
    (root / "tags.json").write_text(json.dumps(tags))
    for split, ids in splits.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")

    words = ["a", "photo", "of", *classes, *backgrounds]
    tok = WordTokenizer(words, context_length=8)
    torch.manual_seed(0)
    vision = ViTConfig(image_size=32, patch_size=8, width=32, layers=3, heads=2, output_dim=16)
    text = word_text_config(tok, width=16, layers=1, heads=2)
    ccfg = CLIPConfig(vision=vision, text=text, embed_dim=16)
    save_native(root / "clip.safetensors", CLIP(ccfg), "clip", ccfg, tok)
    # the DINO stand-in: the CLIP's image tower shape on DINO's code path, narrower and shallower
    dcfg = dataclasses.replace(
        vision, width=24, layers=2, output_dim=None, act="gelu", ln_pre=False, patch_bias=True
    )
    save_native(root / "dino.safetensors", VisionTransformer(dcfg), "dino", dcfg)
    cfg = {
        "backbone": {
            "clip": str(root / "clip.safetensors"),
            "dino": str(root / "dino.safetensors"),
            "half_precision": False,
        },
        "prompts": {"dataset": "toy", "template": "a photo of a {}."},
        "affinity": {"clip_layers": 2},
        "sgc": {"n_segments": 8, "n_clusters": 3},
        "par": {"iterations": 2, "dilations": [1, 2]},
        "cmpa": {"in_dim": 16, "hidden_dim": 16, "out_dim": 8, "refresh_every": 2},
        "decoder": {"embed_dim": 16, "num_layers": 1, "num_heads": 2},
        "loss": {"aff_radius": 2},
        "data": {
            "dataset": "toy",
            "root": str(root),
            "train_split": "train",
            "val_split": "val",
            "crop_size": 32,
            "scale_range": [0.75, 1.25],
            "num_workers": 0,
        },
        "train": {
            "iterations": 4,
            "batch_size": 2,
            "warmup_iters": 1,
            "val_every": 4,
            "ckpt_every": 2,
            "log_every": 1,
            "amp": "off",
            "lr": 1e-3,
        },
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
