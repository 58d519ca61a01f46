"""The pseudo-label stage: frozen CLIP + DINO and cached text embeddings, from a batch of
images and their image-level tags to initial CAMs, refined CAMs and label maps.

Per batch (SSR_SPEC sections 3-5, 7):

1. Grad-CAM on CLIP (raw space, or CMPA-projected with ``cfg.cam.projected``), one forward of
   blocks 1..L-1 for the whole batch plus the last block with gradients; the same forward gives
   the tokens of every block (reused by the decoder) and the last blocks' attentions;
2. DINO forward (no gradients) for its last layer's attention;
3. affinity (CLIP / DINO / fused), transition matrix, per-class column mask (none / box / SGC),
   refinement ``T @ (M_c * cam_c)``, min-max, bilinear upsampling to the image (with
   ``out_size``, the original size the batch was resized from: in one resize from the patch
   grid, as CLIP-ES, or via the batch size, ``pseudo.output_resize``);
4. background ``(1 - max_c cam_c) ** power``, PAR, argmax (optional ignore band).

The Table 3 rows are config switches: initial CAM only (both attentions off), + CLIP attention
(``affinity.mask=box``), + DINO attention (box), + SGC mask (``affinity.mask=sgc``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssrseg.backbones.clip import CLIP
from ssrseg.backbones.dino import run_on_grid
from ssrseg.backbones.tokenizer import Tokenizer
from ssrseg.backbones.vit import VisionTransformer, ViTOutput, half_weights
from ssrseg.backbones.weights import load_clip, load_dino
from ssrseg.cam.gradcam import gradcam
from ssrseg.cam.prompts import ClassPrompts, encode_prompts, prompts_from_config
from ssrseg.config import ConfigError, SSRConfig
from ssrseg.data.resize import RESIZE_MODES
from ssrseg.model.dino_branch import select_attention_layers, weight_cams
from ssrseg.model.ssr import SSRModel
from ssrseg.precision import fp32_island, resolve_precision
from ssrseg.rectify.affinity import (
    box_mask,
    fuse_affinity,
    mean_attention,
    refine_with_masked_affinity,
    refine_with_transition,
    transition_matrix,
    upsample,
)
from ssrseg.rectify.labels import scores_to_labels, with_background
from ssrseg.rectify.par import par_refine
from ssrseg.rectify.sgc import colour_clusters, sgc_mask, slic_superpixels

OUTPUT_RESIZE_MODES = ("direct", "two_step")


class ProjectionHeads(Protocol):
    """What the labeller needs from CMPA (``ssrseg.rectify.cmpa.CMPA``)."""

    training: bool

    @property
    def tau(self) -> Tensor: ...

    def project_image(self, patch_emb: Tensor) -> Tensor: ...

    def project_text(self, text_emb: Tensor) -> Tensor: ...

    def train(self, mode: bool = True) -> Any: ...


@dataclass
class PseudoLabelOutput:
    """Everything one batch yields (all detached).

    cams: per image ``K_i x h x w`` initial CAMs in [0, 1] (order of the image's labels).
    refined: per image ``K_i x H x W`` refined CAMs in [0, 1] (the initial CAMs upsampled when
        no attention is used); ``H x W`` = ``out_size`` when given, else the batch's size.
    labels: ``B x H x W`` long: 0 background, c + 1, 255 ignore.
    scores: per image ``(1 + K_i) x H' x W'`` background + class scores after PAR
        (``H' x W'`` = the label computation size, see ``pseudo.cam_size``; ``H x W`` when
        ``out_size`` is given with ``pseudo.output_resize=two_step``).
    masks: per image ``K_i x h x w`` column masks (ones when ``affinity.mask=none``).
    clip_out: the CLIP forward (tokens of every block, attentions of the last blocks).
    patch_emb: ``B x N x E`` raw CLIP patch embeddings ``proj(norm(.))``.
    grid: patch grid (h, w).
    """

    cams: list[Tensor]
    refined: list[Tensor]
    labels: Tensor
    scores: list[Tensor]
    masks: list[Tensor]
    clip_out: ViTOutput
    patch_emb: Tensor
    grid: tuple[int, int]


class Timer(dict[str, float]):
    """Seconds per stage section (benchmarks); ``clock`` is ``time.perf_counter`` (wall) by
    default, ``time.process_time`` gives CPU time (steadier on a shared machine). ``slic`` and
    ``par`` are parts of ``masks`` and ``labels``."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__()
        self.clock = clock


@contextlib.contextmanager
def _timed(timer: Timer | None, name: str, device: torch.device) -> Iterator[None]:
    """Add the time of the block to ``timer[name]`` (synchronising CUDA) when given."""
    if timer is None:
        yield
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = timer.clock()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timer[name] = timer.get(name, 0.0) + timer.clock() - start


_SLIC_POOL: ThreadPoolExecutor | None = None
_SLIC_POOL_LOCK = threading.Lock()


def slic_pool() -> ThreadPoolExecutor:
    """The one background thread SLIC runs on while the backbones work (created on first use).

    scikit-image's SLIC is single-threaded and releases the GIL, so on its own thread it overlaps
    the CLIP / DINO forwards instead of adding to them (2 threads, VOC images: stage / backbone
    1.34 -> 1.27); one worker keeps the extra load to one core."""
    global _SLIC_POOL
    with _SLIC_POOL_LOCK:
        if _SLIC_POOL is None:
            _SLIC_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssrseg-slic")
        return _SLIC_POOL


def batch_superpixels(images01: Tensor, cfg: SSRConfig) -> Tensor:
    """``B x 3 x H x W`` in [0, 1] -> ``B x H x W`` long SLIC labels of the 8-bit images
    (``sgc.n_segments``, ``sgc.compactness``), on ``images01``'s device: the superpixels the
    labeller computes when none are given."""
    return torch.stack(
        [
            slic_superpixels(img, cfg.sgc.n_segments, cfg.sgc.compactness)
            for img in images_to_uint8(images01)
        ]
    ).to(images01.device)


def images_to_uint8(images01: Tensor) -> list[np.ndarray]:
    """``B x 3 x H x W`` in [0, 1] -> list of ``H x W x 3`` uint8 arrays (for SLIC)."""
    arr = (images01.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return list(arr.permute(0, 2, 3, 1).cpu().numpy())


def pad_stack(maps: Sequence[Tensor], k_max: int) -> Tensor:
    """Per-image ``K_i x h x w`` -> ``B x k_max x h x w`` zero-padded."""
    out = maps[0].new_zeros(len(maps), k_max, *maps[0].shape[-2:])
    for i, m in enumerate(maps):
        out[i, : m.shape[0]] = m
    return out


def label_size(height: int, width: int, cam_size: int | None) -> tuple[int, int]:
    """Size at which background, PAR and argmax run: the image size, or long side ``cam_size``."""
    if cam_size is None or max(height, width) <= cam_size:
        return height, width
    s = cam_size / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


class PseudoLabeler(nn.Module):
    """Frozen CLIP (+ DINO) with cached text embeddings; see the module docstring.

    clip, tokenizer: CLIP and its tokenizer; dino: DINO ViT or None (needed only with
    ``affinity.use_dino_attention``); prompts: class prompts (C classes); cfg: the run config.
    """

    class_emb: Tensor
    bg_emb: Tensor
    # WeCLIP+'s DINO decoder branch (ssrseg.model.dino_branch.DinoBranchHook), set by SSRModel
    branch_hook: Any = None

    def __init__(
        self,
        clip: CLIP,
        tokenizer: Tokenizer,
        dino: VisionTransformer | None,
        prompts: ClassPrompts,
        cfg: SSRConfig,
    ) -> None:
        super().__init__()
        aff = cfg.affinity
        if aff.use_dino_attention and dino is None:
            raise ConfigError(
                "affinity.use_dino_attention=true needs a DINO backbone (backbone.use_dino=true)"
            )
        if aff.mask not in ("none", "box", "sgc"):
            raise ConfigError(f"affinity.mask must be none | box | sgc, got {aff.mask!r}")
        if aff.mask_target not in ("transition", "affinity"):
            raise ConfigError(
                f"affinity.mask_target must be transition | affinity, got {aff.mask_target!r}"
            )
        if cfg.cam.input_resize not in RESIZE_MODES:
            raise ConfigError(
                f"cam.input_resize must be {' | '.join(RESIZE_MODES)}, got {cfg.cam.input_resize!r}"
            )
        if cfg.cam.minmax_passes < 1:
            raise ConfigError(f"cam.minmax_passes must be >= 1, got {cfg.cam.minmax_passes}")
        if cfg.pseudo.output_resize not in OUTPUT_RESIZE_MODES:
            raise ConfigError(
                f"pseudo.output_resize must be {' | '.join(OUTPUT_RESIZE_MODES)}, "
                f"got {cfg.pseudo.output_resize!r}"
            )
        if cfg.pseudo.par_downscale < 1:
            raise ConfigError(f"pseudo.par_downscale must be >= 1, got {cfg.pseudo.par_downscale}")
        # a DINO whose patch differs from CLIP's (DINOv2) runs on CLIP's grid (run_on_grid)
        self.cfg = cfg
        self.clip = clip
        self.dino = dino
        self.tokenizer = tokenizer
        self.prompts = prompts
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        class_emb, bg_emb = encode_prompts(clip, tokenizer, prompts)
        self._fp16_weights = False  # set by use_fp16_weights (backbone.precision=fp16)
        self.register_buffer("class_emb", class_emb, persistent=False)
        self.register_buffer("bg_emb", bg_emb, persistent=False)

    def train(self, mode: bool = True) -> PseudoLabeler:
        """The backbones are frozen: the labeller stays in eval mode."""
        return super().train(False)

    @property
    def patch_size(self) -> int:
        return self.clip.visual.cfg.patch_size

    def precision(self, device: torch.device) -> str:
        """The backbones' precision on ``device`` (``backbone.precision``, ssrseg.precision)."""
        return resolve_precision(self.cfg.backbone, device)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """The backbones' precision for a forward on ``device``: bf16 autocast, or (fp16) the
        backbones converted to fp16 weights once (their text embeddings re-encoded in fp16, as
        the references encode them); fp32 and fp16 leave an enclosing autocast as it is."""
        precision = self.precision(device)
        if precision == "fp16":
            self.use_fp16_weights()
        if precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def use_fp16_weights(self) -> None:
        """Convert CLIP and DINO to the references' fp16 numerics (``half_weights``: fp16
        Linear / Conv / projections, float32 LayerNorms) and re-encode the prompts with the
        converted text tower (kept as float32 buffers). Idempotent."""
        if self._fp16_weights:
            return
        half_weights(self.clip)
        if self.dino is not None:
            half_weights(self.dino)
        class_emb, bg_emb = encode_prompts(self.clip, self.tokenizer, self.prompts)
        self.class_emb = class_emb.float()
        self.bg_emb = bg_emb.float()
        self._fp16_weights = True

    @property
    def raw_logit_scale(self) -> float:
        """Logit scale of the raw CLIP space: ``cam.logit_scale``, or the model's own
        ``exp(logit_scale)`` when that is None (CLIP-ES: ``model.logit_scale.exp()``)."""
        if self.cfg.cam.logit_scale is not None:
            return float(self.cfg.cam.logit_scale)
        return float(self.clip.logit_scale.detach().float().exp())

    def _text_space(
        self, cmpa: ProjectionHeads | None
    ) -> tuple[Tensor, Tensor, float, Callable[[Tensor], Tensor] | None]:
        """(class_emb, bg_emb, scale, image_proj) of the raw or the CMPA-projected space."""
        if not self.cfg.cam.projected or cmpa is None:
            return self.class_emb, self.bg_emb, self.raw_logit_scale, None
        was_training = cmpa.training
        cmpa.train(False)
        try:
            with torch.no_grad():
                cls = F.normalize(cmpa.project_text(self.class_emb).float(), dim=-1)
                bg = (
                    F.normalize(cmpa.project_text(self.bg_emb).float(), dim=-1)
                    if self.bg_emb.shape[0]
                    else self.bg_emb.new_zeros(0, cls.shape[1])
                )
                scale = float(1.0 / cmpa.tau)
        finally:
            cmpa.train(was_training)

        def image_proj(patch_emb: Tensor) -> Tensor:
            # Eval mode (running statistics): an image's CAM must not depend on its batch
            # mates, and the CAM pass must not update CMPA's BatchNorm statistics.
            mode = cmpa.training
            cmpa.train(False)
            try:
                return cmpa.project_image(patch_emb)
            finally:
                cmpa.train(mode)

        return cls, bg, scale, image_proj

    def forward(
        self,
        images01: Tensor,
        labels: Sequence[Sequence[int]],
        superpixels: Tensor | None = None,
        cmpa: ProjectionHeads | None = None,
        decoder_affinity: Tensor | None = None,
        timer: Timer | None = None,
        out_size: tuple[int, int] | None = None,
    ) -> PseudoLabelOutput:
        """images01: ``B x 3 x H x W`` in [0, 1] (H, W multiples of the patch size);
        labels: per image its 0-based foreground classes; superpixels: ``B x H x W`` long
        (-1 = none) or None (SLIC per image); cmpa: CMPA heads (used with cam.projected);
        decoder_affinity: ``B x N x N`` (WeCLIP's RFM, used with affinity.decoder_affinity);
        timer: optional :class:`Timer` receiving per-section seconds (benchmarks);
        out_size: the original ``(H0, W0)`` the batch was resized from (all images): refined
        CAMs, scores and labels are returned at that size (``pseudo.output_resize``).
        """
        cfg = self.cfg
        aff = cfg.affinity
        device = images01.device
        b, _, height, width = images01.shape
        if b == 0 or len(labels) != b:
            raise ValueError(f"{len(labels)} label lists for a batch of {b} images")
        labels = [tuple(dict.fromkeys(int(c) for c in lab)) for lab in labels]
        n_classes = self.class_emb.shape[0]
        for lab in labels:
            if any(c < 0 or c >= n_classes for c in lab):
                raise ValueError(f"labels {lab} out of range for {n_classes} classes")
        if self.precision(device) == "fp16":  # before the text embeddings are read
            self.use_fp16_weights()
        class_emb, bg_emb, scale, image_proj = self._text_space(cmpa)
        attn_last = aff.clip_layers if aff.use_clip_attention else 0
        sp_future: Future[Tensor] | None = None
        if aff.mask == "sgc" and superpixels is None:  # start SLIC now, collect it at the masks
            sp_future = slic_pool().submit(batch_superpixels, images01, cfg)

        with _timed(timer, "clip_gradcam", device), self._autocast(device):
            res = gradcam(
                self.clip.visual,
                images01,
                labels,
                class_emb,
                bg_emb,
                scale,
                image_proj=image_proj,
                attn_last=attn_last,
                batch_classes=cfg.cam.batch_classes,
                minmax_passes=cfg.cam.minmax_passes,
                # the raw CAM always reads the last block's input [CLIP-ES]
                target=cfg.cam.projected_target if image_proj is not None else "block_input",
            )
        grid = res.grid
        n_layers = self.clip.visual.cfg.layers
        hook = self.branch_hook
        a_dino, feedback = None, None
        if aff.use_dino_attention or hook is not None:
            assert self.dino is not None
            with _timed(timer, "dino", device), torch.no_grad(), self._autocast(device):
                n_attn = aff.dino_layers if aff.use_dino_attention else 0
                # on CLIP's patch grid: a DINO with another patch (DINOv2) sees a resized image
                d_out = run_on_grid(
                    self.dino, images01, grid, attn_layers=[-(i + 1) for i in range(n_attn)]
                )
            if aff.use_dino_attention:
                a_dino = mean_attention(d_out.attentions, sorted(d_out.attentions))
            if hook is not None:  # WeCLIP+: the decoder's fused prediction and affinity
                feedback = hook(res.vit.tokens, grid, d_out)
        # the label maths in float32 whatever encloses the labeller (ssrseg.precision)
        with fp32_island(device):
            a_clip = None
            if aff.use_clip_attention:
                layers = list(range(max(0, n_layers - aff.clip_layers), n_layers))
                if feedback is not None and cfg.decoder.dino_layer_select:
                    a_clip = select_attention_layers([res.vit.attentions[i] for i in layers])
                else:
                    a_clip = mean_attention(res.vit.attentions, layers)

            k_max = max((len(lab) for lab in labels), default=0)
            cams = pad_stack(res.cams, k_max).float()
            if feedback is not None:  # WeCLIP+: each CAM times its class's predicted probability
                cams = weight_cams(cams, feedback.prob, labels)
            with _timed(timer, "masks", device):
                if sp_future is not None:
                    with _timed(timer, "slic", device):  # the part the backbones did not hide
                        superpixels = sp_future.result()
                masks = self._masks(images01, res.cams, superpixels)
            masks_t = pad_stack(masks, k_max)

            with _timed(timer, "refine", device):
                if a_clip is None and a_dino is None:
                    refined_grid = cams
                else:
                    affinity = fuse_affinity(a_clip, a_dino, aff.clip_weight, aff.dino_weight)
                    if feedback is not None:
                        affinity = affinity * feedback.affinity
                    use_mask = None if aff.mask == "none" else masks_t
                    if aff.mask_target == "affinity" and use_mask is not None:
                        refined_grid = refine_with_masked_affinity(
                            affinity, cams, use_mask, aff.sinkhorn_rounds, aff.square
                        )
                    else:
                        trans = transition_matrix(affinity, aff.sinkhorn_rounds, aff.square)
                        if aff.decoder_affinity and decoder_affinity is not None:
                            trans = trans * decoder_affinity.float()
                        refined_grid = refine_with_transition(trans, cams, use_mask)
                final = (
                    (height, width) if out_size is None else (int(out_size[0]), int(out_size[1]))
                )
                # direct [CLIP-ES]: one resize from the grid to the final size, labels there;
                # two_step: labels at the batch size, scores resized to the final size at the end.
                direct = cfg.pseudo.output_resize == "direct"
                base = final if direct else (height, width)
                refined = self._round(upsample(refined_grid, base))

            with _timed(timer, "labels", device):
                size = label_size(*base, cfg.pseudo.cam_size)
                small = refined if size == base else self._round(upsample(refined_grid, size))
                scores = self._round(with_background(small, cfg.pseudo.background_power))
                with _timed(timer, "par", device):  # part of "labels"
                    scores = self._par(images01, scores)
                if base != final:
                    # two_step with an out_size: bilinear scores to the final size, then the argmax
                    scores = F.interpolate(scores, size=final, mode="bilinear", align_corners=False)
                    refined = upsample(refined, final)
                    size = final
                per_image = [scores[i, : 1 + len(lab)] for i, lab in enumerate(labels)]
                label_maps = torch.stack(
                    [
                        scores_to_labels(s, lab, cfg.pseudo)
                        for s, lab in zip(per_image, labels, strict=True)
                    ]
                )
                if size != final:
                    label_maps = F.interpolate(
                        label_maps[:, None].float(), size=final, mode="nearest"
                    )[:, 0].long()

        return PseudoLabelOutput(
            cams=res.cams,
            refined=[refined[i, : len(lab)] for i, lab in enumerate(labels)],
            labels=label_maps,
            scores=per_image,
            masks=masks,
            clip_out=res.vit,
            patch_emb=res.patch_emb,
            grid=grid,
        )

    def _round(self, maps: Tensor) -> Tensor:
        """float16-rounded copy (as float32) with ``pseudo.fp16_scores``, else ``maps``."""
        return maps.half().float() if self.cfg.pseudo.fp16_scores else maps

    def _par(self, images01: Tensor, scores: Tensor) -> Tensor:
        """PAR on ``B x (1+K) x H' x W'`` scores; with ``pseudo.par_downscale`` d > 1 it runs at
        ``1/d`` of that size and the result is upsampled bilinearly (WeCLIP / ToCo)."""
        d = self.cfg.pseudo.par_downscale
        if not self.cfg.par.enabled or d == 1:
            return par_refine(images01, scores, self.cfg.par)
        size = tuple(scores.shape[-2:])
        low = (max(1, size[0] // d), max(1, size[1] // d))
        low_scores = F.interpolate(scores, size=low, mode="bilinear", align_corners=False)
        return upsample(par_refine(images01, low_scores, self.cfg.par), size)  # type: ignore[arg-type]

    def _masks(
        self,
        images01: Tensor,
        cams: list[Tensor],
        superpixels: Tensor | None,
    ) -> list[Tensor]:
        """Per-image ``K_i x h x w`` column masks (none -> ones, box, sgc; sgc needs the
        ``B x H x W`` superpixels)."""
        aff, sgc = self.cfg.affinity, self.cfg.sgc
        if aff.mask == "none":
            return [torch.ones_like(c) for c in cams]
        if aff.mask == "box":
            return [
                box_mask(c, aff.box_threshold, aff.box_quantise, aff.box_clip_last) for c in cams
            ]
        assert superpixels is not None  # forward computes them (on slic_pool) when not given
        if superpixels.shape != (images01.shape[0], *images01.shape[-2:]):
            raise ValueError(
                f"superpixels {tuple(superpixels.shape)} do not match images "
                f"{tuple(images01.shape)}"
            )
        out = []
        for i, cam in enumerate(cams):
            clusters = colour_clusters(
                images01[i].float(),
                superpixels[i],
                sgc.n_clusters,
                sgc.colour_space,
                sgc.kmeans_iters,
                sgc.seed,
            )
            out.append(
                sgc_mask(cam, clusters, sgc.n_clusters, sgc.tau_hi, sgc.theta, sgc.patch_majority)
            )
        return out


def build_pseudo_labeler(cfg: SSRConfig, device: str | torch.device = "cpu") -> PseudoLabeler:
    """Load the frozen backbones named by ``cfg.backbone`` and the prompts of ``cfg.prompts``."""
    clip, tokenizer = load_clip(cfg.backbone.clip, device=device)
    clip.visual.pos_embed_resize = cfg.backbone.pos_embed_resize  # CLIP-ES: bilinear, fp16
    dino = None
    if cfg.backbone.use_dino and (cfg.affinity.use_dino_attention or cfg.decoder.dino_branch):
        dino = load_dino(cfg.backbone.dino, device=device)
        dino.pos_embed_resize = cfg.backbone.dino_pos_embed_resize  # transformers' or official
    p = cfg.prompts
    prompts = prompts_from_config(
        p.dataset, p.template, p.background_words, p.use_background_words, data_root=cfg.data.root
    )
    return PseudoLabeler(clip, tokenizer, dino, prompts, cfg).to(device)


def build_ssr_model(
    cfg: SSRConfig, num_classes: int, device: str | torch.device = "cpu"
) -> SSRModel:
    """Build the pseudo labeller (frozen backbones by name from ``cfg.backbone``) and the model."""
    labeler = build_pseudo_labeler(cfg, device)
    return SSRModel(cfg, labeler, num_classes).to(device)
