"""Contrastive training of the toy world's tiny CLIP on rendered image-caption pairs.

Symmetric InfoNCE with a learnable temperature; captions that are identical within a batch are
all positives of each other (the toy world repeats captions). The image side is the mean of the
projected patch tokens (see :func:`ssrseg.toy.common.pooled_image_embedding`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ssrseg.backbones.clip import CLIP
from ssrseg.backbones.native import save_native
from ssrseg.backbones.toy_shapes import toy_clip_config, toy_tokenizer
from ssrseg.backbones.weights import load_clip
from ssrseg.data.toy import weakened_config
from ssrseg.toy.common import (
    Budget,
    ToyTrainArgs,
    batches,
    check_pool,
    image_embedding,
    scheduled_lr,
    training_record,
    zero_shot_scores,
)


@dataclass(frozen=True)
class ClipTrainArgs(ToyTrainArgs):
    text_layers: int = 2
    image_size: int = 128
    patch_size: int = 8
    threads: int = 1
    workers: int = 1
    eval_images: int = 500
    small_sample: int = 64
    save_every_min: float = 5.0
    init: str | None = None  # continue from these weights (same shape) with a fresh schedule
    # Context / pair bias of the pre-training corpus relative to the scored world (1 = the same
    # world as the `train` split; below 1: the `corpus` stream of `weakened_config`).
    bias_scale: float = 1.0
    # Image embedding trained: "mean" of the projected patch tokens (what SSR's Grad-CAM scores)
    # or "cls", the class token as OpenAI CLIP is trained (the CAM still scores the patch mean).
    pool: str = "mean"
    # Probability that a corpus caption names the background (1 = always, as the scored world).
    caption_background: float = 1.0


def contrastive_loss(img: Tensor, txt: Tensor, scale: Tensor, captions: list[str]) -> Tensor:
    """Symmetric InfoNCE. img, txt: ``B x E`` normalised; equal captions are positives."""
    logits = scale * img @ txt.t()
    same = torch.tensor(
        [[a == b for b in captions] for a in captions], dtype=torch.float32, device=img.device
    )
    target = same / same.sum(dim=1, keepdim=True)
    loss_i = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
    loss_t = -(target * logits.t().log_softmax(dim=1)).sum(dim=1).mean()
    return (loss_i + loss_t) / 2


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        # Matrices decay; norms, biases, embeddings' positions and the temperature do not.
        (decay if p.ndim >= 2 and "pos_embed" not in name else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def save_clip(model: CLIP, path: Path, extra: dict[str, Any]) -> None:
    tokenizer = toy_tokenizer(model.cfg.text.context_length)
    save_native(path, model, "clip", model.cfg, tokenizer=tokenizer, extra=extra)


def corpus_batches(args: ClipTrainArgs) -> Iterator[tuple[Tensor, list[str], Tensor, Tensor]]:
    """The pre-training stream: the `train` world at ``bias_scale`` 1 (the committed weights'
    schedule, unchanged), else the weakened world (and captions naming the background with
    probability ``caption_background``) under its own split name ``corpus`` so that its scenes
    are never the scored `train` split's."""
    if args.bias_scale == 1.0 and args.caption_background == 1.0:
        return batches("train", args.seed, args.batch_size, workers=args.workers)
    cfg = replace(
        weakened_config(args.bias_scale, args.image_size),
        background_words=args.caption_background,
    )
    return batches("corpus", args.seed, args.batch_size, workers=args.workers, cfg=cfg)


def train_clip(args: ClipTrainArgs) -> dict[str, Any]:
    """Train, save ``args.out``, and return the run's record (manifest entry)."""
    from tqdm import tqdm

    check_pool(args.pool)  # before the render worker starts, not at the first step
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = toy_tokenizer()
    cfg = toy_clip_config(
        tokenizer,
        image_size=args.image_size,
        patch_size=args.patch_size,
        width=args.width,
        layers=args.layers,
        heads=args.heads,
        embed_dim=args.width,
        text_layers=args.text_layers,
    )
    model = CLIP(cfg)
    if args.init is not None:
        start, _ = load_clip(args.init)
        if start.cfg != cfg:
            raise ValueError(f"{args.init}: its shape differs from the requested tiny CLIP")
        model.load_state_dict(start.state_dict())
    opt = torch.optim.AdamW(_param_groups(model, args.weight_decay), lr=args.lr)
    budget = Budget(args.steps, args.minutes)
    out = Path(args.out)
    stream = corpus_batches(args)
    bar = tqdm(desc="train-clip", unit="step", total=args.steps)
    step, last_save, ema_loss = 0, time.monotonic(), None
    model.train()
    while not budget.done(step):
        images, captions, _, _ = next(stream)
        flip = torch.rand(images.shape[0]) < 0.5  # captions do not depend on left/right
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        _, lr = scheduled_lr(budget, step, bar, opt, args)
        img = F.normalize(image_embedding(model.visual, images, args.pool), dim=-1)
        txt = F.normalize(model.encode_text(tokenizer(captions).to(images.device)), dim=-1)
        scale = model.logit_scale.clamp(max=4.6052).exp()  # at most 100, as CLIP
        loss = contrastive_loss(img, txt, scale, captions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{ema_loss:.3f}", lr=f"{lr:.2e}", scale=f"{scale.item():.1f}")
        if time.monotonic() - last_save > args.save_every_min * 60:
            save_clip(model, out, {"partial": True, "steps": step})
            last_save = time.monotonic()
    bar.close()
    seconds = budget.elapsed()
    model.eval()
    final_scale = round(float(model.logit_scale.detach().exp()), 3)
    record = training_record(args, step, seconds, ema_loss, logit_scale=final_scale)
    record["zero_shot_debiased"] = zero_shot_scores(model, tokenizer, "debiased", args.eval_images)
    record["zero_shot_val"] = zero_shot_scores(model, tokenizer, "val", args.eval_images)
    if args.pool != "mean":  # the class-token zero-shot, as CLIP reports it
        record[f"zero_shot_debiased_{args.pool}"] = zero_shot_scores(
            model, tokenizer, "debiased", args.eval_images, pool=args.pool
        )
    record["zero_shot_small_sample"] = zero_shot_scores(
        model, tokenizer, "debiased", args.small_sample
    )
    save_clip(model, out, {"steps": step, "seed": args.seed, "record": json.dumps(record)})
    return record
