"""SSRModel: frozen CLIP + DINO (inside the pseudo labeller), CMPA heads and the decoder.

The model holds parts and computes losses; the schedule (when CMPA starts, prototype refresh,
which CAMs feed the pseudo labels) is the trainer's (``ssrseg.engine.train``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssrseg.backbones.clip import CLIP
from ssrseg.backbones.vit import VisionTransformer
from ssrseg.config import ConfigError, SSRConfig
from ssrseg.data.transforms import input_stats
from ssrseg.model.decoder import SegDecoder, decoder_layers
from ssrseg.model.dino_branch import DinoBranchHook, attach_dino_branch
from ssrseg.model.losses import (
    affinity_loss,
    affinity_targets,
    balanced_seg_loss,
    feature_affinity,
)
from ssrseg.rectify.cmpa import CMPA

TRAINABLE = ("decoder", "cmpa")


class SSRLosses(nn.Module):
    """The trainable parts and their losses in one ``forward`` (what DDP wraps).

    Holds references to the decoder and the CMPA heads of an :class:`SSRModel`.
    """

    def __init__(self, decoder: SegDecoder, cmpa: CMPA | None, cfg: SSRConfig, patch: int):
        super().__init__()
        self.decoder = decoder
        self.cmpa = cmpa
        self.cfg = cfg
        self.patch_size = patch
        # WeCLIP+'s DINO branch (decoder.dino_branch), set by SSRModel; a plain object
        self.dino_hook: DinoBranchHook | None = None

    def forward(
        self,
        tokens: Sequence[Tensor],
        grid: tuple[int, int],
        pseudo: Tensor,
        proto_inputs: dict[str, Any] | None = None,
    ) -> dict[str, Tensor]:
        """Losses of one batch.

        tokens: CLIP per-block tokens ``B x (1+N) x D``; grid (h, w); pseudo: online pseudo
        labels ``B x H x W`` long (0 bg, c+1, 255). proto_inputs (None: no prototype loss):
        ``patch_emb`` ``B x N x E``, ``cams`` (per image ``K_i x h x w``), ``labels``,
        ``text_emb`` ``C x E``, optional ``bg_emb`` (background prompts, ``B_w x E``).
        Returns {"loss", "seg", "aff", and with CMPA "proto", "proto_sym", "feats", "classes"}.
        """
        w = self.cfg.loss
        if self.dino_hook is not None:
            both = self.dino_hook.train_outputs(tokens, grid)
            logits, fused = both.logits, both.features
        else:
            logits, fused = self.decoder(tokens, grid)
        up = F.interpolate(logits, size=pseudo.shape[-2:], mode="bilinear", align_corners=False)
        seg = balanced_seg_loss(up, pseudo)
        targets = affinity_targets(pseudo, self.patch_size, grid, w.aff_radius)
        aff = affinity_loss(feature_affinity(fused), targets)
        out = {"seg": seg.detach(), "aff": aff.detach()}
        total = w.w_seg * seg + w.w_aff * aff
        if proto_inputs is not None:
            if self.cmpa is None:
                raise ValueError("prototype inputs given but CMPA is disabled")
            proto, parts, feats, classes = self.cmpa.loss(
                proto_inputs["patch_emb"],
                proto_inputs["cams"],
                proto_inputs["labels"],
                grid,
                proto_inputs["text_emb"],
                proto_inputs.get("bg_emb"),
            )
            total = total + w.w_proto * proto
            out.update(parts)
            out["feats"], out["classes"] = feats, classes
        out["loss"] = total
        return out


class SSRModel(nn.Module):
    """Frozen backbones (via ``labeler``, a ``PseudoLabeler``), CMPA and the decoder.

    labeler: module with ``.clip`` (a ``CLIP``) called as
    ``labeler(images01, labels, superpixels=None, cmpa=None) -> PseudoLabelOutput``.
    num_classes: K = background + foreground classes.
    """

    def __init__(self, cfg: SSRConfig, labeler: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.labeler = labeler
        for p in self.labeler.parameters():
            p.requires_grad_(False)
        clip = cast(CLIP, labeler.clip)
        set_input_normalisation(clip.visual, cfg.data.clip_normalisation)
        vcfg = clip.visual.cfg
        self.patch_size: int = vcfg.patch_size
        n_in = decoder_layers(cfg.decoder.use_layers, vcfg.layers)
        self.decoder = SegDecoder(cfg.decoder, vcfg.width, n_in, num_classes)
        self.cmpa: CMPA | None = None
        if cfg.cmpa.enabled:
            if cfg.cmpa.in_dim != clip.cfg.embed_dim:
                raise ConfigError(
                    f"cmpa.in_dim={cfg.cmpa.in_dim} but the CLIP '{cfg.backbone.clip}' embeds "
                    f"to {clip.cfg.embed_dim}; set cmpa.in_dim={clip.cfg.embed_dim}"
                )
            self.cmpa = CMPA(cfg.cmpa, num_classes - 1)
        self.losses = SSRLosses(self.decoder, self.cmpa, cfg, self.patch_size)
        self.dino_hook: DinoBranchHook | None = None
        if cfg.decoder.dino_branch:
            self.dino_hook = attach_dino_branch(self, cfg)
            self.losses.dino_hook = self.dino_hook

    @property
    def visual(self) -> VisionTransformer:
        """CLIP's image tower (frozen)."""
        return cast(CLIP, self.labeler.clip).visual

    def train(self, mode: bool = True) -> SSRModel:
        """Train mode for the trainable parts only; the frozen backbones stay in eval."""
        super().train(mode)
        self.labeler.eval()
        return self

    def segment(self, images01: Tensor) -> Tensor:
        """images01: ``B x 3 x H x W`` in [0, 1], H and W multiples of the patch size ->
        logits ``B x K x h x w`` (float32) at patch resolution. Runs only the CLIP blocks the
        decoder reads (and DINO with ``decoder.dino_branch``: the fused logits)."""
        # a `with` block, not the decorator: mutmut skips decorated functions (make mutants)
        with torch.no_grad():
            visual = self.visual
            out = visual.forward_intermediates(
                visual.normalize(images01), n_blocks=self.decoder.num_layers_in
            )
            if self.dino_hook is not None:
                return self.dino_hook.segment(out.tokens, out.grid, images01).float()
            logits, _ = self.decoder(out.tokens, out.grid)
            return logits.float()

    def trainable_modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"decoder": self.decoder}
        if self.cmpa is not None:
            mods["cmpa"] = self.cmpa
        return mods

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Weights and buffers of the decoder and CMPA (keys ``decoder.*``, ``cmpa.*``)."""
        return {
            f"{name}.{k}": v
            for name, mod in self.trainable_modules().items()
            for k, v in mod.state_dict().items()
        }

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Strict inverse of :meth:`trainable_state_dict`; raises naming missing/extra keys."""
        expected = set(self.trainable_state_dict())
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or extra:
            raise KeyError(f"trainable weights mismatch: missing {missing[:5]}, extra {extra[:5]}")
        for name, mod in self.trainable_modules().items():
            prefix = f"{name}."
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            mod.load_state_dict(sub, strict=True)


def set_input_normalisation(visual: VisionTransformer, name: str) -> None:
    """Make ``visual.normalize`` use the named statistics (``data.clip_normalisation``).

    WeCLIP's loader normalises its crops with the ImageNet mean/std and CLIP reads them as they
    are, so ``imagenet`` reproduces WeCLIP's CLIP inputs; ``clip`` gives CLIP's own. Set on the
    labeller's CLIP, it covers every CLIP pass of the model: the labeller's Grad-CAM in training
    and validation, and :meth:`SSRModel.segment` at inference. The CLIP module is changed in
    place: a labeller shared with other code sees the same normalisation.
    """
    mean, std = input_stats(name)
    if (visual.cfg.mean, visual.cfg.std) != (mean, std):
        visual.cfg = dataclasses.replace(visual.cfg, mean=mean, std=std)
