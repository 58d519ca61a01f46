"""Why does CMPA lower the toy world's initial CAM? One cheap measurement per hypothesis.

``python -m research.cmpa_probe`` (or ``--quick`` for a seconds-long smoke run) prints a table.

The CMPA heads only see frozen inputs: the raw CLIP patch embeddings and the detached initial
CAMs of each training image. The probe computes those once (one Grad-CAM pass over the training
images of the demo's world) and then trains fresh heads with the trainer's loss, optimiser groups
and schedule but without the decoder, so a head-training run costs seconds instead of a demo.
Each variant is scored like the demo's Table 4 row: the initial CAM in the CMPA-projected space
(no attention, no mask, no PAR; background = 1 - max CAM) against the ground truth of the first
``n_score`` training images (the demo's scored images). Differences from the demo: no crop /
rescale / flip augmentation, no decoder loss (it does not reach the heads anyway).

Hypotheses and their measurements (docs/toy_world.md, "Why CMPA hurts"):
- temperature: the projected CAM's softmax scale is 1 / tau (20 at tau 0.05) where the raw CAM
  uses the toy CLIP's 15 -> score the same heads at scale 15 and other scales, the raw CAM at 20,
  and heads trained with tau frozen at 1/15;
- head training length: heads trained for the demo's iterations and for many more;
- BatchNorm statistics: the CAM runs the heads in eval mode on running statistics -> score the
  same heads after recomputing the statistics exactly over the training patches;
- the symmetric term: heads trained without it;
- when the projected CAM starts: the long run scored at checkpoints (the first iteration where
  it passes the raw CAM is the earliest sensible ``cmpa.projected_cam_from``);
- background words (found here): TSA never sees the background prompts in L_proto, yet the
  projected CAM puts them in its softmax -> score without background words, and train TSA with
  the background prompts as extra negatives;
- the fix tried (``cmpa.background_term``, our decision): a background term in L_proto that
  pulls the CAM's background feature to a background prompt in the projected space;
- what the CAM differentiates (found here): the heads learn to classify CAM-weighted means
  (``pair_acc``) but the projected Grad-CAM scores the mean of ISA over all patches
  (``image_acc``, raw space for comparison);
- context the CAM spills onto the pooled features: heads trained on features pooled with the
  true masks (``pooling="gt"``); the context bias of the heads' training scenes: heads trained
  on debiased scenes (``scenes="debiased"``, never scored);
- what each space encodes per patch against how the Grad-CAM reads it: ``cam_auc`` (the actual
  CAM's object-vs-own-background AUC), ``patch_auc`` / ``patch_top1`` (plain patch-text cosine)
  and ``sim_miou`` (a CAM read from those cosines without a gradient), plus the home-context
  leak of every row;
- where the Grad-CAM reads (found here): ``out_cam_miou`` / ``out_cam_auc``, the Grad-CAM taken
  at the patch embeddings (the heads' input) instead of the last block's input; it puts the
  projected CAM above the raw one (``cam.projected_target``). ``--score-start`` scores scenes
  the demo never scores.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssrseg.backbones.weights import load_clip
from ssrseg.cam.gradcam import embedding_cams, normalise_cams
from ssrseg.cam.prompts import prompts_from_config
from ssrseg.config import SSRConfig, load_config
from ssrseg.data.toy import BACKGROUNDS, CLASS_NAMES, ToyWorld
from ssrseg.engine.schedule import lr_factor
from ssrseg.metrics import ConfusionMatrix
from ssrseg.protocol.demo import default_config_path
from ssrseg.pseudo.labeler import PseudoLabeler
from ssrseg.rectify.affinity import upsample
from ssrseg.rectify.cmpa import (
    CMPA,
    FeatureBank,
    masked_average_pool,
    prototype_loss,
    prototype_store,
    symmetric_prototype_loss,
)
from ssrseg.rectify.labels import scores_to_labels, with_background
from ssrseg.toy.diagnostics import context_leak_table, home_contexts, patch_labels

if TYPE_CHECKING:
    from ssrseg.pseudo.labeler import PseudoLabeler

INITIAL_CAM: dict[str, dict[str, Any]] = {
    "affinity": {"use_clip_attention": False, "use_dino_attention": False, "mask": "none"},
    "par": {"enabled": False},
    "backbone": {"use_dino": False},
}


def merged(cfg: SSRConfig, overrides: dict[str, dict[str, Any]]) -> SSRConfig:
    """``cfg`` with section fields replaced."""
    changes = {k: dataclasses.replace(getattr(cfg, k), **v) for k, v in overrides.items()}
    return dataclasses.replace(cfg, **changes)


@dataclass
class ProbeData:
    """Frozen inputs of the heads for ``n`` images: images ``n x 3 x H x W``, masks ``n x H x W``,
    labels per image, raw CLIP patch embeddings ``n x N x E``, initial CAMs per image
    ``K_i x h x w``, patch grid, raw initial-CAM mIoU of the scored images."""

    images: Tensor
    masks: Tensor
    labels: list[tuple[int, ...]]
    patch_emb: Tensor
    cams: list[Tensor]
    grid: tuple[int, int]
    contexts: list[int] = dataclasses.field(default_factory=list)  # index into BACKGROUNDS


def render(
    split: str, n: int, seed: int, start: int = 0
) -> tuple[Tensor, Tensor, list[tuple[int, ...]], list[int]]:
    """Scenes ``start .. start + n - 1`` of a toy split: images in [0, 1], masks, labels,
    background contexts."""
    world = ToyWorld(split, seed)
    samples = [world[i] for i in range(start, start + n)]
    images = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1) for s in samples])
    masks = torch.stack([torch.from_numpy(s.mask).long() for s in samples])
    labels = [tuple(s.labels) for s in samples]
    return images.float() / 255.0, masks, labels, [int(s.background) for s in samples]


def build_labeler(cfg: SSRConfig, background_words: bool = True) -> PseudoLabeler:
    """The project's pseudo labeller for the initial-CAM row (``cfg`` already merged)."""
    clip, tok = load_clip(cfg.backbone.clip)
    p = cfg.prompts
    prompts = prompts_from_config(
        p.dataset, p.template, p.background_words, background_words, data_root=cfg.data.root
    )
    return PseudoLabeler(clip, tok, None, prompts, cfg)


