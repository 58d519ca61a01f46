"""DINO-style self-distillation of the toy world's tiny ViT (the DINO slot of SSR).

Student and teacher share the architecture; the teacher is an exponential moving average of the
student and sees only the two global crops, the student sees global and local crops
(multi-crop). Teacher outputs are centred (running mean) and sharpened (low temperature);
the student learns to match them across crops with a cross-entropy.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssrseg.backbones.vit import Block, VisionTransformer
from ssrseg.toy.common import Budget, RenderedImages, batches, cosine_lr, toy_dino_config


@dataclass(frozen=True)
class DinoTrainArgs:
    out: str
    seed: int = 0
    steps: int | None = None
    minutes: float | None = 12.0
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.04
    warmup: int = 20
    width: int = 128
    layers: int = 4
    heads: int = 4
    patch_size: int = 8
    global_size: int = 96
    local_size: int = 48
    local_crops: int = 4
    out_dim: int = 1024
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    ema_start: float = 0.97
    threads: int = 1
    workers: int = 1
    eval_images: int = 200
    save_every_min: float = 5.0


class DinoHead(nn.Module):
    """MLP -> bottleneck -> L2 norm -> weight-normalised prototypes: ``B x D -> B x K``."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 256, bottleneck: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        self.prototypes = nn.Parameter(torch.randn(out_dim, bottleneck) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return x @ F.normalize(self.prototypes, dim=-1).t()


class DinoNet(nn.Module):
    """Backbone + head; the class token after the final norm feeds the head."""

    def __init__(self, backbone: VisionTransformer, head: DinoHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops01: list[Tensor]) -> Tensor:
        """crops01: groups of same-size crops ``B x 3 x s x s`` -> ``(sum B) x K``."""
        outs = []
        for crops in crops01:
            tokens = self.backbone.forward_intermediates(self.backbone.normalize(crops)).last
            outs.append(self.head(self.backbone.head(tokens[:, 0])))
        return torch.cat(outs)


def random_crops(
    images: Tensor, size: int, scale: tuple[float, float], gen: torch.Generator
) -> Tensor:
    """Random-resized crops with flips and colour jitter: ``B x 3 x H x W -> B x 3 x s x s``."""
    b = images.shape[0]
    area = torch.empty(b).uniform_(*scale, generator=gen)
    log_ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
    ratio = log_ratio.exp()
    sw = (area * ratio).sqrt().clamp(max=1.0)
    sh = (area / ratio).sqrt().clamp(max=1.0)
    tx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - sw)
    ty = (torch.rand(b, generator=gen) * 2 - 1) * (1 - sh)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sw * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sh, ty
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    out = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    # Colour jitter: brightness, contrast, saturation, and grey scale 20% of the time.
    bright = torch.empty(b, 1, 1, 1).uniform_(0.7, 1.3, generator=gen)
    contrast = torch.empty(b, 1, 1, 1).uniform_(0.7, 1.3, generator=gen)
    sat = torch.empty(b, 1, 1, 1).uniform_(0.6, 1.4, generator=gen)
    sat = torch.where(torch.rand(b, 1, 1, 1, generator=gen) < 0.2, torch.zeros_like(sat), sat)
    out = out * bright
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean
    grey = out.mean(dim=1, keepdim=True)
    out = (out - grey) * sat + grey
    return out.clamp(0, 1)


def dino_loss(
    student: Tensor, teacher: Tensor, center: Tensor, n_global: int, s_temp: float, t_temp: float
) -> Tensor:
    """Cross-entropy between teacher (global crops) and student (all crops), skipping a crop
    paired with itself. student: ``(V*B) x K`` grouped by crop; teacher: ``(2*B) x K``."""
    batch = teacher.shape[0] // n_global
    s_chunks = (student / s_temp).log_softmax(dim=-1).split(batch)
    t_chunks = ((teacher - center) / t_temp).softmax(dim=-1).detach().split(batch)
    total, terms = student.new_zeros(()), 0
    for i, t in enumerate(t_chunks):
        for j, s in enumerate(s_chunks):
            if i == j:
                continue
            total = total + (-(t * s).sum(dim=-1)).mean()
            terms += 1
    return total / terms


