"""Batched Grad-CAM on CLIP's image tower (SSR_SPEC section 3, CLIP-ES recipe).

For image i with present classes Y_i (K_i of them):

1. blocks 1..L-1 run without gradients (whole batch); the last block runs from
   ``h = norm1(x)``, a leaf that requires grad;
2. image embedding = mean over patches of ``head(patch tokens)`` (``proj(ln_post(.))``), or of
   ``image_proj`` of those (CMPA's ISA head, projected space);
3. logits = ``scale * cos(embedding, text)`` over [classes of Y_i] + [background words];
   softmax over that set;
4. for each c in Y_i: gradient of the softmax score of c w.r.t. ``h`` (patch tokens);
   channel weights = mean over patches; CAM = ReLU(sum_d weight_d * h_d); min-max to [0, 1],
   ``minmax_passes`` times (CLIP-ES: twice, see :data:`CLIP_ES_MINMAX_PASSES`).

Batching: images are independent (no op of the last block or the head mixes images), so the
gradient of ``sum_i score(i, k-th class of i)`` w.r.t. ``h`` holds every image's gradient for
its k-th class. The K_max such backward passes run as one vectorised backward
(``is_grads_batched``) or a loop (``batch_classes=False``); both equal the one-image,
one-class-at-a-time definition (tested).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from ssrseg.backbones.vit import Block, VisionTransformer, ViTOutput
from ssrseg.precision import fp32_island

MINMAX_EPS = 1e-7  # [CLIP-ES] cam = (cam - min) / (max - min + eps)
# [CLIP-ES] its Grad-CAM class min-max normalises each target layer's CAM, then once more after
# averaging the layers (one target layer: the same map twice). The second pass is not a no-op:
# after the first the maximum is r / (r + eps) for a raw range r, so with the small ranges of
# real CLIP CAMs (r ~ 1e-5) the second pass rescales the map by about 1 %.
CLIP_ES_MINMAX_PASSES = 2


@dataclass
class GradCamResult:
    """cams: per image ``K_i x h x w`` in [0, 1] (order of the image's labels).
    vit: the CLIP forward (tokens of every block, detached; attentions of the requested last
    blocks, ``B x N x N``). patch_emb: ``B x N x E`` raw ``proj(norm(patch tokens))``, detached.
    raw: per image ``K_i x h x w`` CAMs after the ReLU, before any min-max.
    scores: per image ``K_i`` softmax scores of its classes (over its classes + background).
    """

    cams: list[Tensor]
    vit: ViTOutput
    patch_emb: Tensor
    raw: list[Tensor] = field(default_factory=list)
    scores: list[Tensor] = field(default_factory=list)

    @property
    def grid(self) -> tuple[int, int]:
        return self.vit.grid


def minmax(cams: Tensor, eps: float = MINMAX_EPS) -> Tensor:
    """Min-max normalise over the last two dims: ``... x h x w`` -> same, in [0, 1] (in the
    input's dtype; no autocast op inside, so an enclosing autocast changes nothing)."""
    flat = cams.flatten(-2)
    lo = flat.amin(dim=-1, keepdim=True)
    flat = flat - lo
    hi = flat.amax(dim=-1, keepdim=True)
    return (flat / (hi + eps)).view_as(cams)


def normalise_cams(cams: Tensor, passes: int = CLIP_ES_MINMAX_PASSES) -> Tensor:
    """:func:`minmax` applied ``passes`` times (``... x h x w``; CLIP-ES: 2)."""
    if passes < 1:
        raise ValueError(f"minmax_passes must be >= 1, got {passes}")
    for _ in range(passes):
        cams = minmax(cams)
    return cams


def pad_labels(labels: Sequence[Sequence[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-image class lists -> (``B x K_max`` class ids, padded with 0; ``B x K_max`` valid)."""
    k_max = max((len(lab) for lab in labels), default=0)
    ids = torch.zeros(len(labels), k_max, dtype=torch.long)
    valid = torch.zeros(len(labels), k_max, dtype=torch.bool)
    for i, lab in enumerate(labels):
        ids[i, : len(lab)] = torch.as_tensor(list(lab), dtype=torch.long)
        valid[i, : len(lab)] = True
    return ids.to(device), valid.to(device)


def class_scores(
    image_emb: Tensor, class_emb: Tensor, bg_emb: Tensor, ids: Tensor, valid: Tensor, scale: float
) -> Tensor:
    """Softmax scores of each image's own classes.

    image_emb: ``B x E`` (not normalised); class_emb: ``C x E``; bg_emb: ``G x E`` (normalised);
    ids/valid: ``B x K``. Softmax over the image's K_i classes plus the G background words;
    returns ``B x K`` (0 at padding).
    """
    img = F.normalize(image_emb.float(), dim=-1)
    fg = scale * torch.einsum("be,bke->bk", img, class_emb.float()[ids])
    fg = fg.masked_fill(~valid, float("-inf"))
    bg = scale * img @ bg_emb.float().t()
    probs = torch.cat([fg, bg], dim=1).softmax(dim=1)
    return probs[:, : ids.shape[1]]


CAM_TARGETS = ("block_input", "patch_embeddings")  # the features a Grad-CAM may read


def gradcam(
    visual: VisionTransformer,
    images01: Tensor,
    labels: Sequence[Sequence[int]],
    class_emb: Tensor,
    bg_emb: Tensor,
    scale: float,
    image_proj: Callable[[Tensor], Tensor] | None = None,
    attn_last: int = 8,
    batch_classes: bool = True,
    minmax_passes: int = CLIP_ES_MINMAX_PASSES,
    target: str = "block_input",
) -> GradCamResult:
    """Grad-CAMs of every image's classes in one CLIP forward.

    images01: ``B x 3 x H x W`` in [0, 1]; labels: per image its 0-based class ids (K_i >= 0);
    class_emb: ``C x E`` and bg_emb: ``G x E`` L2-normalised text embeddings (TSA-projected when
    ``image_proj`` is given); scale: logit scale (100 raw, 1/tau projected);
    image_proj: maps ``B x N x E`` patch embeddings to the projected space (CMPA's ISA);
    attn_last: how many last blocks' attention to return (0: none);
    minmax_passes: how many times each CAM is min-max normalised (>= 1; CLIP-ES: 2);
    target: the features the CAM weights and reads: ``block_input`` (the last block's ``ln_1``
    output, CLIP-ES) or ``patch_embeddings`` (``proj(ln_post(patch tokens))``, ``B x N x E``,
    the input of ``image_proj``; channel weights = the spatial mean of the score's gradient
    there).
    """
    if minmax_passes < 1:
        raise ValueError(f"minmax_passes must be >= 1, got {minmax_passes}")
    if target not in CAM_TARGETS:
        raise ValueError(f"target must be one of {', '.join(CAM_TARGETS)}, got {target!r}")
    if len(labels) != images01.shape[0]:
        raise ValueError(f"{len(labels)} label lists for {images01.shape[0]} images")
    n_layers = visual.cfg.layers
    attn_blocks = list(range(max(0, n_layers - attn_last), n_layers - 1))
    x_in = visual.normalize(images01)
    with torch.no_grad():
        if n_layers > 1:
            out = visual.forward_intermediates(x_in, attn_layers=attn_blocks, n_blocks=n_layers - 1)
            x = out.tokens[-1]
        else:
            x, grid = visual.embed(x_in)
            out = ViTOutput(tokens=[], grid=grid)
    last = cast(Block, visual.blocks[-1])
    if target == "block_input":
        ids, valid = pad_labels(labels, images01.device)
        # The last block, the head, the scores and the backward in float32 whatever the
        # backbone's precision (an fp32 island): in fp16 the score gradients underflow and whole
        # CAMs vanish (toy world: 6 % of the label pixels move, ssrseg.precision).
        with torch.enable_grad(), fp32_island(images01.device):
            last = float32_block(last)
            x = x.float()
            h = last.norm1(x).detach().requires_grad_(True)
            y, attn = last.forward_from_norm1(x, h, need_attn=attn_last > 0)
            patch_emb = visual.head(y[:, 1:])
            feats = image_proj(patch_emb) if image_proj is not None else patch_emb
            emb = feats.float().mean(dim=1)
            scores = class_scores(emb, class_emb, bg_emb, ids, valid, scale)
            grads = _score_grads(scores, h, batch_classes)  # K_max x B x (1+N) x D
        cams = _weighted_tokens(h[:, 1:], grads[:, :, 1:])  # the block's input: CLS token first
    else:  # the last block without gradients: the CAM reads its output embeddings
        with torch.no_grad():
            y, attn = last.forward_from_norm1(x, last.norm1(x), need_attn=attn_last > 0)
            patch_emb = visual.head(y[:, 1:])
        cams, scores = embedding_cams(
            patch_emb, labels, class_emb, bg_emb, scale, image_proj, batch_classes
        )
    gh, gw = out.grid
    raw = cams.reshape(*cams.shape[:2], gh, gw)
    cams = normalise_cams(raw, minmax_passes)
    out.tokens.append(y.detach())
    if attn is not None:
        out.attentions[n_layers - 1] = attn[:, 1:, 1:].detach()
    per_image = [cams[i, : len(lab)] for i, lab in enumerate(labels)]
    return GradCamResult(
        cams=per_image,
        vit=out,
        patch_emb=patch_emb.detach(),
        raw=[raw[i, : len(lab)] for i, lab in enumerate(labels)],
        scores=[scores.detach()[i, : len(lab)] for i, lab in enumerate(labels)],
    )


def embedding_cams(
    patch_emb: Tensor,
    labels: Sequence[Sequence[int]],
    class_emb: Tensor,
    bg_emb: Tensor,
    scale: float,
    image_proj: Callable[[Tensor], Tensor] | None = None,
    batch_classes: bool = True,
) -> tuple[Tensor, Tensor]:
    """Grad-CAMs read at the patch embeddings (``gradcam``'s ``target="patch_embeddings"``):
    ``patch_emb`` ``B x N x E`` (``proj(ln_post(patch tokens))``, the input of ``image_proj``);
    the softmax score of each image's classes (+ background words) of the mean over patches,
    its gradient w.r.t. the embeddings, channel weights = the spatial mean, ``relu(w . v_p)``.
    Returns the raw (not normalised) CAMs ``B x K_max x N`` and the scores ``B x K_max``."""
    ids, valid = pad_labels(labels, patch_emb.device)
    with torch.enable_grad(), fp32_island(patch_emb.device):  # the backward in float32
        read = patch_emb.detach().float().requires_grad_(True)
        feats = image_proj(read) if image_proj is not None else read
        scores = class_scores(feats.float().mean(dim=1), class_emb, bg_emb, ids, valid, scale)
        grads = _score_grads(scores, read, batch_classes)  # K_max x B x N x E
    return _weighted_tokens(read, grads), scores


def float32_block(block: Block) -> Block:
    """``block`` itself when its weights are float32, else a float32 copy (fp16 / bf16
    weights: the copy computes from the same rounded values in float32)."""
    if all(p.dtype == torch.float32 for p in block.parameters()):
        return block
    return copy.deepcopy(block).float()


def _weighted_tokens(tokens: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM's last step in float32: ``relu(sum_d mean_n(grads) * tokens)``; tokens
    ``B x N x D``, grads ``K x B x N x D`` -> ``B x K x N``."""
    with fp32_island(tokens.device):
        weights = grads.float().mean(dim=2)  # K x B x D
        return torch.relu(torch.einsum("kbd,bnd->bkn", weights, tokens.detach().float()))


def _score_grads(scores: Tensor, h: Tensor, batched: bool) -> Tensor:
    """Gradient of each column of ``scores`` (``B x K``) summed over images w.r.t. ``h``:
    ``K x B x (1+N) x D`` (zeros when K = 0)."""
    k_max = scores.shape[1]
    if k_max == 0:
        return h.new_zeros(0, *h.shape)
    if batched:
        eye = torch.eye(k_max, dtype=scores.dtype, device=scores.device)
        grad_out = eye[:, None, :].expand(k_max, scores.shape[0], k_max)
        (grads,) = torch.autograd.grad(scores, h, grad_outputs=grad_out, is_grads_batched=True)
        return grads
    rows = []
    for k in range(k_max):
        (g,) = torch.autograd.grad(scores[:, k].sum(), h, retain_graph=k < k_max - 1)
        rows.append(g)
    return torch.stack(rows)
