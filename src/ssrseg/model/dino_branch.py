"""WeCLIP+'s DINO decoder branch, an option of SSR's decoder (``decoder.dino_branch``).

What WeCLIP+ (zbf1991/WeCLIP, folder ``WeCLIP+/``) does, and ssrseg reproduces
(``docs/dinov2.md`` lists each fact with its source):

- DINO's patch features (DINOv2's ``x_norm_patchtokens``: the last block's tokens after the
  final LayerNorm) go through their own fusion head, of the same form as the CLIP one: an MLP
  ``D' -> E -> E`` per input layer, concatenation, a 1x1 fusion to E, Dropout2d;
- the fused DINO map is resized bilinearly to CLIP's patch grid and passed through the *same*
  transformer and classifier as the CLIP features (shared weights);
- the logits are fused ``0.5 * CLIP + 0.5 * DINO`` (``decoder.dino_weight``) for the
  segmentation loss and for prediction;
- the affinity ``sigmoid(F^T F)`` (affinity loss) is taken from the channel concatenation of
  the CLIP and DINO fused maps;
- the fused prediction is fed back into CAM refinement (``decoder.dino_feedback``): each class
  CAM is multiplied by the (detached) softmax probability of that class, and the attention
  affinity is multiplied elementwise by the concatenated-feature affinity before the transition
  matrix.

In ssrseg the DINO features come from the frozen DINO the pseudo labeller already runs (one
DINO forward serves SSR's attention affinity and this branch); a DINOv2 next to CLIP ViT-B/16
runs on CLIP's grid (:func:`ssrseg.backbones.dino.run_on_grid`), so the resize is a no-op there.

Wiring, kept out of the shared modules: :func:`attach_dino_branch` puts the :class:`DinoBranch`
head inside the decoder (so it is trained, checkpointed and sent to the optimiser with the
decoder, at WeCLIP+'s decoder learning rate) and gives the pseudo labeller and the loss module
one :class:`DinoBranchHook`. The labeller calls the hook with its CLIP and DINO forwards; the
hook returns the feedback and keeps the batch's DINO features for the loss module, which the
trainer calls next with the CLIP tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssrseg.backbones.dino import run_on_grid
from ssrseg.backbones.vit import VisionTransformer, ViTOutput
from ssrseg.config import ConfigError, DecoderConfig, SSRConfig
from ssrseg.model.decoder import SegDecoder
from ssrseg.model.losses import feature_affinity


class DinoBranch(nn.Module):
    """The DINO branch's own fusion head: per DINO layer an MLP ``D' -> E -> E`` (ReLU between),
    concatenation, a 1x1 fusion to E (a Linear on channels-last tokens)."""

    def __init__(self, cfg: DecoderConfig, dino_width: int) -> None:
        super().__init__()
        if cfg.dino_layers < 1:
            raise ConfigError(f"decoder.dino_layers must be >= 1, got {cfg.dino_layers}")
        if not 0.0 <= cfg.dino_weight <= 1.0:
            raise ConfigError(f"decoder.dino_weight must be in [0, 1], got {cfg.dino_weight}")
        e = cfg.embed_dim
        self.num_layers_in = cfg.dino_layers
        self.weight = cfg.dino_weight
        self.mlps = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(dino_width, e), nn.ReLU(inplace=True), nn.Linear(e, e))
                for _ in range(cfg.dino_layers)
            ]
        )
        self.fuse = nn.Linear(e * cfg.dino_layers, e)

    def forward(
        self, feats: Sequence[Tensor], dino_grid: tuple[int, int], grid: tuple[int, int]
    ) -> Tensor:
        """feats: ``num_layers_in`` DINO patch features ``B x N' x D'`` on ``dino_grid``;
        returns the fused map resized to CLIP's ``grid`` as tokens ``B x N x E``."""
        if len(feats) != self.num_layers_in:
            raise ValueError(f"DINO branch needs {self.num_layers_in} layers, got {len(feats)}")
        dtype = self.fuse.weight.dtype
        maps = [mlp(f.to(dtype)) for mlp, f in zip(self.mlps, feats, strict=True)]
        fused = self.fuse(torch.cat(maps, dim=-1))  # B x N' x E
        if dino_grid == grid:
            return fused
        # WeCLIP+ resizes the fused DINO map to CLIP's grid, bilinear, align_corners=False
        fmap = fused.unflatten(1, dino_grid).permute(0, 3, 1, 2)
        fmap = F.interpolate(fmap, size=grid, mode="bilinear", align_corners=False)
        return fmap.flatten(2).transpose(1, 2)


