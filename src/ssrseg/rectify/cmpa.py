"""CMPA: cross-modal prototype alignment (SSR_SPEC section 6).

Two projection heads of the same shape with separate weights map CLIP embeddings (d1) to a
smaller space (d2): ISA for every final patch embedding, TSA for each class text embedding.
Each image's class feature ``f_ic`` is the masked average of its projected patches weighted by
the detached initial CAM of class c; the prototype loss is a cross-entropy of ``f_ic`` against
all text prototypes ``P_T = TSA(text)`` at a learnable temperature ``tau``. An optional symmetric
term pulls each text prototype towards its class's visual prototype ``P_I`` (per-class means of
``f_ic`` gathered over the data and refreshed on the trainer's schedule).

``cmpa.prototypes=kmeans`` is the paper's variant (docs/training.md, "CMPA prototypes"):
K-means (K = number of foreground classes) over the image features ``f_ic`` gathered since the
last refresh gives P_I; K-means over the text features of the same image-text pairs (each pair's
text is its class prompt, so with K = C every class text is its own cluster) gives the text
clusters, whose live TSA means are P_T; image clusters are matched one-to-one to text clusters
by the Hungarian method on the pairs' co-occurrence counts, and a sample's positive is the text
cluster matched to the image cluster nearest to its ``f_ic``. Before the first refresh each
class is its own cluster on both sides (the positive is the image-level class).

``cmpa.background_term`` (our decision, not the paper's; docs/toy_world.md, "Why CMPA lowers the
initial CAM") adds a background term: each image's background feature (ISA patches pooled with
``1 - max_c CAM_c``) against the text prototypes of [classes + background prompts], with a
background prompt as positive, so the projected space keeps the background alignment that
CLIP-ES's background words rely on in the projected CAM's softmax. ``raw_nearest``: the positive
is the background prompt nearest (cosine) to the same pooled feature in the raw CLIP space (CLIP's
own zero-shot choice, fixed by the frozen backbone); ``any``: every background prompt is a positive
(multi-positive cross-entropy: the feature must be nearer the background prompts than the
classes). ``none`` (default) is the paper's loss, unchanged.

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
from ssrseg.rectify.sgc import kmeans as lloyd

PROTOTYPE_MODES = ("class_mean", "kmeans")
BACKGROUND_TERMS = ("none", "raw_nearest", "any")


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


def background_weights(cams: Sequence[Tensor]) -> list[Tensor]:
    """Per image the CAM's background ``1 - max_c CAM_c`` (``1 x h x w``, CAMs clamped to
    [0, 1]); all ones for an image without classes. cams: per image ``K_i x h x w``."""
    out = []
    for cam in cams:
        cam = cam.detach()
        if cam.shape[0] == 0:
            out.append(cam.new_ones(1, *cam.shape[-2:]))
        else:
            out.append(1.0 - cam.clamp(0.0, 1.0).amax(dim=0, keepdim=True))
    return out


def nearest_prompt(feats: Tensor, prompts: Tensor) -> Tensor:
    """Index of the prompt embedding (``K x d``) with the highest cosine to each feature
    (``M x d``): ``M`` long."""
    sims = F.normalize(feats.float(), dim=-1) @ F.normalize(prompts.float(), dim=-1).t()
    return sims.argmax(dim=1)


def background_prototype_loss(
    feats: Tensor,
    class_protos: Tensor,
    bg_protos: Tensor,
    tau: Tensor,
    targets: Tensor | None = None,
) -> Tensor:
    """Background term: ``mean_i CE(norm(f_i) . norm([P_T; P_B])^T / tau, positive)``.

    feats: ``M x d`` pooled background features; class_protos: ``C x d``; bg_protos: ``B x d``.
    targets (``M`` long, 0-based background prompt): the positive is column ``C + target``;
    None: every background prompt is a positive,
    ``-log(sum_b exp(l_{C+b}) / sum_k exp(l_k))``. Zero (in the graph) when M = 0.
    """
    protos = torch.cat([class_protos, bg_protos], dim=0)
    if feats.shape[0] == 0:
        return protos.sum() * 0.0
    c = class_protos.shape[0]
    logits = prototype_logits(feats, protos, tau).float()
    if targets is not None:
        return F.cross_entropy(logits, targets + c)
    return (logits.logsumexp(dim=1) - logits[:, c:].logsumexp(dim=1)).mean()


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


def kmeans(points: Tensor, k: int, iters: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """K-means of SGC (:func:`ssrseg.rectify.sgc.kmeans`: k-means++ seeding from ``seed``,
    Lloyd iterations) plus its centroids.

    points: ``M x d`` (M >= k). Returns (centroids ``k x d``, labels ``M`` long, filled ``k``
    bool); a cluster left without points has a zero centroid and ``filled`` False.
    """
    m = points.shape[0]
    if m < k:
        raise ValueError(f"K-means needs at least k={k} points, got {m}")
    labels = lloyd(points, k, iters, seed).cpu()
    x = points.detach().double().cpu()
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k).double()
    centroids = sums / counts.clamp_min(1.0)[:, None]
    return centroids.to(points.dtype), labels, counts > 0


def match_clusters(counts: Tensor) -> Tensor:
    """One-to-one matching of rows (image clusters) to columns (text clusters) maximising the
    matched co-occurrence counts (Hungarian method). counts: ``K x K``; returns ``K`` long,
    the column matched to each row."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(counts.detach().double().cpu().numpy(), maximize=True)
    out = torch.empty(counts.shape[0], dtype=torch.long)
    out[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return out


def cluster_prototypes(protos: Tensor, assign: Tensor, k: int) -> Tensor:
    """Mean of the L2-normalised ``protos`` (``C x d``) of each cluster (``assign`` ``C`` long):
    ``k x d`` (zero rows for empty clusters). Differentiable in ``protos``."""
    onehot = F.one_hot(assign, k).to(protos.dtype)  # C x k
    mass = onehot.sum(dim=0).clamp_min(1.0)
    return (onehot.t() @ F.normalize(protos, dim=-1)) / mass[:, None]


def nearest_centroid(feats: Tensor, centroids: Tensor, valid: Tensor | None = None) -> Tensor:
    """Index of the nearest centroid (Euclidean, as in K-means) of each feature: ``M`` long.

    feats: ``M x d``; centroids: ``K x d``; valid: ``K`` bool (None: all), others never chosen.
    """
    if feats.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=feats.device)
    dist = torch.cdist(feats.float(), centroids.float().to(feats.device))
    if valid is not None:
        dist = dist.masked_fill(~valid.to(dist.device), float("inf"))
    return dist.argmin(dim=1)


