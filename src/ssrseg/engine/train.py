"""SSR training: online pseudo labels, CMPA + decoder losses, schedule, logging, checkpoints.

One step (SSR_SPEC sections 6-9):
1. the pseudo labeller runs the frozen CLIP (once: its tokens feed the decoder too) and DINO,
   and returns initial CAMs, refined pseudo labels and the raw patch embeddings; from
   ``cmpa.projected_cam_from`` (with ``cam.projected``) its Grad-CAM uses the CMPA heads;
2. the decoder and the CMPA heads compute ``L = w_proto L_proto + w_seg L_seg + w_aff L_aff``
   (``L_proto`` from ``cmpa.start_iter``); AdamW updates them;
3. every ``cmpa.refresh_every`` steps the visual prototypes are refreshed from the class
   features gathered since the last refresh.

The schedule (learning rate, data order, CMPA start, refresh) is a function of the step, so a
run resumed from a checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ssrseg.cam.prompts import check_prompt_classes, prompts_from_config
from ssrseg.config import ConfigError, SSRConfig, config_to_dict, save_config
from ssrseg.data import build_dataset
from ssrseg.data.toy import IN_DISTRIBUTION_SPLIT
from ssrseg.engine import checkpoint as ckpt
from ssrseg.engine.crf_pool import available_cores
from ssrseg.engine.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum_,
    barrier,
)
from ssrseg.engine.schedule import StepBatchSampler, lr_factor
from ssrseg.engine.train_data import TrainItems, collate, loader_workers
from ssrseg.engine.train_log import PARTIAL, MetricsLog
from ssrseg.errors import BadInputError
from ssrseg.metrics import ConfusionMatrix
from ssrseg.model.losses import IGNORE, feature_affinity
from ssrseg.model.ssr import SSRModel
from ssrseg.precision import resolve_precision
from ssrseg.pseudo.labeler import build_ssr_model
from ssrseg.rectify.cmpa import FeatureBank, PrototypeAccumulator, prototype_store

LOSS_KEYS = ("loss", "seg", "aff", "proto", "proto_sym", "proto_bg")


# ----------------------------------------------------------------------------------------------
# Data


# ----------------------------------------------------------------------------------------------
# Helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``train.amp`` (auto: bf16 on CUDA, off elsewhere); None = off.

    YAML reads a bare ``off`` as false, so "false" / "False" also mean off."""
    amp = "off" if amp.lower() in ("false", "off", "no") else amp.lower()
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"train.amp must be auto | bf16 | fp16 | off, got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16


def param_groups(model: SSRModel, cfg: SSRConfig) -> list[dict[str, Any]]:
    """AdamW groups: decoder (lr x decoder_lr_mult), CMPA heads (lr), temperature (lr, no
    weight decay: decay would pull log tau towards 0, i.e. tau towards 1)."""
    t = cfg.train
    groups: list[dict[str, Any]] = [
        {
            "name": "decoder",
            "params": list(model.decoder.parameters()),
            "base_lr": t.lr * t.decoder_lr_mult,
            "weight_decay": t.weight_decay,
        }
    ]
    if model.cmpa is not None:
        heads = list(model.cmpa.isa.parameters()) + list(model.cmpa.tsa.parameters())
        groups.append(
            {"name": "cmpa", "params": heads, "base_lr": t.lr, "weight_decay": t.weight_decay}
        )
        groups.append(
            {"name": "tau", "params": [model.cmpa.log_tau], "base_lr": t.lr, "weight_decay": 0.0}
        )
    for g in groups:
        g["lr"] = g["base_lr"]
    return groups