def dino_patch_features(dino: VisionTransformer, out: ViTOutput, n_layers: int) -> list[Tensor]:
    """The last ``n_layers`` blocks' patch tokens through DINO's final norm, ``B x N' x D'``
    each, oldest first (``n_layers=1``: DINOv2's ``x_norm_patchtokens``). Detached."""
    if len(out.tokens) < n_layers:
        raise ValueError(f"DINO ran {len(out.tokens)} blocks, the branch needs {n_layers}")
    return [dino.head(t[:, out.prefix :]).detach() for t in out.tokens[-n_layers:]]


@dataclass
class BranchOutput:
    """Decoder outputs with the DINO branch (maps on CLIP's grid, channels first).

    logits: ``B x K x h x w`` fused ``(1 - w) * clip + w * dino``; clip / dino: each branch's
    logits; features: ``B x 2E x h x w`` the concatenated affinity features.
    """

    logits: Tensor
    clip: Tensor
    dino: Tensor
    features: Tensor


def branch_forward(
    decoder: SegDecoder,
    branch: DinoBranch,
    tokens: Sequence[Tensor],
    grid: tuple[int, int],
    dino_feats: Sequence[Tensor],
    dino_grid: tuple[int, int],
) -> BranchOutput:
    """Both branches through the shared decoder (its ``decode`` runs Dropout2d, the transformer
    and the classifier on fused tokens)."""
    logits_clip, feats_clip = decoder(tokens, grid)
    logits_dino, feats_dino = decoder.decode(branch(dino_feats, dino_grid, grid), grid)
    w = branch.weight
    logits = (1.0 - w) * logits_clip + w * logits_dino
    features = torch.cat([feats_clip, feats_dino], dim=1)
    return BranchOutput(logits, logits_clip, logits_dino, features)


@dataclass
class Feedback:
    """What the decoder gives back to CAM refinement (WeCLIP+), detached, float32.

    prob: ``B x K x h x w`` softmax of the fused logits (index 0 background, c + 1 class c);
    affinity: ``B x N x N`` ``sigmoid(F^T F)`` of the concatenated CLIP + DINO features.
    """

    prob: Tensor
    affinity: Tensor


def weight_cams(cams: Tensor, prob: Tensor, labels: Sequence[Sequence[int]]) -> Tensor:
    """WeCLIP+'s CAM feedback: each class CAM times the predicted probability of its class.

    cams: ``B x k_max x h x w`` (per image in the order of its labels, zero padded);
    prob: ``B x K x h x w``; labels: per image its 0-based foreground classes.
    """
    out = cams.clone()
    for i, lab in enumerate(labels):
        if lab:
            idx = torch.tensor([c + 1 for c in lab], device=prob.device)
            out[i, : len(lab)] = cams[i, : len(lab)] * prob[i, idx].to(cams.dtype)
    return out


def select_attention_layers(attentions: Sequence[Tensor]) -> Tensor:
    """WeCLIP+'s choice of CLIP attention layers under feedback, then their mean.

    WeCLIP+ keeps the layers whose summed difference ``sum(S - A_l)`` to the decoder affinity S
    is at most the mean difference; S is the same for every layer, so this keeps the layers
    whose patch-to-patch attention mass ``sum(A_l)`` is at least the mean mass (the decoder
    affinity cancels out of the choice). attentions: ``B x N x N`` each; per image.
    Returns ``B x N x N``.
    """
    stack = torch.stack([a.float() for a in attentions], dim=1)  # B x L x N x N
    mass = stack.flatten(2).sum(-1)  # B x L
    keep = (mass >= mass.mean(dim=1, keepdim=True)).to(stack.dtype)  # B x L
    # WeCLIP+ divides by (kept + 1e-5); at least one layer is always kept
    return (stack * keep[:, :, None, None]).sum(1) / (keep.sum(1)[:, None, None] + 1e-5)


