"""DINO-style self-distillation of the toy world's tiny ViT (the DINO slot of SSR).

Student and teacher share the architecture; the teacher is an exponential moving average of the
student and sees only the two global crops, the student sees global and local crops
(multi-crop). Teacher outputs are centred (running mean) and sharpened (low temperature);
the student learns to match them across crops with a cross-entropy.

With ``mim_weight > 0`` an iBOT-style masked-patch term is added: blocks of the student's
global-crop patches are replaced by a learned mask token, and each masked patch's output must
match the teacher's output for the same patch of the unmasked crop (its own centre, the same
head). Why: with the class-token loss alone the last block's patch queries get no gradient at
all (the class token's output does not depend on them), so its patch-to-patch attention, the
attention SSR's affinity uses, is never trained; filling a masked patch from its object's
other patches asks attention to group patches by object.
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

from ssrseg.backbones.native import save_native
from ssrseg.backbones.toy_shapes import toy_dino_config
from ssrseg.backbones.vit import Block, VisionTransformer, interpolate_pos_embed
from ssrseg.toy.common import (
    Budget,
    RenderedImages,
    ToyTrainArgs,
    batches,
    scheduled_lr,
    training_record,
)
from ssrseg.toy.diagnostics import attention_grouping_by_layer, toy_scenes


@dataclass(frozen=True)
class DinoTrainArgs(ToyTrainArgs):
    minutes: float | None = 12.0  # the base's fields, this trainer's defaults
    batch_size: int = 32
    weight_decay: float = 0.04
    patch_size: int = 8
    global_size: int = 96
    local_size: int = 48
    local_crops: int = 4
    out_dim: int = 1024
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    ema_start: float = 0.97
    # iBOT-style masked-patch distillation (0 disables it): weight, share of the global crops
    # that are masked, and the range of the masked share of a masked crop's patches
    mim_weight: float = 0.0
    mim_prob: float = 0.5
    mim_ratio: tuple[float, float] = (0.1, 0.5)
    # what feeds the DINO head: "cls" (DINO) or "mean" (mean of the final patch tokens, as the
    # toy CLIP's image embedding: every patch then carries the crop-level objective)
    pool: str = "cls"
    # patch denoising (0 disables it): the student's global crops get an independent colour
    # offset per patch (N(0, sigma^2) per channel) and a linear head must return each patch's
    # clean pixels from its final token
    denoise_weight: float = 1.0
    denoise_sigma: float = 0.5
    # weight of DINO's self-distillation term; 0 (the default recipe, docs/toy_world.md): the
    # ViT learns from patch denoising alone (no teacher forward, no local crops; the saved
    # network is still the EMA teacher)
    dino_weight: float = 0.0
    threads: int = 1
    workers: int = 1
    eval_images: int = 200
    # same-label attention of every block on this many val scenes, every eval_every steps
    # (0: only at the end)
    grouping_images: int = 48
    eval_every: int = 0
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


def masked_tokens(
    backbone: VisionTransformer, images01: Tensor, mask: Tensor | None, mask_token: Tensor
) -> Tensor:
    """All blocks and the final norm, with masked patch embeddings replaced by ``mask_token``.

    images01: ``B x 3 x s x s``; mask: ``B x N`` bool or None; returns ``B x (1+N) x D``. Same
    maths as ``backbone.forward_intermediates`` when nothing is masked (the mask is inserted
    before the position embedding, as in iBOT).
    """
    x = backbone.normalize(images01)
    grid = backbone.grid_for(x.shape[-2], x.shape[-1])
    patches = backbone.patch_embed(x).flatten(2).transpose(1, 2)  # B x N x D
    if mask is not None:
        patches = torch.where(mask[..., None], mask_token.to(patches.dtype), patches)
    cls = backbone.cls_token.expand(patches.shape[0], 1, -1)
    tokens = torch.cat([cls, patches], dim=1)
    tokens = tokens + interpolate_pos_embed(backbone.pos_embed, grid, backbone.cfg.pretrained_grid)
    tokens = backbone.ln_pre(tokens)
    for block in backbone.blocks:
        tokens, _ = block(tokens)
    return backbone.norm(tokens)


class DinoNet(nn.Module):
    """Backbone + head (shared by the class token and, for iBOT, the patch tokens), mask token
    and the denoising pixel head (final patch token -> the patch's ``3 x p x p`` pixels)."""

    def __init__(self, backbone: VisionTransformer, head: DinoHead, pool: str = "cls") -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be cls | mean, got {pool!r}")
        self.backbone = backbone
        self.head = head
        self.pool = pool
        self.mask_token = nn.Parameter(torch.zeros(backbone.cfg.width))
        p = backbone.cfg.patch_size
        self.pixel_head = nn.Linear(backbone.cfg.width, 3 * p * p)

    def _image_token(self, tokens: Tensor) -> Tensor:
        """``B x (1+N) x D`` -> the head's input ``B x D`` (class token or patch mean)."""
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)

    def forward(self, crops01: list[Tensor]) -> Tensor:
        """crops01: groups of same-size crops ``B x 3 x s x s`` -> ``(sum B) x K``."""
        return torch.cat([self.forward_tokens(c, None, patches=False)[0] for c in crops01])

    def forward_tokens(
        self, crops01: Tensor, mask: Tensor | None, patches: bool = True
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Head outputs of the image ``B x K``, (with ``patches``) of every patch ``B x N x K``,
        and the final tokens ``B x (1+N) x D``; ``mask`` (``B x N`` bool) hides patches."""
        tokens = masked_tokens(self.backbone, crops01, mask, self.mask_token)
        image = self.head(self._image_token(tokens))
        return image, (self.head(tokens[:, 1:]) if patches else None), tokens


def patch_colour_noise(images01: Tensor, patch: int, sigma: float, gen: torch.Generator) -> Tensor:
    """Shift each ``patch x patch`` cell's colour by its own ``N(0, sigma^2)`` offset per
    channel, clamped to [0, 1]: ``B x 3 x H x W`` -> same. A patch alone cannot undo its offset;
    averaging with the other patches of its object (same colour, independent offsets) can."""
    b, c, h, w = images01.shape
    offsets = torch.randn(b, c, h // patch, w // patch, generator=gen) * sigma
    return (images01 + F.interpolate(offsets, scale_factor=patch, mode="nearest")).clamp(0, 1)


def patch_pixels(images: Tensor, patch: int) -> Tensor:
    """``B x 3 x H x W`` -> each patch's pixels ``B x N x (3 * patch * patch)`` (row-major
    patches, the ViT's token order)."""
    return F.unfold(images, patch, stride=patch).transpose(1, 2)


def block_masks(
    batch: int,
    grid: tuple[int, int],
    prob: float,
    ratio: tuple[float, float],
    gen: torch.Generator,
    min_block: int = 4,
) -> Tensor:
    """iBOT-style block-wise masks ``B x (h*w)`` bool.

    Each image is masked with probability ``prob``; a masked image gets rectangles (at least
    ``min_block`` patches, aspect ratio 0.3-3.3) until a share drawn from ``ratio`` of its
    patches is covered. Blocks rather than single patches: a lone masked patch can be filled
    in from its neighbours' colour, a block needs the rest of its object.
    """
    h, w = grid
    out = torch.zeros(batch, h, w, dtype=torch.bool)
    for b in range(batch):
        if float(torch.rand((), generator=gen)) >= prob:
            continue
        lo, hi = ratio
        target = round((lo + (hi - lo) * float(torch.rand((), generator=gen))) * h * w)
        for _ in range(100):
            if int(out[b].sum()) >= target:
                break
            left = target - int(out[b].sum())
            area = min_block + float(torch.rand((), generator=gen)) * max(0, left - min_block)
            aspect = math.exp(
                float(torch.empty(()).uniform_(math.log(0.3), -math.log(0.3), generator=gen))
            )
            bh = max(1, min(h, round(math.sqrt(area * aspect))))
            bw = max(1, min(w, round(math.sqrt(area / aspect))))
            top = int(torch.randint(0, h - bh + 1, (), generator=gen))
            lft = int(torch.randint(0, w - bw + 1, (), generator=gen))
            out[b, top : top + bh, lft : lft + bw] = True
    return out.reshape(batch, h * w)


def masked_patch_loss(
    student: Tensor, teacher: Tensor, center: Tensor, mask: Tensor, s_temp: float, t_temp: float
) -> Tensor:
    """iBOT's patch term: cross-entropy of the centred, sharpened teacher patch distribution
    against the student's, over masked patches only, averaged per image then over the images
    that have a masked patch (zero, in the graph, when none has).

    student / teacher: ``B x N x K`` head outputs of the same crop (student masked, teacher
    not); center: ``1 x K``; mask: ``B x N`` bool.
    """
    t = ((teacher - center) / t_temp).softmax(dim=-1).detach()
    ce = -(t * (student / s_temp).log_softmax(dim=-1)).sum(dim=-1)  # B x N
    m = mask.float()
    per_image = (ce * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    has = mask.any(dim=1)
    if not bool(has.any()):
        return student.sum() * 0.0
    return per_image[has].mean()


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


def grouping_scenes(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """The scenes the training run scores attention grouping on: the first ``n`` of the biased
    ``val`` split (never scored by the demo; the debiased split stays held out)."""
    return toy_scenes("val", n, seed)


def grouping(backbone: VisionTransformer, scenes: tuple[Tensor, Tensor]) -> dict[str, float]:
    """Same-label attention mass / chance of every block (``ssrseg.toy.diagnostics``),
    keyed by the 0-based block index as a string (JSON)."""
    by_layer = attention_grouping_by_layer(backbone, *scenes)
    return {str(k): round(v, 3) for k, v in by_layer.items()}


def save_dino(backbone: VisionTransformer, path: Path, extra: dict[str, Any]) -> None:
    save_native(path, backbone, "dino", backbone.cfg, extra=extra)


def train_dino(args: DinoTrainArgs) -> dict[str, Any]:
    """Train, save the backbone to ``args.out`` and return the run's record."""
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    cfg = toy_dino_config(args.global_size, args.patch_size, args.width, args.layers, args.heads)
    student = DinoNet(VisionTransformer(cfg), DinoHead(args.width, args.out_dim), args.pool)
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    center = torch.zeros(1, args.out_dim)
    center_patch = torch.zeros(1, 1, args.out_dim)
    use_mim = args.mim_weight > 0
    use_denoise = args.denoise_weight > 0
    use_dino = args.dino_weight > 0
    if not (use_mim or use_denoise or use_dino):
        raise ValueError("all loss weights are 0: set dino_weight, mim_weight or denoise_weight")
    # the network saved and scored: DINO's released network is its EMA teacher; with no
    # teacher-based term the teacher is only a lagging average, so the student is kept
    kept = teacher if (use_dino or use_mim) else student
    g = args.global_size // args.patch_size
    eval_images = grouping_scenes(args.grouping_images, args.seed)
    history: list[dict[str, Any]] = []
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
        locals_ = (
            torch.cat(
                [
                    random_crops(images, args.local_size, (0.08, 0.35), gen)
                    for _ in range(args.local_crops)
                ]
            )
            if use_dino
            else None
        )
        total, lr = scheduled_lr(budget, step, bar, opt, args)
        student.train()
        mask = (
            block_masks(globals_.shape[0], (g, g), args.mim_prob, args.mim_ratio, gen)
            if use_mim
            else None
        )
        # the student's global crops carry the denoising noise for both terms (for the DINO
        # term it is one more augmentation); the teacher sees them clean
        s_in = (
            patch_colour_noise(globals_, args.patch_size, args.denoise_sigma, gen)
            if use_denoise
            else globals_
        )
        s_cls, s_patch, s_tokens = student.forward_tokens(s_in, mask, patches=use_mim)
        loss = torch.zeros(())
        t_out: Tensor | None = None
        t_patch: Tensor | None = None
        if use_dino or use_mim:
            with torch.no_grad():
                t_out, t_patch, _ = teacher.forward_tokens(globals_, None, patches=use_mim)
        if use_dino:
            assert locals_ is not None and t_out is not None
            s_out = torch.cat([s_cls, student([locals_])])
            cls_loss = dino_loss(s_out, t_out, center, 2, args.student_temp, args.teacher_temp)
            loss = loss + args.dino_weight * cls_loss
        den = torch.zeros(())
        if use_denoise:
            clean = patch_pixels(student.backbone.normalize(globals_), args.patch_size)
            den = (student.pixel_head(s_tokens[:, 1:]) - clean).abs().mean()
            loss = loss + args.denoise_weight * den
        mim = torch.zeros(())
        if use_mim:
            assert s_patch is not None and t_patch is not None and mask is not None
            mim = masked_patch_loss(
                s_patch, t_patch, center_patch, mask, args.student_temp, args.teacher_temp
            )
            loss = loss + args.mim_weight * mim
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()
        progress = step / total if total else 0.0
        momentum = 1 - (1 - args.ema_start) * (math.cos(math.pi * progress) + 1) / 2
        with torch.no_grad():
            for ps, pt in zip(student.parameters(), teacher.parameters(), strict=True):
                pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)
            if t_out is not None:
                batch_center = t_out.mean(dim=0, keepdim=True)
                center.mul_(args.center_momentum).add_(batch_center, alpha=1 - args.center_momentum)
            if t_patch is not None:
                patch_center = t_patch.mean(dim=(0, 1), keepdim=True)
                center_patch.mul_(args.center_momentum).add_(
                    patch_center, alpha=1 - args.center_momentum
                )
        step += 1
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        bar.update(1)
        bar.set_postfix(
            loss=f"{ema_loss:.3f}",
            mim=f"{float(mim.detach()):.3f}",
            den=f"{float(den.detach()):.3f}",
            lr=f"{lr:.2e}",
            m=f"{momentum:.4f}",
        )
        if args.eval_every and step % args.eval_every == 0:
            history.append({"step": step, "grouping": grouping(kept.backbone, eval_images)})
            tqdm.write(f"step {step}: same-label attention / chance {history[-1]['grouping']}")
        if time.monotonic() - last_save > args.save_every_min * 60:
            save_dino(kept.backbone, out, {"partial": True, "steps": step})
            last_save = time.monotonic()
    bar.close()
    seconds = budget.elapsed()
    record = training_record(args, step, seconds, ema_loss)
    record["attention"] = attention_foreground_auc(kept.backbone, args.eval_images)
    record["attention"]["same_label_mass_by_block"] = grouping(kept.backbone, eval_images)
    record["attention"]["grouping_scenes"] = f"val 0..{args.grouping_images - 1}"
    if history:
        record["grouping_history"] = history
    save_dino(kept.backbone, out, {"steps": step, "seed": args.seed, "record": json.dumps(record)})
    return record
