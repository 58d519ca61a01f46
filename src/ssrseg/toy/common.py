"""Shared pieces of the toy backbones' training: shapes, data, schedule, evaluation."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ssrseg.backbones.clip import CLIP
from ssrseg.backbones.tokenizer import WordTokenizer
from ssrseg.backbones.vit import VisionTransformer
from ssrseg.data.toy import BACKGROUNDS, CLASS_NAMES, ToyWorld, WorldConfig
from ssrseg.toy import POOLS

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy"
PROMPT_TEMPLATE = "a photo of a {}."
BACKGROUND_TEMPLATE = "a photo of {}."


def check_pool(pool: str) -> str:
    """``pool`` if it names one of :data:`POOLS`, else ``ValueError``."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    return pool


def image_embedding(visual: VisionTransformer, images01: Tensor, pool: str = "mean") -> Tensor:
    """``B x E``: the patch mean (:func:`pooled_image_embedding`) or, ``pool="cls"``, the class
    token through the same norm and projection (OpenAI CLIP's training embedding)."""
    if check_pool(pool) == "mean":
        return pooled_image_embedding(visual, images01)
    out = visual.forward_intermediates(visual.normalize(images01))
    return visual.head(out.last[:, 0])


def pooled_image_embedding(visual: VisionTransformer, images01: Tensor) -> Tensor:
    """Toy-world image embedding: mean over patches of ``proj(norm(patch tokens))``, ``B x E``.

    This is the embedding SSR's Grad-CAM differentiates (SSR_SPEC section 3), so the tiny CLIP
    is trained with it instead of the class token.
    """
    out = visual.forward_intermediates(visual.normalize(images01))
    return visual.head(out.last[:, 1:]).mean(dim=1)


class RenderedImages(torch.utils.data.Dataset[tuple[Tensor, str, Tensor, int]]):
    """Scene ``i`` of a toy split as (``3 x H x W`` float [0,1], caption, tags multi-hot, bg)."""

    def __init__(self, split: str, seed: int, length: int, cfg: WorldConfig | None = None) -> None:
        self.world = ToyWorld(split, seed, cfg)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, str, Tensor, int]:
        s = self.world[index]
        image = torch.from_numpy(s.image).permute(2, 0, 1).float() / 255.0
        tags = torch.zeros(len(CLASS_NAMES))
        tags[list(s.labels)] = 1.0
        return image, s.caption, tags, s.background


def batches(
    split: str,
    seed: int,
    batch_size: int,
    start: int = 0,
    workers: int = 1,
    cfg: WorldConfig | None = None,
) -> Iterator[tuple[Tensor, list[str], Tensor, Tensor]]:
    """Endless stream of rendered batches (fresh scenes every step), in a worker process.

    ``cfg``: how scenes are drawn (default: the split's own world, see :class:`ToyWorld`).
    """
    data = RenderedImages(split, seed, 10**9, cfg)
    sampler = range(start, 10**9)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    for images, captions, tags, bgs in loader:
        yield images, list(captions), tags, bgs


@dataclass(frozen=True)
class ToyTrainArgs:
    """The arguments both toy trainers take, in the order both list them (their records keep
    ``vars(args)`` in field order, so the subclasses add their own fields after these and only
    override defaults here)."""

    out: str
    seed: int = 0
    steps: int | None = None
    minutes: float | None = 20.0
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 20
    width: int = 128
    layers: int = 4
    heads: int = 4


@dataclass
class Budget:
    """Stop at ``steps`` or after ``minutes`` of wall clock, whichever comes first.

    With only minutes given, the step count is fixed after ``probe`` steps from the measured
    speed, so the learning-rate schedule is a plain function of the step (and a rerun with
    ``--steps`` reproduces it).
    """

    steps: int | None
    minutes: float | None
    probe: int = 20
    start: float = 0.0

    def __post_init__(self) -> None:
        if self.steps is None and self.minutes is None:
            raise ValueError("give --steps or --minutes")
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def total(self, step: int) -> int | None:
        """Planned number of steps, known from step ``probe`` on (or at once with ``steps``)."""
        if self.steps is None and self.minutes is not None and step == self.probe:
            per_step = self.elapsed() / self.probe
            self.steps = max(self.probe + 1, int(self.minutes * 60 / per_step))
        return self.steps

    def done(self, step: int) -> bool:
        over_time = self.minutes is not None and self.elapsed() > self.minutes * 60
        return over_time or (self.steps is not None and step >= self.steps)