class DinoBranchHook:
    """Glue between the pseudo labeller, the decoder with its DINO branch and the losses.

    Not an ``nn.Module`` on purpose: the labeller and the loss module hold it without
    registering the decoder or the DINO as their submodules.
    """

    def __init__(
        self, decoder: SegDecoder, branch: DinoBranch, dino: VisionTransformer, cfg: DecoderConfig
    ) -> None:
        self.decoder = decoder
        self.branch = branch
        self.dino = dino
        self.feedback = cfg.dino_feedback
        self.layer_select = cfg.dino_layer_select
        self._batch: tuple[list[Tensor], tuple[int, int], int] | None = None

    def __call__(
        self, tokens: Sequence[Tensor], grid: tuple[int, int], dino_out: ViTOutput
    ) -> Feedback | None:
        """Called by the labeller with its CLIP tokens and DINO forward of a batch: keeps the
        DINO features for :meth:`train_outputs`; returns the feedback (or None when off)."""
        feats = dino_patch_features(self.dino, dino_out, self.branch.num_layers_in)
        self._batch = (feats, dino_out.grid, feats[0].shape[0])
        if not self.feedback:
            return None
        with torch.no_grad():
            out = branch_forward(self.decoder, self.branch, tokens, grid, feats, dino_out.grid)
        return Feedback(
            prob=out.logits.float().softmax(dim=1), affinity=feature_affinity(out.features)
        )

    def train_outputs(self, tokens: Sequence[Tensor], grid: tuple[int, int]) -> BranchOutput:
        """Decoder outputs for the loss, with the DINO features the labeller produced for this
        batch (the trainer calls the labeller, then the losses); they are used once."""
        if self._batch is None:
            raise RuntimeError(
                "decoder.dino_branch: no DINO features for this batch; the pseudo labeller "
                "must run on the batch before the losses (train.supervision=pseudo)"
            )
        feats, dino_grid, batch = self._batch
        self._batch = None
        if batch != tokens[0].shape[0]:
            raise RuntimeError(
                f"decoder.dino_branch: DINO features of {batch} images for {tokens[0].shape[0]}"
            )
        return branch_forward(self.decoder, self.branch, tokens, grid, feats, dino_grid)

    def segment(self, tokens: Sequence[Tensor], grid: tuple[int, int], images01: Tensor) -> Tensor:
        """Fused logits ``B x K x h x w`` for prediction: runs DINO on CLIP's grid itself."""
        # a `with` block, not the decorator: mutmut skips decorated functions (make mutants)
        with torch.no_grad():
            n = self.branch.num_layers_in
            d_out = run_on_grid(self.dino, images01, grid, n_blocks=None)
            feats = dino_patch_features(self.dino, d_out, n)
            return branch_forward(self.decoder, self.branch, tokens, grid, feats, d_out.grid).logits


def attach_dino_branch(model: Any, cfg: SSRConfig) -> DinoBranchHook:
    """Build the DINO branch of an :class:`~ssrseg.model.ssr.SSRModel` (``decoder.dino_branch``):
    the head goes into ``model.decoder`` (as ``dino_branch``), the hook into the labeller
    (``branch_hook``); returns the hook for the loss module."""
    dino = getattr(model.labeler, "dino", None)
    if not isinstance(dino, VisionTransformer):
        raise ConfigError(
            "decoder.dino_branch=true needs a DINO backbone (backbone.use_dino=true and "
            "backbone.dino set)"
        )
    if cfg.train.supervision != "pseudo":
        raise ConfigError("decoder.dino_branch=true needs train.supervision=pseudo")
    branch = DinoBranch(cfg.decoder, dino.cfg.width)
    model.decoder.add_module("dino_branch", branch)
    hook = DinoBranchHook(model.decoder, branch, dino, cfg.decoder)
    model.labeler.branch_hook = hook
    return hook