@torch.no_grad()
def attention_foreground_auc(
    backbone: VisionTransformer, n: int, seed: int = 0
) -> dict[str, float]:
    """How well the last block's class-token attention separates objects from background.

    Mean over ``n`` debiased scenes of the ROC AUC of the CLS -> patch attention (heads averaged)
    against "patch mostly covered by an object".
    """
    backbone.eval()
    data = RenderedImages("debiased", seed, n)
    aucs = []
    for i in range(n):
        image, _, _, _ = data[i]
        mask = torch.from_numpy(data.world[i].mask > 0).float()[None, None]
        x = backbone.normalize(image[None])
        tokens, grid = backbone.embed(x)
        for block in backbone.blocks[:-1]:
            tokens, _ = block(tokens)
        last = cast(Block, backbone.blocks[-1])
        h = last.norm1(tokens)
        qkv = last.attn.qkv(h).reshape(1, h.shape[1], 3, last.attn.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        attn = ((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])).softmax(dim=-1)
        cls_attn = attn[0, :, 0, 1:].mean(dim=0).numpy()
        fg = (F.adaptive_avg_pool2d(mask, grid).flatten() > 0.5).numpy()
        if fg.all() or not fg.any():
            continue
        pos, neg = cls_attn[fg], cls_attn[~fg]
        aucs.append(
            float(
                (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
            )
        )
    return {"cls_attention_fg_auc": float(np.mean(aucs)) if aucs else float("nan"), "n": len(aucs)}


def save_dino(backbone: VisionTransformer, path: Path, extra: dict[str, Any]) -> None:
    from ssrseg.backbones.native import save_native

    save_native(path, backbone, "dino", backbone.cfg, extra=extra)


def train_dino(args: DinoTrainArgs) -> dict[str, Any]:
    """Train, save the backbone to ``args.out`` and return the run's record."""
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    cfg = toy_dino_config(args.global_size, args.patch_size, args.width, args.layers, args.heads)
    student = DinoNet(VisionTransformer(cfg), DinoHead(args.width, args.out_dim))
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    center = torch.zeros(1, args.out_dim)
    decay = [p for n, p in student.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [
        p for n, p in student.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n)
    ]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
    )
    budget = Budget(args.steps, args.minutes)
    out = Path(args.out)
    stream = batches("train", args.seed + 1000, args.batch_size, workers=args.workers)
    bar = tqdm(desc="train-dino", unit="step", total=args.steps)
    step, last_save, ema_loss = 0, time.monotonic(), None
    while not budget.done(step):
        images, _, _, _ = next(stream)
        globals_ = torch.cat(
            [random_crops(images, args.global_size, (0.35, 1.0), gen) for _ in range(2)]
        )
        locals_ = torch.cat(
            [
                random_crops(images, args.local_size, (0.08, 0.35), gen)
                for _ in range(args.local_crops)
            ]
        )
        total = budget.total(step)
        if total is not None and bar.total != total:
            bar.total = total
        lr = cosine_lr(step, total, args.lr, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        student.train()
        s_out = student([globals_, locals_])
        with torch.no_grad():
            t_out = teacher([globals_])
        loss = dino_loss(s_out, t_out, center, 2, args.student_temp, args.teacher_temp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()
        progress = step / total if total else 0.0
        momentum = 1 - (1 - args.ema_start) * (math.cos(math.pi * progress) + 1) / 2
        with torch.no_grad():
            for ps, pt in zip(student.parameters(), teacher.parameters(), strict=True):
                pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)
            batch_center = t_out.mean(dim=0, keepdim=True)
            center.mul_(args.center_momentum).add_(batch_center, alpha=1 - args.center_momentum)
        step += 1
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{ema_loss:.3f}", lr=f"{lr:.2e}", m=f"{momentum:.4f}")
        if time.monotonic() - last_save > args.save_every_min * 60:
            save_dino(teacher.backbone, out, {"partial": True, "steps": step})
            last_save = time.monotonic()
    bar.close()
    seconds = budget.elapsed()
    # The teacher is DINO's released network.
    record: dict[str, Any] = {
        "seed": args.seed,
        "steps": step,
        "batch_size": args.batch_size,
        "images_seen": step * args.batch_size,
        "train_seconds": round(seconds, 1),
        "final_loss": round(float(ema_loss or 0.0), 4),
        "args": {k: v for k, v in vars(args).items() if k != "out"},
    }
    record["attention"] = attention_foreground_auc(teacher.backbone, args.eval_images)
    save_dino(
        teacher.backbone, out, {"steps": step, "seed": args.seed, "record": json.dumps(record)}
    )
    return record