@torch.no_grad()
def label_and_score(
    labeler: PseudoLabeler,
    images: Tensor,
    masks: Tensor,
    labels: Sequence[tuple[int, ...]],
    cmpa: CMPA | None = None,
    batch: int = 16,
    keep: Callable[[Any, int], None] | None = None,
) -> float:
    """mIoU (%) of the labeller's labels over background + the classes; ``keep(out, lo)`` sees
    each batch's output."""
    n_classes = int(labeler.class_emb.shape[0]) + 1
    conf = ConfusionMatrix(n_classes)
    for lo in range(0, images.shape[0], batch):
        out = labeler(images[lo : lo + batch], list(labels[lo : lo + batch]), cmpa=cmpa)
        for j in range(out.labels.shape[0]):
            conf.update(out.labels[j], masks[lo + j])
        if keep is not None:
            keep(out, lo)
    return 100.0 * float(conf.compute()["miou"])


def cache_inputs(
    labeler: PseudoLabeler, n_train: int, seed: int, split: str = "train", start: int = 0
) -> ProbeData:
    """One raw Grad-CAM pass over ``n_train`` scenes of ``split`` from index ``start``."""
    images, masks, labels, contexts = render(split, n_train, seed, start)
    embs: list[Tensor] = []
    cams: list[Tensor] = []
    grid: list[tuple[int, int]] = []

    def keep(out: Any, lo: int) -> None:
        embs.append(out.patch_emb.float())
        cams.extend(c.float() for c in out.cams)
        grid[:] = [out.grid]

    label_and_score(labeler, images, masks, labels, keep=keep)
    return ProbeData(images, masks, labels, torch.cat(embs), cams, grid[0], contexts)


def ground_truth_weights(
    masks: Tensor, labels: Sequence[tuple[int, ...]], grid: tuple[int, int]
) -> list[Tensor]:
    """Per image ``K_i x h x w``: the share of each patch's pixels that belong to each of the
    image's classes (in ``labels`` order; mask value c + 1 = class c). ``masks``: ``n x H x W``
    with H, W multiples of the grid. Used in place of the CAMs to pool class features with the
    true object extent (an oracle for what the CAM-weighted means carry besides the object)."""
    h, w = grid
    out = []
    for mask, labs in zip(masks, labels, strict=True):
        onehot = torch.stack([(mask == c + 1).float() for c in labs]) if labs else None
        if onehot is None:
            out.append(torch.zeros(0, h, w))
            continue
        out.append(F.adaptive_avg_pool2d(onehot[None], (h, w))[0])
    return out


def with_ground_truth_pooling(data: ProbeData) -> ProbeData:
    """``data`` whose CAMs are replaced by :func:`ground_truth_weights` (so ``1 - max`` is the
    true background share of each patch)."""
    return dataclasses.replace(data, cams=ground_truth_weights(data.masks, data.labels, data.grid))