def training_record(
    args: ToyTrainArgs, step: int, seconds: float, ema_loss: float | None, **extra: Any
) -> dict[str, Any]:
    """What a toy training stores with its weights: seed, steps, images, time, the final
    (smoothed) loss, ``extra`` and the arguments (without the output path)."""
    return {
        "seed": args.seed,
        "steps": step,
        "batch_size": args.batch_size,
        "images_seen": step * args.batch_size,
        "train_seconds": round(seconds, 1),
        "final_loss": round(float(ema_loss or 0.0), 4),
        **extra,
        "args": {k: v for k, v in vars(args).items() if k != "out"},
    }


def cosine_lr(step: int, total: int | None, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 0 over ``total`` steps (flat until it is known)."""
    if step < warmup:
        return base * (step + 1) / warmup
    if total is None:
        return base
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def scheduled_lr(
    budget: Budget, step: int, bar: Any, opt: torch.optim.Optimizer, args: ToyTrainArgs
) -> tuple[int | None, float]:
    """(the budget's current step estimate, the cosine learning rate of ``step``), the rate set
    on every group of ``opt`` and the progress bar's total kept to the estimate."""
    total = budget.total(step)
    if total is not None and bar.total != total:
        bar.total = total
    lr = cosine_lr(step, total, args.lr, args.warmup)
    for group in opt.param_groups:
        group["lr"] = lr
    return total, lr


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def encode_prompts(
    clip: CLIP, tokenizer: WordTokenizer, names: Sequence[str], template: str
) -> Tensor:
    """L2-normalised text embeddings of ``template`` filled with each name, ``K x E``."""
    tokens = tokenizer([template.format(n) for n in names]).to(clip.logit_scale.device)
    return F.normalize(clip.encode_text(tokens), dim=-1)


@torch.no_grad()
def zero_shot_scores(
    clip: CLIP,
    tokenizer: WordTokenizer,
    split: str = "debiased",
    n: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    pool: str = "mean",
) -> dict[str, float]:
    """Zero-shot tag metrics on the first ``n`` scenes of ``split``.

    top1: the best-scoring class is one of the image's tags. all_first: the image's k tags are
    exactly the k best classes. background: the best background prompt is the scene's context.
    ``pool``: the image embedding (:func:`image_embedding`); the CAM always uses the patch mean.
    """
    clip.eval()
    class_emb = encode_prompts(clip, tokenizer, CLASS_NAMES, PROMPT_TEMPLATE)
    bg_emb = encode_prompts(clip, tokenizer, BACKGROUNDS, BACKGROUND_TEMPLATE)
    data = RenderedImages(split, seed, n)
    top1 = all_first = bg_hits = 0
    for lo in range(0, n, batch_size):
        items = [data[i] for i in range(lo, min(n, lo + batch_size))]
        images = torch.stack([it[0] for it in items])
        emb = F.normalize(image_embedding(clip.visual, images, pool), dim=-1)
        scores = emb @ class_emb.t()
        bg_pred = (emb @ bg_emb.t()).argmax(dim=1)
        for row, (_, _, tags, bg), bgp in zip(scores, items, bg_pred, strict=True):
            present = set(np.flatnonzero(tags.numpy()).tolist())
            order = row.argsort(descending=True).tolist()
            top1 += order[0] in present
            all_first += set(order[: len(present)]) == present
            bg_hits += int(bgp) == bg
    return {"top1": top1 / n, "all_first": all_first / n, "background": bg_hits / n, "n": n}