class CMPA(nn.Module):
    """ISA / TSA heads, learnable temperature and visual prototypes for ``num_classes`` (C,
    foreground only) classes.

    Buffers (saved with the trainable weights so a resumed run continues exactly):
    ``visual_protos`` ``C x d2`` and ``proto_valid`` ``C`` (bool as uint8); with
    ``cmpa.prototypes=kmeans`` the visual prototypes are the image K-means centroids (K = C) and
    three more buffers hold the clustering: ``text_cluster`` ``C`` (class -> text cluster),
    ``cluster_positive`` ``K`` (image cluster -> matched text cluster) and ``refreshes`` (how many
    K-means refreshes ran; 0 = each class is its own cluster). What is gathered between
    refreshes lives in the trainer's store (:func:`prototype_store`).
    """

    visual_protos: Tensor
    proto_valid: Tensor
    text_cluster: Tensor
    cluster_positive: Tensor
    refreshes: Tensor

    def __init__(self, cfg: CMPAConfig, num_classes: int) -> None:
        super().__init__()
        if cfg.prototypes not in PROTOTYPE_MODES:
            raise ValueError(
                f"cmpa.prototypes={cfg.prototypes!r}: use one of {', '.join(PROTOTYPE_MODES)} "
                "(see docs/training.md, CMPA prototypes)"
            )
        if cfg.background_term not in BACKGROUND_TERMS:
            raise ValueError(
                f"cmpa.background_term={cfg.background_term!r}: use one of "
                f"{', '.join(BACKGROUND_TERMS)}"
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
        if self.kmeans:
            # before the first refresh every class is its own cluster on both sides
            self.register_buffer("text_cluster", torch.arange(num_classes))
            self.register_buffer("cluster_positive", torch.arange(num_classes))
            self.register_buffer("refreshes", torch.zeros((), dtype=torch.long))

    @property
    def kmeans(self) -> bool:
        """The paper's K-means prototypes (``cmpa.prototypes=kmeans``)."""
        return self.cfg.prototypes == "kmeans"

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
        return self._class_features(self.project_image(patch_emb), cams, labels, grid)

    @staticmethod
    def _class_features(
        proj: Tensor,
        cams: Sequence[Tensor],
        labels: Sequence[Sequence[int]],
        grid: tuple[int, int],
    ) -> tuple[Tensor, Tensor]:
        """:meth:`class_features` on already projected patches ``B x N x d2``."""
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
        bg_emb: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor]:
        """Prototype loss of a batch.

        patch_emb: ``B x N x E`` final CLIP patch embeddings (detached); cams: initial CAMs per
        image ``K_i x h x w``; text_emb: ``C x E`` class text embeddings; bg_emb: ``B_w x E``
        background-prompt embeddings (needed by ``cmpa.background_term``, ignored without it).
        Returns (loss, parts {"proto", "proto_sym", "proto_bg"}, detached f_ic ``M x d2``,
        classes ``M``) so the trainer can accumulate visual prototypes.
        """
        proj = self.project_image(patch_emb)
        feats, classes = self._class_features(proj, cams, labels, grid)
        n_cls = text_emb.shape[0]
        use_bg = self.cfg.background_term != "none"
        if use_bg:
            if bg_emb is None or bg_emb.shape[0] == 0:
                raise ValueError(
                    f"cmpa.background_term={self.cfg.background_term} needs background prompts"
                )
            # one TSA pass over every text the projected CAM scores, so the BatchNorm statistics
            # (train and running) are those of [classes + background prompts]
            all_protos = self.project_text(torch.cat([text_emb, bg_emb.to(text_emb)]))
            text_protos, bg_protos = all_protos[:n_cls], all_protos[n_cls:]
        else:
            text_protos = self.project_text(text_emb)
        tau = self.tau
        visual, valid = self.visual_protos, self.proto_valid.bool()
        targets = classes
        if self.kmeans:
            # P_T: live TSA means of the text clusters; positive: the text cluster matched to
            # the image cluster nearest to f_ic (the image-level class before the first refresh)
            k = self.num_classes
            text_protos = cluster_prototypes(text_protos, self.text_cluster, k)
            targets = self.kmeans_positives(F.normalize(feats.detach().float(), dim=-1), classes)
            # visual prototype of text cluster t: the centroid of the image cluster matched to t
            visual = torch.zeros_like(self.visual_protos)
            visual[self.cluster_positive] = self.visual_protos
            valid = torch.zeros_like(valid)
            valid[self.cluster_positive] = self.proto_valid.bool()
        main = prototype_loss(feats, targets, text_protos, tau)
        parts = {"proto": main.detach()}
        total = main
        if self.cfg.symmetric:
            sym = symmetric_prototype_loss(text_protos, visual, valid, tau)
            parts["proto_sym"] = sym.detach()
            total = total + sym
        if use_bg:
            assert bg_emb is not None
            weights = background_weights(cams)
            bg_feats = torch.cat(masked_average_pool(proj, weights, grid), dim=0)  # B x d2
            bg_targets = None
            if self.cfg.background_term == "raw_nearest":
                raw = torch.cat(masked_average_pool(patch_emb.detach(), weights, grid), dim=0)
                bg_targets = nearest_prompt(raw, bg_emb.to(raw))
            bg = background_prototype_loss(bg_feats, text_protos, bg_protos, tau, bg_targets)
            parts["proto_bg"] = bg.detach()
            total = total + bg
        return total, parts, F.normalize(feats.detach().float(), dim=-1), classes

    def kmeans_positives(self, feats: Tensor, classes: Tensor) -> Tensor:
        """Positive text cluster of each normalised ``f_ic`` (``M x d2``, classes ``M``): the
        text cluster matched to its nearest image centroid; before the first refresh the text
        cluster of its class (= the class)."""
        if int(self.refreshes) == 0:
            return self.text_cluster[classes]
        nearest = nearest_centroid(feats, self.visual_protos, self.proto_valid.bool())
        return self.cluster_positive[nearest]

    def refresh(
        self, acc: PrototypeAccumulator | FeatureBank, text_emb: Tensor | None = None
    ) -> int:
        """Visual prototypes <- per-class mean of the features accumulated since the last
        refresh (classes not seen keep their previous prototype). Returns the number of classes
        refreshed. In data-parallel runs the trainer sums the accumulators over ranks first.

        K-means mode: ``acc`` is a :class:`FeatureBank` (every rank's features, gathered by the
        trainer) and ``text_emb`` (``C x E``) the class text embeddings; see
        :meth:`refresh_kmeans`."""
        # a `with` block, not the decorator: mutmut skips decorated functions (make mutants)
        with torch.no_grad():
            if isinstance(acc, FeatureBank):
                if text_emb is None:
                    raise ValueError("a K-means refresh needs the class text embeddings")
                return self.refresh_kmeans(acc, text_emb)
            if self.kmeans:
                raise TypeError("cmpa.prototypes=kmeans refreshes from a FeatureBank")
            seen: Tensor = acc.count > 0
            means = acc.sum[seen] / acc.count[seen, None]
            self.visual_protos[seen.to(self.visual_protos.device)] = means.to(self.visual_protos)
            self.proto_valid[seen.to(self.proto_valid.device)] = 1
            return int(seen.sum())

    def refresh_kmeans(self, bank: FeatureBank, text_emb: Tensor) -> int:
        """The paper's refresh: K-means (K = C) over the banked image features -> P_I; K-means
        over the pairs' text features (TSA of each pair's class text, eval-mode BatchNorm) ->
        text clusters; Hungarian matching of image to text clusters on the pairs' co-occurrence
        counts. Seeded by the refresh count, so a resumed run clusters identically. Returns the
        number of non-empty image clusters, or 0 (state kept) when fewer than K features were
        gathered."""
        # a `with` block, not the decorator: mutmut skips decorated functions (make mutants)
        with torch.no_grad():
            feats, classes = bank.features()
            k = self.num_classes
            if feats.shape[0] < k:
                return 0
            seed = 1000 + int(self.refreshes)
            centroids, img_labels, filled = kmeans(feats, k, self.cfg.kmeans_iters, seed)
            was_training = self.tsa.training
            self.tsa.eval()
            try:
                text = F.normalize(self.project_text(text_emb).float(), dim=-1).cpu()
            finally:
                self.tsa.train(was_training)
            # Each pair's text is its class prompt, so the pairs' text features are the C class
            # texts repeated; K-means with K = C gives distinct texts their own clusters whatever
            # the repetitions, so the C texts are clustered once each.
            _, text_of_class, _ = kmeans(text, k, self.cfg.kmeans_iters, seed)
            cooc = torch.zeros(k, k, dtype=torch.float64)
            pair_text = text_of_class[classes.cpu()]
            cooc.index_put_(
                (img_labels, pair_text),
                torch.ones(len(pair_text), dtype=torch.float64),
                accumulate=True,
            )
            dev = self.visual_protos.device
            self.visual_protos.copy_(centroids.to(self.visual_protos))
            self.proto_valid.copy_(filled.to(self.proto_valid))
            self.text_cluster.copy_(text_of_class.to(dev))
            self.cluster_positive.copy_(match_clusters(cooc).to(dev))
            self.refreshes += 1
            return int(filled.sum())


