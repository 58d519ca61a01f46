"""CMPA: cross-modal prototype alignment (SSR_SPEC section 6).

Two projection heads of the same shape with separate weights map CLIP embeddings (d1) to a
smaller space (d2): ISA for every final patch embedding, TSA for each class text embedding.
Each image's class feature ``f_ic`` is the masked average of its projected patches weighted by
the detached initial CAM of class c; the prototype loss is a cross-entropy of ``f_ic`` against
all text prototypes ``P_T = TSA(text)`` at a learnable temperature ``tau``. An optional symmetric
term pulls each text prototype towards its class's visual prototype ``P_I`` (per-class means of
``f_ic`` gathered over the data and refreshed on the trainer's schedule).

Pure maths are module-level functions; :class:`CMPA` holds the heads, ``tau`` and the visual
prototype buffers. The schedule (when the loss starts, when prototypes refresh) is the trainer's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssrseg.config import CMPAConfig


def projection_head(
    in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, plain_last: bool
) -> nn.Sequential:
    """``num_layers`` Linear -> BatchNorm1d -> ReLU stacks ``in_dim -> hidden ... -> out_dim``.

    With ``plain_last`` the last stack is a plain Linear: a final ReLU would confine every
    projected feature to the positive orthant, where all cosines are >= 0 and the contrastive
    loss has little room to push classes apart.
    """
    if num_layers < 1:
        raise ValueError(f"cmpa.num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    width = in_dim
    for i in range(num_layers):
        last = i == num_layers - 1
        out = out_dim if last else hidden_dim
        layers.append(nn.Linear(width, out))
        if not (last and plain_last):
            layers += [nn.BatchNorm1d(out), nn.ReLU(inplace=True)]
        width = out
    return nn.Sequential(*layers)


def masked_average_pool(
    feats: Tensor, cams: Sequence[Tensor], grid: tuple[int, int], eps: float = 1e-6
) -> list[Tensor]:
    """CAM-weighted mean of patch features (SSR eq. 2).

    feats: ``B x N x d`` (N = h * w); cams: per image ``K_i x h' x w'`` (resized bilinearly to
    the patch grid when h' x w' differs; detached here). Returns per image ``K_i x d``.
    """
    h, w = grid
    pooled = []
    for b, cam in enumerate(cams):
        cam = cam.detach().to(feats.dtype)
        if cam.shape[0] == 0:
            pooled.append(feats.new_zeros(0, feats.shape[-1]))
            continue
        if tuple(cam.shape[-2:]) != (h, w):
            cam = F.interpolate(cam[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        weights = cam.clamp_min(0).reshape(cam.shape[0], h * w)  # K x N
        pooled.append(weights @ feats[b] / (weights.sum(dim=1, keepdim=True) + eps))
    return pooled


def prototype_logits(feats: Tensor, prototypes: Tensor, tau: Tensor) -> Tensor:
    """Cosine similarity over temperature: ``M x d`` and ``K x d`` -> ``M x K``."""
    return F.normalize(feats, dim=-1) @ F.normalize(prototypes, dim=-1).t() / tau


def prototype_loss(feats: Tensor, classes: Tensor, text_protos: Tensor, tau: Tensor) -> Tensor:
    """``L_proto = mean_i CE(norm(f_i) . norm(P_T)^T / tau, c_i)``.

    feats: ``M x d`` pooled class features; classes: ``M`` long (0-based foreground class);
    text_protos: ``C x d``. Returns a scalar (zero, still in the graph, when M = 0).
    """
    if feats.shape[0] == 0:
        return text_protos.sum() * 0.0
    return F.cross_entropy(prototype_logits(feats, text_protos, tau).float(), classes)


def symmetric_prototype_loss(
    text_protos: Tensor, visual_protos: Tensor, valid: Tensor, tau: Tensor
) -> Tensor:
    """Text-to-visual term: ``mean_c CE(norm(P_T[c]) . norm(P_I[V])^T / tau, c)`` over classes
    V whose visual prototype exists (``valid``); zero when none does.

    text_protos, visual_protos: ``C x d``; valid: ``C`` bool.
    """
    idx = valid.nonzero(as_tuple=True)[0]
    if idx.numel() == 0:
        return text_protos.sum() * 0.0
    logits = prototype_logits(text_protos[idx], visual_protos[idx].detach(), tau)
    return F.cross_entropy(logits.float(), torch.arange(idx.numel(), device=idx.device))


class CMPA(nn.Module):
    """ISA / TSA heads, learnable temperature and visual prototypes for ``num_classes`` (C,
    foreground only) classes.

    Buffers (saved with the trainable weights so a resumed run continues exactly):
    ``visual_protos`` ``C x d2`` and ``proto_valid`` ``C`` (bool as uint8). The running sums
    between refreshes live in a :class:`PrototypeAccumulator` held by the trainer.
    """

    visual_protos: Tensor
    proto_valid: Tensor

    def __init__(self, cfg: CMPAConfig, num_classes: int) -> None:
        super().__init__()
        if cfg.prototypes != "class_mean":
            raise ValueError(
                f"cmpa.prototypes={cfg.prototypes!r} is not supported; only 'class_mean' "
                "(see docs/training.md, Decisions)"
            )
        self.cfg = cfg
        self.num_classes = num_classes
        args = (cfg.in_dim, cfg.hidden_dim, cfg.out_dim, cfg.num_layers, cfg.plain_last_layer)
        self.isa = projection_head(*args)
        self.tsa = projection_head(*args)
        # log-parameterised so tau stays positive and its steps are relative
        self.log_tau = nn.Parameter(torch.tensor(math.log(cfg.tau_init)))
        self.register_buffer("visual_protos", torch.zeros(num_classes, cfg.out_dim))
        self.register_buffer("proto_valid", torch.zeros(num_classes, dtype=torch.uint8))

    @property
    def tau(self) -> Tensor:
        """Temperature, ``exp(log_tau)`` clamped below at ``cfg.tau_min`` (scalar tensor)."""
        return self.log_tau.exp().clamp(min=self.cfg.tau_min)

    def project_image(self, patch_emb: Tensor) -> Tensor:
        """ISA on every patch: ``B x N x E`` -> ``B x N x d2`` (BatchNorm over all B*N patches)."""
        b, n, e = patch_emb.shape
        x = patch_emb.reshape(b * n, e).to(self.log_tau.dtype)
        return self.isa(x).reshape(b, n, -1)

    def project_text(self, text_emb: Tensor) -> Tensor:
        """TSA on class (or background-word) embeddings: ``C x E`` -> ``C x d2``."""
        return self.tsa(text_emb.to(self.log_tau.dtype))

    def class_features(
        self,
        patch_emb: Tensor,
        cams: Sequence[Tensor],
        labels: Sequence[Sequence[int]],
        grid: tuple[int, int],
    ) -> tuple[Tensor, Tensor]:
        """Pooled ``f_ic`` for every (image, present class): (``M x d2``, classes ``M`` long).

        cams[i] holds one map per class of ``labels[i]``, in the same order.
        """
        proj = self.project_image(patch_emb)
        pooled = masked_average_pool(proj, cams, grid)
        for i, (p, lab) in enumerate(zip(pooled, labels, strict=True)):
            if p.shape[0] != len(lab):
                raise ValueError(f"image {i}: {p.shape[0]} CAMs for {len(lab)} labels")
        feats = torch.cat(pooled, dim=0) if pooled else proj.new_zeros(0, proj.shape[-1])
        classes = torch.tensor(
            [c for lab in labels for c in lab], dtype=torch.long, device=proj.device
        )
        return feats, classes

    def loss(
        self,
        patch_emb: Tensor,
        cams: Sequence[Tensor],
        labels: Sequence[Sequence[int]],
        grid: tuple[int, int],
        text_emb: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor]:
        """Prototype loss of a batch.

        patch_emb: ``B x N x E`` final CLIP patch embeddings (detached); cams: initial CAMs per
        image ``K_i x h x w``; text_emb: ``C x E`` class text embeddings.
        Returns (loss, parts {"proto", "proto_sym"}, detached f_ic ``M x d2``, classes ``M``)
        so the trainer can accumulate visual prototypes.
        """
        feats, classes = self.class_features(patch_emb, cams, labels, grid)
        text_protos = self.project_text(text_emb)
        tau = self.tau
        main = prototype_loss(feats, classes, text_protos, tau)
        parts = {"proto": main.detach()}
        total = main
        if self.cfg.symmetric:
            sym = symmetric_prototype_loss(
                text_protos, self.visual_protos, self.proto_valid.bool(), tau
            )
            parts["proto_sym"] = sym.detach()
            total = total + sym
        return total, parts, F.normalize(feats.detach().float(), dim=-1), classes

    @torch.no_grad()
    def refresh(self, acc: PrototypeAccumulator) -> int:
        """Visual prototypes <- per-class mean of the features accumulated since the last
        refresh (classes not seen keep their previous prototype). Returns the number of classes
        refreshed. In data-parallel runs the trainer sums the accumulators over ranks first."""
        seen: Tensor = acc.count > 0
        means = acc.sum[seen] / acc.count[seen, None]
        self.visual_protos[seen.to(self.visual_protos.device)] = means.to(self.visual_protos)
        self.proto_valid[seen.to(self.proto_valid.device)] = 1
        return int(seen.sum())


class PrototypeAccumulator:
    """Running per-class sums of normalised ``f_ic`` between prototype refreshes.

    Kept outside the CMPA module on purpose: DDP broadcasts module buffers from rank 0 at every
    forward, which would overwrite the other ranks' partial sums.
    sum: ``C x d2``; count: ``C`` (float64 for exact sums over long runs).
    """

    def __init__(self, num_classes: int, dim: int, device: torch.device | str = "cpu") -> None:
        self.sum = torch.zeros(num_classes, dim, dtype=torch.float64, device=device)
        self.count = torch.zeros(num_classes, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, feats: Tensor, classes: Tensor) -> None:
        """Add features ``M x d2`` of classes ``M``."""
        self.sum.index_add_(0, classes, feats.detach().to(self.sum.dtype))
        self.count.index_add_(0, classes, torch.ones_like(classes, dtype=self.count.dtype))

    def reset(self) -> None:
        self.sum.zero_()
        self.count.zero_()

    def state_dict(self) -> dict[str, Tensor]:
        return {"sum": self.sum.cpu().clone(), "count": self.count.cpu().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.sum.copy_(state["sum"])
        self.count.copy_(state["count"])