@dataclass(frozen=True)
class HeadRun:
    """One way of training the heads."""

    name: str
    iterations: int
    cmpa: dict[str, Any] = dataclasses.field(default_factory=dict)  # cmpa.* overrides
    fixed_scale: float | None = None  # freeze tau at 1 / fixed_scale
    background_negatives: bool = False  # background prompts join P_T as negatives
    pooling: str = "cam"  # "cam": f_ic pooled with the initial CAM; "gt": with the true masks
    scenes: str = "train"  # training scenes: "train" (the demo's world) or "debiased"


def loss_with_background(
    cmpa: CMPA,
    data: ProbeData,
    idx: Sequence[int],
    class_emb: Tensor,
    bg_emb: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """L_proto (+ symmetric term) with the background prompts as extra text prototypes that no
    f_ic may match: returns (loss, detached normalised f_ic, classes)."""
    proj = cmpa.project_image(data.patch_emb[list(idx)])
    pooled = masked_average_pool(proj, [data.cams[i] for i in idx], data.grid)
    feats = torch.cat(pooled)
    classes = torch.tensor([c for i in idx for c in data.labels[i]], dtype=torch.long)
    protos = cmpa.project_text(torch.cat([class_emb, bg_emb]))
    c = class_emb.shape[0]
    loss = prototype_loss(feats, classes, protos, cmpa.tau)
    if cmpa.cfg.symmetric:
        valid = cmpa.proto_valid.bool()
        loss = loss + symmetric_prototype_loss(protos[:c], cmpa.visual_protos, valid, cmpa.tau)
    return loss, F.normalize(feats.detach(), dim=-1), classes


def train_heads(
    cfg: SSRConfig,
    data: ProbeData,
    run: HeadRun,
    class_emb: Tensor,
    bg_emb: Tensor,
    checkpoints: Sequence[int] = (),
    on_checkpoint: Callable[[int, CMPA], None] | None = None,
    seed: int = 0,
) -> tuple[CMPA, dict[str, float]]:
    """Fresh CMPA heads trained on the cached inputs with the trainer's loss, AdamW groups and
    warm-up + poly schedule over ``run.iterations`` (prototype refresh every
    ``cmpa.refresh_every``). Returns the heads and the last step's figures."""
    ccfg = dataclasses.replace(cfg.cmpa, **run.cmpa)
    if run.fixed_scale is not None:
        ccfg = dataclasses.replace(ccfg, tau_init=1.0 / run.fixed_scale)
    torch.manual_seed(seed)
    n_fg = class_emb.shape[0]
    cmpa = CMPA(ccfg, n_fg)
    store = prototype_store(cmpa)
    t = cfg.train
    heads = list(cmpa.isa.parameters()) + list(cmpa.tsa.parameters())
    groups: list[dict[str, Any]] = [{"params": heads, "weight_decay": t.weight_decay}]
    if run.fixed_scale is None:
        groups.append({"params": [cmpa.log_tau], "weight_decay": 0.0})
    else:
        cmpa.log_tau.requires_grad_(False)
    opt = torch.optim.AdamW(groups, lr=t.lr)
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    n = data.patch_emb.shape[0]
    last: dict[str, float] = {}
    cmpa.train()
    for step in range(run.iterations):
        if len(order) < t.batch_size:
            order += torch.randperm(n, generator=gen).tolist()
        idx, order = order[: t.batch_size], order[t.batch_size :]
        factor = lr_factor(step, run.iterations, t.warmup_iters, t.warmup_ratio, t.poly_power)
        for g in opt.param_groups:
            g["lr"] = t.lr * factor
        if run.background_negatives:
            loss, feats, classes = loss_with_background(cmpa, data, idx, class_emb, bg_emb)
        else:
            loss, _, feats, classes = cmpa.loss(
                data.patch_emb[idx],
                [data.cams[i] for i in idx],
                [data.labels[i] for i in idx],
                data.grid,
                class_emb,
                bg_emb,
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        store.add(feats, classes)
        if (step + 1) % ccfg.refresh_every == 0:
            if isinstance(store, FeatureBank):
                cmpa.refresh(store, class_emb)
            else:
                cmpa.refresh(store)
            store.reset()
        last = {"loss": float(loss.detach()), "tau": float(cmpa.tau.detach())}
        if on_checkpoint is not None and step + 1 in checkpoints:
            on_checkpoint(step + 1, cmpa)
            cmpa.train()
    return cmpa, last


@torch.no_grad()
def recalibrated(
    cmpa: CMPA,
    data: ProbeData,
    class_emb: Tensor,
    batch: int = 32,
    bg_emb: Tensor | None = None,
) -> CMPA:
    """A copy whose BatchNorm running statistics are the exact statistics of every training
    patch (ISA) and of the texts TSA trained on (TSA: the class texts, plus the background
    prompts ``bg_emb`` when the background term trained them), instead of the momentum-averaged
    ones."""
    out = copy.deepcopy(cmpa)
    for m in out.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the passes below
    out.train()
    for lo in range(0, data.patch_emb.shape[0], batch):
        out.project_image(data.patch_emb[lo : lo + batch])
    out.project_text(class_emb if bg_emb is None else torch.cat([class_emb, bg_emb]))
    out.eval()
    return out


def _probe_space(cmpa: CMPA | None, feats: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
    """Patch features ``B x N x E`` and text embeddings ``K x E`` in the space an accuracy is
    scored in: through the eval-mode heads (``ISA`` / ``TSA``), or as given when ``cmpa`` is
    None (the raw CLIP space). Every accuracy below compares both spaces the same way."""
    if cmpa is None:
        return feats, text
    cmpa.eval()
    return cmpa.project_image(feats), cmpa.project_text(text)


@torch.no_grad()
def pair_accuracy(
    cmpa: CMPA | None, data: ProbeData, idx: Sequence[int], class_emb: Tensor
) -> float:
    """Share of (image, class) pairs whose pooled feature is nearest (cosine) to its own class
    text among all classes: in the projected space (eval-mode heads) or, with ``cmpa`` None,
    in the raw CLIP space."""
    feats, text = _probe_space(cmpa, data.patch_emb[list(idx)], class_emb)
    pooled = torch.cat(masked_average_pool(feats, [data.cams[i] for i in idx], data.grid))
    classes = torch.tensor([c for i in idx for c in data.labels[i]], dtype=torch.long)
    pred = (F.normalize(pooled, dim=-1) @ F.normalize(text, dim=-1).t()).argmax(dim=1)
    return 100.0 * float((pred == classes).float().mean())


@torch.no_grad()
def image_accuracy(
    cmpa: CMPA | None, data: ProbeData, idx: Sequence[int], class_emb: Tensor
) -> float:
    """Share of images whose best class, scored on the mean over ALL patches (the feature the
    Grad-CAM differentiates), is one of their tags: projected space (``mean_p ISA(v_p)`` vs
    ``TSA(t)``, eval-mode heads) or, with ``cmpa`` None, the raw space (``mean_p v_p`` vs
    ``t``). The heads are trained only on CAM-weighted means, never on this one."""
    feats, text = _probe_space(cmpa, data.patch_emb[list(idx)], class_emb)
    best = (F.normalize(feats.mean(dim=1), dim=-1) @ F.normalize(text, dim=-1).t()).argmax(dim=1)
    hits = [int(b) in data.labels[i] for b, i in zip(best.tolist(), idx, strict=True)]
    return 100.0 * sum(hits) / max(1, len(hits))


@torch.no_grad()
def background_accuracy(
    cmpa: CMPA | None, data: ProbeData, idx: Sequence[int], bg_emb: Tensor
) -> float:
    """Share of images whose background feature (patches weighted by ``1 - max_c CAM``, the
    CAM's own background) is nearest (cosine) to the prompt of the scene's context among the
    background prompts: projected space (eval-mode heads) or, with ``cmpa`` None, the raw one.
    CLIP-ES's background words suppress the background only where this alignment holds; L_proto
    never trains it. bg_emb must follow ``ssrseg.data.toy.BACKGROUNDS``'s order."""
    feats, text = _probe_space(cmpa, data.patch_emb[list(idx)], bg_emb)
    weights = [1.0 - data.cams[i].amax(dim=0, keepdim=True) for i in idx]
    pooled = torch.cat(masked_average_pool(feats, weights, data.grid))
    best = (F.normalize(pooled, dim=-1) @ F.normalize(text, dim=-1).t()).argmax(dim=1)
    hits = [int(b) == data.contexts[i] for b, i in zip(best.tolist(), idx, strict=True)]
    return 100.0 * sum(hits) / max(1, len(hits))


def pairwise_auc(pos: Tensor, neg: Tensor) -> float:
    """ROC AUC of scores ``pos`` (``P``) above ``neg`` (``Q``): the share of (pos, neg) pairs
    ordered correctly, ties counting one half."""
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


@torch.no_grad()
def patch_separation(
    cmpa: CMPA | None, data: ProbeData, idx: Sequence[int], class_emb: Tensor
) -> dict[str, float]:
    """How the per-patch similarity to a class text separates, in the projected space (eval-mode
    heads) or, with ``cmpa`` None, the raw one (patch labels by majority, 0 = background):
    ``patch_auc``: ROC AUC of ``cos(patch, text_c)`` for class c's patches against the same
    image's background patches, averaged over (image, class) pairs (what a CAM needs: the
    object above its own background); ``patch_top1``: share of object patches whose nearest
    class text (among all classes) is their own (what L_proto trains, on pooled features)."""
    feats, text = _probe_space(cmpa, data.patch_emb[list(idx)], class_emb)
    sims = F.normalize(feats, dim=-1) @ F.normalize(text, dim=-1).t()  # B x N x K
    plabels = patch_labels(data.masks[list(idx)], data.grid)  # B x N
    hits = total = 0
    for b in range(len(idx)):
        obj = plabels[b] > 0
        hits += int((sims[b][obj].argmax(dim=-1) == plabels[b][obj] - 1).sum())
        total += int(obj.sum())
    per_class = [sims[b].t()[list(data.labels[i])] for b, i in enumerate(idx)]
    return {
        "patch_auc": object_background_auc(per_class, data, idx),
        "patch_top1": round(100.0 * hits / max(1, total), 1),
    }


@torch.no_grad()
def object_background_cosine(data: ProbeData, idx: Sequence[int]) -> float:
    """Mean over images of the mean cosine between the raw CLIP embeddings of an image's object
    patches and of its background patches (patch labels by majority; images without either
    are skipped): how much the last block's tokens of object and background look alike."""
    feats = F.normalize(data.patch_emb[list(idx)].float(), dim=-1)
    plabels = patch_labels(data.masks[list(idx)], data.grid)
    values = []
    for b in range(feats.shape[0]):
        obj, bg = feats[b][plabels[b] > 0], feats[b][plabels[b] == 0]
        if obj.numel() and bg.numel():
            values.append(float((obj @ bg.t()).mean()))
    return round(sum(values) / max(1, len(values)), 3)


def object_background_auc(maps: Sequence[Tensor], data: ProbeData, idx: Sequence[int]) -> float:
    """Mean over (image, class) of the ROC AUC (%) of ``maps`` (per image ``K_i x N`` or
    ``K_i x h x w`` on the patch grid, in the image's label order) for class c's patches
    against the same image's background patches (patch labels by majority)."""
    plabels = patch_labels(data.masks[list(idx)], data.grid)  # B x N
    aucs: list[float] = []
    for b, i in enumerate(idx):
        values = maps[b].reshape(len(data.labels[i]), -1)
        for k, c in enumerate(data.labels[i]):
            pos, neg = values[k, plabels[b] == c + 1], values[k, plabels[b] == 0]
            if pos.numel() and neg.numel():
                aucs.append(pairwise_auc(pos, neg))
    return round(100.0 * sum(aucs) / max(1, len(aucs)), 1)


@torch.no_grad()
def similarity_cams(
    cmpa: CMPA | None,
    data: ProbeData,
    idx: Sequence[int],
    class_emb: Tensor,
    bg_emb: Tensor,
    scale: float,
) -> list[Tensor]:
    """Per image ``K_i x h x w``: a CAM read from the patch features directly, without a
    gradient: each patch's softmax over [the image's classes + the background prompts] of
    ``scale * cos(patch, text)``, the class columns, min-max normalised as the Grad-CAM's maps.
    Raw space, or the projected one through eval-mode heads (scale = 1 / tau there)."""
    feats, text = _probe_space(cmpa, data.patch_emb[list(idx)], torch.cat([class_emb, bg_emb]))
    sims = F.normalize(feats, dim=-1) @ F.normalize(text, dim=-1).t()  # B x N x (C + G)
    n_fg, (h, w) = class_emb.shape[0], data.grid
    out = []
    for b, i in enumerate(idx):
        cols = [*data.labels[i], *range(n_fg, text.shape[0])]
        prob = (scale * sims[b][:, cols]).softmax(dim=-1)[:, : len(data.labels[i])]
        out.append(normalise_cams(prob.t().reshape(-1, h, w)))
    return out


def output_gradcams(
    cmpa: CMPA | None,
    data: ProbeData,
    idx: Sequence[int],
    class_emb: Tensor,
    bg_emb: Tensor,
    scale: float,
) -> list[Tensor]:
    """Per image ``K_i x h x w``: the Grad-CAM taken at the patch embeddings (the CLIP's output
    tokens after ln_post and proj, where the heads act) instead of at the last block's input:
    ``relu(mean_p dS_c / dv_p . v_p)`` with S the pipeline's softmax score (the image's classes
    + the background prompts, ``scale``) of the mean over patches, in the raw space or through
    eval-mode heads (``ssrseg.cam.gradcam.embedding_cams``, the pipeline's own code); min-max
    normalised as the pipeline's CAMs."""
    labels = [data.labels[i] for i in idx]
    cls, bg = class_emb.float(), bg_emb.float()
    image_proj = None
    if cmpa is not None:
        cmpa.eval()
        with torch.no_grad():
            cls = F.normalize(cmpa.project_text(cls), dim=-1)
            bg = F.normalize(cmpa.project_text(bg), dim=-1)
        image_proj = cmpa.project_image
    patch_emb = data.patch_emb[list(idx)].float()  # B x N x E
    raw, _ = embedding_cams(patch_emb, labels, cls, bg, scale, image_proj)  # B x K_max x N
    h, w = data.grid
    return [
        normalise_cams(raw[b, : len(lab)].reshape(len(lab), h, w)) for b, lab in enumerate(labels)
    ]


@torch.no_grad()
def cams_miou(
    cams: Sequence[Tensor], data: ProbeData, idx: Sequence[int], cfg: SSRConfig, n_classes: int
) -> float:
    """mIoU (%) over background + ``n_classes - 1`` classes of label maps made from ``cams``
    (per image ``K_i x h x w``) as the initial-CAM row makes them: bilinear to the image size,
    background ``(1 - max) ** power``, argmax (no PAR)."""
    conf = ConfusionMatrix(n_classes)
    size = (int(data.masks.shape[-2]), int(data.masks.shape[-1]))
    for cam, i in zip(cams, idx, strict=True):
        scores = with_background(upsample(cam[None], size)[0], cfg.pseudo.background_power)
        conf.update(scores_to_labels(scores, data.labels[i], cfg.pseudo), data.masks[i])
    return 100.0 * float(conf.compute()["miou"])


@torch.no_grad()
def at_scale(cmpa: CMPA, scale: float) -> CMPA:
    """A copy whose temperature is ``1 / scale``."""
    out = copy.deepcopy(cmpa)
    out.log_tau.fill_(-math.log(scale))
    return out


DEBIASED_START = 1000  # first debiased scene the heads may train on (never scored)


def home_context_leak(
    preds: Sequence[Tensor], data: ProbeData, idx: Sequence[int]
) -> dict[str, float]:
    """Share (%) of a class's predicted pixels on ground-truth background, on the scenes ``idx``
    of ``data`` showing the class's home context (``leak_home``) vs elsewhere (``leak_else``);
    ``preds`` are their ``H x W`` label maps in order."""
    homes = home_contexts(CLASS_NAMES)
    items = (
        (pred.numpy(), data.masks[i].numpy(), data.labels[i], BACKGROUNDS[data.contexts[i]])
        for pred, i in zip(preds, idx, strict=True)
    )
    table = context_leak_table(items, homes)
    return {"leak_home": round(table["home"], 1), "leak_else": round(table["elsewhere"], 1)}


def run_probe(
    n_train: int = 400,
    n_score: int = 100,
    short: int = 240,
    long: int = 3000,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    seed: int = 0,
    progress: bool = True,
    match: Sequence[str] = (),
    head_seed: int | None = None,
    lean: bool = False,
    score_start: int = 0,
) -> list[dict[str, Any]]:
    """Every measurement (head runs whose name contains one of ``match``, all when empty);
    returns the table's rows (also printed). ``seed`` picks the world's scenes; ``head_seed``
    (default: ``seed``) the heads' initialisation and batch order, to see the spread between
    head trainings on the same data. ``lean``: only the raw row and each head run's mIoU,
    ``pair_acc`` and ``bg_acc`` (no rescaled, recalibrated or word-less re-scoring).
    ``score_start``: the scored scenes are ``score_start .. score_start + n_score - 1`` of the
    ``n_train`` cached ones (the heads train on all of them, as the demo's do)."""
    if score_start < 0 or score_start + n_score > n_train:
        raise ValueError(f"scored scenes {score_start}..{score_start + n_score - 1} not cached")
    t0 = time.perf_counter()
    cfg = load_config(config if config is not None else default_config_path(), list(overrides))
    cfg = merged(cfg, INITIAL_CAM)
    raw_labeler = build_labeler(cfg)
    labeler = build_labeler(merged(cfg, {"cam": {"projected": True}}))
    labeler_nobg = build_labeler(merged(cfg, {"cam": {"projected": True}}), False)
    raw_nobg = build_labeler(cfg, False)
    raw_20 = build_labeler(merged(cfg, {"cam": {"logit_scale": 1.0 / cfg.cmpa.tau_init}}))
    raw_scale = float(raw_labeler.raw_logit_scale)  # the preset's or the CLIP's learned scale
    class_emb = labeler.class_emb.float()
    bg_emb = labeler.bg_emb.float()

    if bg_emb.shape[0] != len(BACKGROUNDS):
        raise ValueError(f"expected the {len(BACKGROUNDS)} toy background words in the prompts")
    data = cache_inputs(raw_labeler, n_train, seed)
    score_idx = list(range(score_start, score_start + n_score))
    s_img, s_mask = data.images[score_idx], data.masks[score_idx]
    s_lab = [data.labels[i] for i in score_idx]
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        if progress:
            extras = "  ".join(f"{k}={v}" for k, v in row.items() if k != "row")
            print(f"{row['row']:<58} {extras}", flush=True)

    def score(lab: PseudoLabeler, cmpa: CMPA | None) -> float:
        return round(label_and_score(lab, s_img, s_mask, s_lab, cmpa=cmpa), 1)

    def score_leak(lab: PseudoLabeler, cmpa: CMPA | None) -> tuple[float, dict[str, float]]:
        preds: list[Tensor] = []
        cams: list[Tensor] = []

        def keep(out: Any, lo: int) -> None:
            preds.extend(out.labels)
            cams.extend(c.float() for c in out.cams)

        miou = label_and_score(lab, s_img, s_mask, s_lab, cmpa=cmpa, keep=keep)
        return round(miou, 1), {
            **home_context_leak(preds, data, score_idx),
            "cam_auc": object_background_auc(cams, data, score_idx),
        }

    def sim_miou(cmpa: CMPA | None, scale: float) -> float:
        # the same space read without a gradient (similarity_cams), scored like the CAM rows
        cams = similarity_cams(cmpa, data, score_idx, class_emb, bg_emb, scale)
        return round(cams_miou(cams, data, score_idx, cfg, class_emb.shape[0] + 1), 1)

    def output_cam(cmpa: CMPA | None, scale: float) -> dict[str, float]:
        # the Grad-CAM taken at the patch embeddings instead of the last block's input
        cams = output_gradcams(cmpa, data, score_idx, class_emb, bg_emb, scale)
        return {
            "out_cam_miou": round(cams_miou(cams, data, score_idx, cfg, class_emb.shape[0] + 1), 1),
            "out_cam_auc": object_background_auc(cams, data, score_idx),
        }

    raw, raw_leak = score_leak(raw_labeler, None)
    emit(
        {
            "row": f"raw CLIP CAM (scale {raw_scale:g}, background words)",
            "miou": raw,
            **raw_leak,
            "pair_acc": round(pair_accuracy(None, data, score_idx, class_emb), 1),
            "image_acc": round(image_accuracy(None, data, score_idx, class_emb), 1),
            "bg_acc": round(background_accuracy(None, data, score_idx, bg_emb), 1),
            **patch_separation(None, data, score_idx, class_emb),
            "sim_miou": sim_miou(None, raw_scale),
            "obj_bg_cos": object_background_cosine(data, score_idx),
            **output_cam(None, raw_scale),
        }
    )
    if not lean:
        scale_20 = 1.0 / cfg.cmpa.tau_init
        emit({"row": f"raw CLIP CAM at scale {scale_20:g}", "miou": score(raw_20, None)})
        emit({"row": "raw CLIP CAM without background words", "miou": score(raw_nobg, None)})

    # every variant at the short length (name suffix -> HeadRun fields)
    bg_nearest = {"background_term": "raw_nearest"}
    variants: dict[str, dict[str, Any]] = {
        " (toy preset)": {},
        ", no symmetric term": {"cmpa": {"symmetric": False}},
        f", tau frozen at 1/{raw_scale:g}": {"fixed_scale": raw_scale},
        ", background prompts as negatives": {"background_negatives": True},
        ", kmeans prototypes": {"cmpa": {"prototypes": "kmeans"}},
        # the background term (cmpa.background_term, our decision): the CAM's background
        # feature pulled to a background prompt in the projected space
        ", background term raw_nearest": {"cmpa": bg_nearest},
        ", background term any": {"cmpa": {"background_term": "any"}},
        ", kmeans + background term raw_nearest": {"cmpa": {"prototypes": "kmeans", **bg_nearest}},
        # one plain Linear per head: mean_p ISA(v_p) = ISA(mean_p v_p), so the CAM's gradient is
        # the same at every patch, as in the raw space
        ", linear heads": {"cmpa": {"num_layers": 1}},
        ", linear heads + background term raw_nearest": {"cmpa": {"num_layers": 1, **bg_nearest}},
        # what the CAM-weighted means carry besides the object: heads trained on features
        # pooled with the true masks, and / or on debiased scenes (classes off their homes)
        ", ground-truth pooling": {"pooling": "gt"},
        ", debiased scenes": {"scenes": "debiased"},
        ", debiased scenes + ground-truth pooling": {"pooling": "gt", "scenes": "debiased"},
        ", linear heads, debiased scenes + ground-truth pooling": {
            "cmpa": {"num_layers": 1},
            "pooling": "gt",
            "scenes": "debiased",
        },
    }
    # then the plain run and four variants again at the long length
    again = (
        ", background prompts as negatives",
        ", kmeans prototypes",
        ", background term raw_nearest",
        ", kmeans + background term raw_nearest",
    )
    runs = [HeadRun(f"CMPA {short} it.{name}", short, **kw) for name, kw in variants.items()]
    runs.append(HeadRun(f"CMPA {long} it.", long))
    runs += [HeadRun(f"CMPA {long} it.{name}", long, **variants[name]) for name in again]
    if match:
        runs = [r for r in runs if any(m in r.name for m in match)]
    marks = sorted({m for m in (short, long // 4, long // 2, long) if 0 < m < long})
    train_sets: dict[tuple[str, str], ProbeData] = {("train", "cam"): data}

    def training_data(run: HeadRun) -> ProbeData:
        key = (run.scenes, run.pooling)
        if key not in train_sets:
            if run.scenes not in ("train", "debiased") or run.pooling not in ("cam", "gt"):
                raise ValueError(f"unknown scenes / pooling {key}")
            base = train_sets.get((run.scenes, "cam"))
            if base is None:
                # debiased scenes after the demo's scored ones (it scores debiased 0..149)
                base = cache_inputs(raw_labeler, n_train, seed, "debiased", DEBIASED_START)
                train_sets[(run.scenes, "cam")] = base
            train_sets[key] = base if run.pooling == "cam" else with_ground_truth_pooling(base)
        return train_sets[key]

    for run in runs:
        timeline: dict[int, float] = {}

        def checkpoint(step: int, cmpa: CMPA, tl: dict[int, float] = timeline) -> None:
            tl[step] = score(labeler, cmpa)

        is_main_long = (
            run.iterations == long and not run.cmpa and not run.background_negatives and not lean
        )
        cmpa, last = train_heads(
            cfg, training_data(run), run, class_emb, bg_emb,
            checkpoints=marks if is_main_long else (),
            on_checkpoint=checkpoint if is_main_long else None,
            seed=seed if head_seed is None else head_seed,
        )  # fmt: skip
        cmpa.eval()
        miou, leak = score_leak(labeler, cmpa)
        row: dict[str, Any] = {
            "row": run.name,
            "miou": miou,
            **leak,
            "tau": round(last["tau"], 4),
            "loss": round(last["loss"], 3),
            "pair_acc": round(pair_accuracy(cmpa, data, score_idx, class_emb), 1),
            "image_acc": round(image_accuracy(cmpa, data, score_idx, class_emb), 1),
            "bg_acc": round(background_accuracy(cmpa, data, score_idx, bg_emb), 1),
            **patch_separation(cmpa, data, score_idx, class_emb),
            "sim_miou": sim_miou(cmpa, 1.0 / float(cmpa.tau.detach())),
            **output_cam(cmpa, 1.0 / float(cmpa.tau.detach())),
        }
        if not lean:
            row[f"at_scale_{raw_scale:g}"] = score(labeler, at_scale(cmpa, raw_scale))
            bg_trained = bg_emb if cmpa.cfg.background_term != "none" else None
            row["bn_recalibrated"] = score(
                labeler, recalibrated(cmpa, data, class_emb, bg_emb=bg_trained)
            )
            row["no_bg_words"] = score(labeler_nobg, cmpa)
        if run.name == runs[0].name and not lean:
            for s in (5.0, 10.0, 30.0, 50.0):
                row[f"at_scale_{s:g}"] = score(labeler, at_scale(cmpa, s))
        if timeline:
            row["miou_at_iteration"] = {**timeline, run.iterations: row["miou"]}
        emit(row)
    if progress:
        print(
            f"({time.perf_counter() - t0:.0f} s; raw CAM {raw}; "
            f"scored train images {score_start}..{score_start + n_score - 1})"
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=400, help="training scenes (default 400)")
    parser.add_argument("--n-score", type=int, default=100, help="scored scenes (default 100)")
    parser.add_argument("--short", type=int, default=240, help="the demo's iterations")
    parser.add_argument("--long", type=int, default=3000, help="a long head training")
    parser.add_argument("--config", default=None, help="preset (default: configs/toy.yaml)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument(
        "--match", action="append", default=[], help="only head runs whose name contains this"
    )
    parser.add_argument(
        "--head-seed", type=int, default=None, help="heads' seed (default: the world's, 0)"
    )
    parser.add_argument("--lean", action="store_true", help="score each head run once (mIoU)")
    parser.add_argument(
        "--score-start",
        type=int,
        default=0,
        help="first scored scene (default 0: the demo's scored images 0..99; 100 with "
        "--n-train 300 --n-score 200 scores images the demo never scores)",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides key.path=value")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_train, args.n_score, args.short, args.long = 16, 8, 4, 8
    torch.set_num_threads(1)  # the probe's figures were measured on one thread
    rows = run_probe(
        args.n_train,
        args.n_score,
        args.short,
        args.long,
        args.config,
        args.overrides,
        match=args.match,
        head_seed=args.head_seed,
        lean=args.lean,
        score_start=args.score_start,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