class FeatureBank:
    """The normalised ``f_ic`` and their classes gathered between K-means refreshes.

    A ring buffer of ``capacity`` rows (the newest kept); kept outside the module for the
    reason given at :class:`PrototypeAccumulator`, and checkpointed by the trainer.
    """

    def __init__(self, dim: int, capacity: int, device: torch.device | str = "cpu") -> None:
        if capacity < 1:
            raise ValueError(f"cmpa.kmeans_max_features must be >= 1, got {capacity}")
        self.capacity = capacity
        self.feats = torch.zeros(0, dim, device=device)
        self.classes = torch.zeros(0, dtype=torch.long, device=device)
        self.total = 0  # features added since the last reset (write position = total % cap)

    def add(self, feats: Tensor, classes: Tensor) -> None:
        """Add features ``M x d2`` of classes ``M``."""
        # a `with` block, not the decorator: mutmut skips decorated functions (make mutants)
        with torch.no_grad():
            feats = feats.detach().float().to(self.feats.device)
            classes = classes.to(self.classes.device)
            for f, c in zip(feats.split(self.capacity), classes.split(self.capacity), strict=True):
                n = f.shape[0]
                if self.feats.shape[0] < self.capacity:
                    room = self.capacity - self.feats.shape[0]
                    self.feats = torch.cat([self.feats, f[:room]])
                    self.classes = torch.cat([self.classes, c[:room]])
                    self.total += min(n, room)
                    f, c, n = f[room:], c[room:], max(0, n - room)
                if n:
                    pos = (self.total + torch.arange(n, device=f.device)) % self.capacity
                    self.feats[pos] = f
                    self.classes[pos] = c
                    self.total += n

    def features(self) -> tuple[Tensor, Tensor]:
        """(features ``M x d2``, classes ``M``) currently held."""
        return self.feats, self.classes

    def extend(self, others: list[dict[str, Tensor]]) -> None:
        """Replace the content with the concatenation of ``state_dict()`` s (every rank's bank,
        in rank order) before a refresh."""
        self.reset()
        for st in others:
            self.add(st["feats"], st["classes"])

    def reset(self) -> None:
        self.feats = self.feats[:0]
        self.classes = self.classes[:0]
        self.total = 0

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "feats": self.feats.cpu().clone(),
            "classes": self.classes.cpu().clone(),
            "total": torch.tensor(self.total),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.feats = state["feats"].to(self.feats.device, torch.float32).clone()
        self.classes = state["classes"].to(self.classes.device, torch.long).clone()
        self.total = int(state["total"])