def _schedule(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict's ``train`` section less where the run lives (a moved run resumes)."""
    train = dict(config.get("train") or {})
    train.pop("output_dir", None)
    return train


def fit_to_patch(images01: Tensor, patch: int) -> Tensor:
    """Resize ``B x 3 x H x W`` (bilinear) to the nearest multiple of the patch size per side."""
    h, w = images01.shape[-2:]
    nh, nw = max(patch, round(h / patch) * patch), max(patch, round(w / patch) * patch)
    if (nh, nw) == (h, w):
        return images01
    return F.interpolate(images01, size=(nh, nw), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------
# Trainer


class Trainer:
    """Trains ``model`` (its decoder and CMPA heads) on ``train_set``.

    model: an :class:`SSRModel` already on ``ctx.device``; train_set: a ``SegDataset`` (or any
    dataset of ``Sample``); val_set: optional split with masks for segmentation mIoU;
    run_dir: where checkpoints and metrics go (written by rank 0 only).
    """

    def __init__(
        self,
        cfg: SSRConfig,
        model: SSRModel,
        train_set: Any,
        run_dir: str | Path,
        ctx: DistContext | None = None,
        val_set: Any | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.ctx = ctx or DistContext(device=next(model.decoder.parameters()).device)
        self.device = self.ctx.device
        self.model = model
        self.train_set = train_set
        self.val_set = val_set
        self.run_dir = Path(run_dir)
        self.progress = progress and self.ctx.is_main
        self.num_classes = model.num_classes
        self.amp = amp_dtype(cfg.train.amp, self.device)
        if cfg.train.supervision not in ("pseudo", "gt"):
            raise ConfigError(
                f"train.supervision must be pseudo | gt, got {cfg.train.supervision!r}"
            )
        if cfg.train.supervision == "gt" and model.cmpa is not None:
            raise ConfigError(
                "train.supervision=gt trains the decoder only: set cmpa.enabled=false"
            )
        self._half_backbones()
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.train.lr)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        cmpa = model.cmpa
        # class_mean: per-class sums; kmeans: a bank of f_ic (both checkpointed)
        self.acc: PrototypeAccumulator | FeatureBank | None = (
            prototype_store(cmpa, self.device) if cmpa is not None else None
        )
        self.losses: nn.Module = model.losses
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # CMPA parameters are unused before cmpa.start_iter
            unused = cmpa is not None and cfg.cmpa.start_iter > 0
            self.losses = DistributedDataParallel(
                model.losses,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=unused,
            )
        self.step = 0
        self.skipped: list[tuple[str, str]] = []
        # loss sums since the last metrics line: checkpointed, so a run resumed between two
        # log steps writes the same means as an uninterrupted one
        self.log_sums: dict[str, float] = {}
        self.log_count = 0
        # what identifies the frozen weights (content hashes), recorded in every checkpoint
        self.backbones = ckpt.backbone_identity(cfg) if self.ctx.is_main else {}

    # -- setup ---------------------------------------------------------------------------------
    def _half_backbones(self) -> None:
        """Frozen backbones in their precision (``backbone.precision``, CUDA only unless
        ``backbone.precision_cpu``): fp16 = the references' fp16 weights with float32
        LayerNorms (the labeller's own conversion), bf16 = bf16 weights under the labeller's
        bf16 autocast."""
        labeler = self.model.labeler
        precision = resolve_precision(self.cfg.backbone, self.device)
        if precision == "fp16":  # the labeller also converts itself at its first forward
            getattr(labeler, "use_fp16_weights", lambda: None)()
        elif precision == "bf16":
            for name in ("clip", "dino"):
                sub = getattr(labeler, name, None)
                if isinstance(sub, nn.Module):
                    sub.to(torch.bfloat16)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _loader(self, start: int, end: int) -> Iterator[dict[str, Any]]:
        d = self.cfg.data
        with_sp = self.cfg.affinity.mask == "sgc" and d.superpixels == "image"
        if d.superpixels not in ("image", "crop"):
            raise ValueError(f"data.superpixels must be image | crop, got {d.superpixels!r}")
        sampler = StepBatchSampler(
            len(self.train_set),
            self.cfg.train.batch_size,
            start,
            end,
            self.cfg.train.seed,
            self.ctx.world_size,
            self.ctx.rank,
        )
        loader = DataLoader(
            TrainItems(self.train_set, self.cfg, with_sp),
            batch_sampler=sampler,
            num_workers=loader_workers(d.num_workers, available_cores()),
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            # own generator: creating the iterator must not draw from the global torch RNG
            # (it would shift dropout after a resume); augmentation seeds come from the sampler
            generator=torch.Generator().manual_seed(self.cfg.train.seed),
        )
        yield from loader

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self) -> Path | None:
        rngs = all_gather_objects(ckpt.rng_state(), self.ctx)
        logs = all_gather_objects({"sums": self.log_sums, "count": self.log_count}, self.ctx)
        if not self.ctx.is_main:
            return None
        opt_state: dict[str, Any] = {"optimizer": self.optimizer.state_dict()}
        if self.scaler is not None:
            opt_state["scaler"] = self.scaler.state_dict()
        if self.acc is not None:
            opt_state["proto_acc"] = self.acc.state_dict()
        state = ckpt.state_from(self.step, self.cfg, self.num_classes, rngs)
        state.extra["log"] = logs
        state.extra["backbones"] = self.backbones
        return ckpt.save_checkpoint(
            self.run_dir,
            self.step,
            self.model.trainable_state_dict(),
            opt_state,
            state,
            self.cfg.train.keep_last,
        )

    def load(self, path: str | Path) -> None:
        """Restore weights, optimiser, accumulator, step and rng states from a checkpoint."""
        folder = ckpt.resolve_checkpoint(path)
        state = ckpt.read_state(folder)
        saved = state.config
        now = config_to_dict(self.cfg)
        if _schedule(saved) != _schedule(now) or saved.get("cmpa") != now.get("cmpa"):
            raise ckpt.CheckpointError(
                f"{folder / ckpt.STATE_FILE}: its train/cmpa config differs from this run's; "
                "resume with the checkpoint's config (ssrseg train --resume RUN without "
                "--config) to continue the same schedule"
            )
        try:
            self.model.load_trainable_state_dict(ckpt.read_weights(folder, self.device))
        except (KeyError, RuntimeError) as exc:
            raise ckpt.CheckpointError(f"{folder / ckpt.MODEL_FILE}: {exc}") from None
        opt_state = ckpt.read_optimizer(folder)
        self.optimizer.load_state_dict(opt_state["optimizer"])
        if self.scaler is not None and "scaler" in opt_state:
            self.scaler.load_state_dict(opt_state["scaler"])
        if self.acc is not None and "proto_acc" in opt_state:
            self.acc.load_state_dict(opt_state["proto_acc"])
        if len(state.rng) > self.ctx.rank:
            ckpt.set_rng_state(state.rng[self.ctx.rank])
        logs = state.extra.get("log") or []
        if len(logs) > self.ctx.rank:
            self.log_sums = {k: float(v) for k, v in logs[self.ctx.rank]["sums"].items()}
            self.log_count = int(logs[self.ctx.rank]["count"])
        self.step = state.step

    # -- one step ------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        cfg, model, step = self.cfg, self.model, self.step
        images = batch["images"].to(self.device, non_blocking=True)
        labels = [tuple(lab) for lab in batch["labels"]]
        superpixels = batch.get("superpixels")
        if superpixels is not None:
            superpixels = superpixels.to(self.device)
        cmpa = model.cmpa
        use_proto = cmpa is not None and step >= cfg.cmpa.start_iter
        valid = batch.get("valid")
        if cfg.train.supervision == "gt":
            # fully supervised bound: the decoder learns the crops' ground-truth masks
            tokens, grid = self._clip_tokens(images)
            targets = batch["masks"].to(self.device)
            proto_inputs = None
        else:
            cam_cmpa = cmpa if (use_proto and step >= cfg.cmpa.projected_cam_from) else None
            kwargs: dict[str, Any] = {"superpixels": superpixels, "cmpa": cam_cmpa}
            if cfg.affinity.decoder_affinity:
                kwargs["decoder_affinity"] = self._decoder_affinity(images)
            out = model.labeler(images, labels, **kwargs)
            tokens, grid = [t.detach() for t in out.clip_out.tokens], out.grid
            targets = out.labels
            if valid is not None and cfg.train.ignore_crop_padding:
                # crop padding is not image: ignore it (our decision; WeCLIP's training keeps
                # the labels the labeller gives the padding)
                targets = targets.masked_fill(~valid.to(self.device), IGNORE)
            proto_inputs = None
            if use_proto:
                proto_inputs = {
                    "patch_emb": out.patch_emb.detach(),
                    "cams": [c.detach() for c in out.cams],
                    "labels": labels,
                    "text_emb": model.labeler.class_emb,
                }
                if cfg.cmpa.background_term != "none":  # our decision, off by default
                    proto_inputs["bg_emb"] = model.labeler.bg_emb
        # the labeller's Grad-CAM must not leave gradients on the trainable parts
        self.optimizer.zero_grad(set_to_none=True)
        factor = lr_factor(
            step,
            cfg.train.iterations,
            cfg.train.warmup_iters,
            cfg.train.warmup_ratio,
            cfg.train.poly_power,
            cfg.train.warmup_poly,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        with self._autocast():
            res = self.losses(tokens, grid, targets, proto_inputs)
        loss = res["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: loss is {loss.item()} ({res})")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self.acc is not None and "feats" in res:
            self.acc.add(res["feats"], res["classes"])
        self.step += 1
        if cmpa is not None and self.acc is not None and self.step % cfg.cmpa.refresh_every == 0:
            if isinstance(self.acc, FeatureBank):
                # K-means sees every rank's features, in rank order
                self.acc.extend(all_gather_objects(self.acc.state_dict(), self.ctx))
                cmpa.refresh(self.acc, torch.as_tensor(model.labeler.class_emb))
            else:
                all_reduce_sum_(self.acc.sum, self.ctx)
                all_reduce_sum_(self.acc.count, self.ctx)
                cmpa.refresh(self.acc)
            self.acc.reset()
        values = {k: float(res[k].detach()) for k in LOSS_KEYS if k in res}
        if cmpa is not None:
            values["tau"] = float(cmpa.tau.detach())
        values["lr"] = cfg.train.lr * factor
        return values

    def _clip_tokens(self, images01: Tensor) -> tuple[list[Tensor], tuple[int, int]]:
        """CLIP tokens of the blocks the decoder reads (no pseudo labeller)."""
        # a `with` block, not the decorator: mutmut skips decorated functions (make mutants)
        with torch.no_grad():
            visual = self.model.visual
            with self._autocast():
                o = visual.forward_intermediates(
                    visual.normalize(images01), n_blocks=self.model.decoder.num_layers_in
                )
            return o.tokens, o.grid

    def _decoder_affinity(self, images01: Tensor) -> Tensor:
        """WeCLIP's RFM input: ``sigmoid(F^T F)`` of the decoder's fused features, ``B x N x N``.

        Costs an extra forward of the CLIP layers the decoder reads (the labeller's own CLIP
        pass comes after, and needs this affinity)."""
        # a `with` block, not the decorator: mutmut skips decorated functions (make mutants)
        with torch.no_grad():
            tokens, grid = self._clip_tokens(images01)
            with self._autocast():
                _, fused = self.model.decoder(tokens, grid)
            return feature_affinity(fused)

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Segmentation mIoU on the val split and pseudo-label mIoU on train images with masks
        (each at most ``train.val_images`` images; single scale, no CRF)."""
        # a `with` block, not the decorator: mutmut skips decorated functions (make mutants)
        with torch.no_grad():
            model, limit = self.model, self.cfg.train.val_images
            was_training = model.training
            model.eval()
            results: dict[str, float] = {}
            patch = model.patch_size
            if self.val_set is not None:
                cm = ConfusionMatrix(self.num_classes)
                for sample in self._samples(self.val_set, limit, BadInputError):
                    image = _to_images01(sample.image, self.device)
                    with self._autocast():
                        logits = model.segment(fit_to_patch(image, patch))
                    logits = F.interpolate(
                        logits.float(), size=image.shape[-2:], mode="bilinear", align_corners=False
                    )
                    cm.update(logits.argmax(1)[0].cpu(), sample.mask)
                if cm.images:
                    results["val_miou"] = float(cm.compute()["miou"])
            cm = ConfusionMatrix(self.num_classes)
            c = self.cfg.cmpa
            on = self.step >= c.start_iter and self.step >= c.projected_cam_from
            cam_cmpa = model.cmpa if on else None  # the CAMs the training step uses now
            for sample in self._samples(self.train_set, limit, BadInputError):
                if not sample.labels:
                    continue
                image = _to_images01(sample.image, self.device)
                out = model.labeler(fit_to_patch(image, patch), [sample.labels], cmpa=cam_cmpa)
                lab = F.interpolate(
                    out.labels[:, None].float(), size=image.shape[-2:], mode="nearest"
                )[0, 0]
                cm.update(lab.long().cpu(), sample.mask)
            if cm.images:
                results["pseudo_miou"] = float(cm.compute()["miou"])
            model.train(was_training)
            return results

    @staticmethod
    def _samples(dataset: Any, limit: int | None, bad: type[Exception]) -> Iterator[Any]:
        n = 0
        for i in range(len(dataset)):
            if limit is not None and n >= limit:
                return
            try:
                sample = dataset[i]
            except bad:
                continue
            if sample.mask is None:
                continue
            n += 1
            yield sample

    # -- loop ----------------------------------------------------------------------------------
    def fit(self, resume: str | Path | None = None, stop_after: int | None = None) -> int:
        """Train until ``train.iterations`` (or ``stop_after`` steps, for tests and time-boxed
        runs). Returns the step reached."""
        cfg, t = self.cfg, self.cfg.train
        if resume is not None:
            self.load(resume)
        else:
            seed_everything(t.seed + self.ctx.rank)
        end = t.iterations if stop_after is None else min(t.iterations, stop_after)
        log: MetricsLog | None = None
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir)
            log = MetricsLog(self.run_dir, t.tensorboard, self.step if resume else None)
        self.model.train()
        bar = None
        if self.progress:
            from tqdm import tqdm

            # the bar counts to where this call stops (--max-steps 2 shows 2 steps)
            bar = tqdm(total=end, initial=self.step, desc="train", dynamic_ncols=True)
        images_seen, t0 = 0, time.perf_counter()
        for batch in self._loader(self.step, end):
            self.skipped += batch.get("skipped", [])
            if batch["images"] is None:
                self.step += 1  # the whole batch was bad input: keep the schedule
                continue
            values = self.train_step(batch)
            for k, v in values.items():
                self.log_sums[k] = self.log_sums.get(k, 0.0) + v
            self.log_count += 1
            images_seen += batch["images"].shape[0] * self.ctx.world_size
            if bar is not None:
                bar.update(1)
                rate = images_seen / max(1e-9, time.perf_counter() - t0)
                bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{rate:.1f}")
            at_end = self.step >= end
            # a line written only because this call stops early is marked partial: a resumed
            # run drops it and writes the full window's line instead
            early = {PARTIAL: True} if at_end and self.step < t.iterations else {}
            if self.step % t.log_every == 0 or at_end:
                record = self._reduce_means(self.log_sums, self.log_count)
                elapsed = time.perf_counter() - t0
                record.update(step=self.step, img_per_s=images_seen / max(1e-9, elapsed))
                on_schedule = self.step % t.log_every == 0
                if log is not None:
                    log.write({**record, **({} if on_schedule else early)})
                if on_schedule or not early:
                    self.log_sums, self.log_count = {}, 0
                images_seen, t0 = 0, time.perf_counter()
            if t.val_every > 0 and (self.step % t.val_every == 0 or at_end):
                if self.ctx.is_main:
                    scores = self.validate()
                    if scores and log is not None:
                        partial = {} if self.step % t.val_every == 0 else early
                        log.write({"step": self.step, **scores, **partial})
                    if bar is not None and scores:
                        bar.write(
                            f"step {self.step}: "
                            + ", ".join(f"{k} {100 * v:.1f}" for k, v in scores.items())
                        )
                barrier(self.ctx)
            if self.step % t.ckpt_every == 0 or at_end:
                self.save()
                barrier(self.ctx)
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        if self.skipped and self.ctx.is_main:
            print(f"{len(self.skipped)} training item(s) were skipped:", file=sys.stderr)
            for image_id, message in self.skipped[:50]:
                print(f"  {image_id}: {message}", file=sys.stderr)
        return self.step

    def _reduce_means(self, sums: dict[str, float], count: int) -> dict[str, float]:
        keys = sorted(sums)
        vec = torch.tensor(
            [sums[k] for k in keys] + [float(count)], dtype=torch.float64, device=self.device
        )
        all_reduce_sum_(vec, self.ctx)
        n = max(1.0, float(vec[-1]))
        return {k: float(vec[i]) / n for i, k in enumerate(keys) if math.isfinite(float(vec[i]))}


def _to_images01(image: np.ndarray, device: torch.device) -> Tensor:
    """``H x W x 3`` uint8 -> ``1 x 3 x H x W`` float in [0, 1]."""
    return (
        torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].to(device).float() / 255
    )


# ----------------------------------------------------------------------------------------------
# Entry point used by ``ssrseg train``


def run_training(
    cfg: SSRConfig,
    ctx: DistContext,
    run_dir: str | Path,
    resume: str | Path | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> int:
    """Build datasets and the model from ``cfg`` and train; returns the step reached
    (``progress``: the training bar)."""
    d = cfg.data
    if d.dataset == "toy" and d.train_split == IN_DISTRIBUTION_SPLIT:
        raise ConfigError(
            f"data.train_split={d.train_split}: the toy world's in-distribution split is only "
            "ever scored (the paper's protocol, docs/toy_world.md); train on 'train'"
        )
    train_set = build_dataset(
        d.dataset, d.root, d.train_split, d.tag_file, d.classes, require_labels=True
    )
    # the prompts must name the dataset's classes (by name: a count alone lets one class's
    # pixels be labelled with another's prompt), with their background words, before any work
    p = cfg.prompts
    prompts = prompts_from_config(
        p.dataset, p.template, p.background_words, p.use_background_words, data_root=d.root
    )
    check_prompt_classes(prompts, train_set.class_names, p.dataset, f"{d.dataset} at {d.root}")
    val_set = None
    if cfg.train.val_every > 0 and d.val_split:
        try:
            val_set = build_dataset(
                d.dataset, d.root, d.val_split, d.tag_file, d.classes, require_labels=False
            )
        except BadInputError as exc:
            if ctx.is_main:
                print(f"validation disabled: {exc}", file=sys.stderr)
    # Seed before anything random is built (decoder / CMPA init), with the same seed on every
    # rank so all ranks start from one model; fit() then reseeds per rank (or restores the
    # checkpoint's generators) for data order and dropout.
    seed_everything(cfg.train.seed)
    model = build_ssr_model(cfg, train_set.num_classes, ctx.device)
    trainer = Trainer(cfg, model, train_set, run_dir, ctx, val_set, progress=progress)
    step = trainer.fit(resume, stop_after)
    if trainer.skipped and not d.allow_skipped:
        return -1
    return step