def prototype_store(
    cmpa: CMPA, device: torch.device | str = "cpu"
) -> PrototypeAccumulator | FeatureBank:
    """What the trainer gathers between refreshes: per-class sums (class_mean) or a bank of
    features (kmeans)."""
    if cmpa.kmeans:
        return FeatureBank(cmpa.cfg.out_dim, cmpa.cfg.kmeans_max_features, device)
    return PrototypeAccumulator(cmpa.num_classes, cmpa.cfg.out_dim, device)


class PrototypeAccumulator:
    """Running per-class sums of normalised ``f_ic`` between prototype refreshes.

    Kept outside the CMPA module on purpose: DDP broadcasts module buffers from rank 0 at every
    forward, which would overwrite the other ranks' partial sums.
    sum: ``C x d2``; count: ``C`` (float64 for exact sums over long runs).
    """

    def __init__(self, num_classes: int, dim: int, device: torch.device | str = "cpu") -> None:
        self.sum = torch.zeros(num_classes, dim, dtype=torch.float64, device=device)
        self.count = torch.zeros(num_classes, dtype=torch.float64, device=device)

    def add(self, feats: Tensor, classes: Tensor) -> None:
        """Add features ``M x d2`` of classes ``M``."""
        # a `with` block, not the decorator: mutmut skips decorated functions (make mutants)
        with torch.no_grad():
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
