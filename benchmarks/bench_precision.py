"""Half precision and the pseudo labels, section by section (issue 27).

    python benchmarks/bench_precision.py                 # toy world + VOC-size random weights
    python benchmarks/bench_precision.py --toy-images 8 --voc-images 0 --out /tmp/p.json

The pseudo labeller runs in float32 and under each half precision on the same inputs:

- ``bf16_autocast`` / ``fp16_autocast``: the whole labeller inside ``torch.autocast("cpu", dtype)``
  (the CPU stand-in for the GPU's mixed precision; ``backbone.half_precision`` meant bf16
  autocast before issue 27);
- ``fp16_weights`` / ``bf16_config``: ``backbone.precision=fp16`` / ``bf16`` with
  ``backbone.precision_cpu=true``: the labeller's own precision modes (fp16 = the references'
  GPU numerics: fp16 weights and activations, LayerNorm in float32).

End to end: pseudo-label mIoU against the ground truth (toy world) and the share of pixels whose
label differs from float32. Section by section (:func:`section_errors`): each section of the
labeller is fed the float32 run's own inputs and run once more inside the autocast, so its error
is its own, not inherited: the CLIP forward (tokens, attention maps), Grad-CAM (the last block,
the backward and the channel weights), min-max, the head / layer mean, the transition matrix,
the refinement, the upsampling, the SGC masks, PAR and the argmax. A section inside an fp32
island (``ssrseg.precision``) shows zero.

The toy world uses ``configs/toy.yaml`` and the packaged tiny CLIP / DINO on rendered train
scenes; the VOC-size leg uses the ``voc`` preset on random-weight ViT-B/16 + ViT-S/16 towers
(``_models``) and smooth random 512 x 384 images (no ground truth: disagreement only). The JSON
goes to ``benchmarks/results/precision_cpu.json``. Run it with ``PYTHONPATH`` on another tree
(e.g. ``git archive`` of an older commit) for a before / after comparison: the modes that tree
lacks are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).parent))

from _models import build_towers, make_labeler, preset
from _timing import machine_info, out_path, peak_memory_mib, reset_peak_memory, sync, write_json
from bench_pseudo_labels import LABEL_SETS, smooth_images
from ssrseg.backbones.dino import run_on_grid
from ssrseg.cam.gradcam import (
    _score_grads,
    _weighted_tokens,
    class_scores,
    gradcam,
    normalise_cams,
    pad_labels,
)
from ssrseg.config import BackboneConfig, SSRConfig, load_config
from ssrseg.data.toy import ToyWorld
from ssrseg.metrics import ConfusionMatrix
from ssrseg.pseudo.labeler import PseudoLabeler, batch_superpixels, build_pseudo_labeler, pad_stack
from ssrseg.rectify.affinity import (
    fuse_affinity,
    mean_attention,
    refine_with_transition,
    transition_matrix,
    upsample,
)
from ssrseg.rectify.labels import scores_to_labels, with_background
from ssrseg.rectify.par import par_refine

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
# mode -> (enclosing autocast dtype or None, backbone.precision or None)
MODES: dict[str, tuple[torch.dtype | None, str | None]] = {
    "fp32": (None, None),
    "bf16_autocast": (torch.bfloat16, None),
    "fp16_autocast": (torch.float16, None),
    "bf16_config": (None, "bf16"),
    "fp16_weights": (None, "fp16"),
}


def has_precision_option() -> bool:
    """Whether this ssrseg has ``backbone.precision`` (older trees: autocast modes only)."""
    return any(f.name == "precision" for f in dataclasses.fields(BackboneConfig))


def available_modes() -> list[str]:
    return [m for m, (_, p) in MODES.items() if p is None or has_precision_option()]


def autocast(dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast("cpu", dtype)``, or nothing for float32."""
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def mode_overrides(mode: str) -> list[str]:
    """Config overrides of a mode (its ``backbone.precision``, on the CPU)."""
    precision = MODES[mode][1]
    return (
        []
        if precision is None
        else [f"backbone.precision={precision}", "backbone.precision_cpu=true"]
    )


def error(ref: Tensor, out: Tensor) -> dict[str, float]:
    """max |out - ref|, the same relative to max |ref|, and the mean |out - ref|."""
    d = (out.detach().float() - ref.detach().float()).abs()
    scale = float(ref.detach().float().abs().max()) or 1.0
    return {
        "max_abs": float(d.max()) if d.numel() else 0.0,
        "max_rel": float(d.max()) / scale if d.numel() else 0.0,
        "mean_abs": float(d.mean()) if d.numel() else 0.0,
    }


def changed(ref: Tensor, out: Tensor) -> dict[str, float]:
    """Share (%) of entries that differ (labels, masks)."""
    return {"changed_pct": 100.0 * float((ref != out).float().mean()) if ref.numel() else 0.0}


def run_labels(
    labeler: PseudoLabeler,
    images: Tensor,
    labels: Sequence[tuple[int, ...]],
    dtype: torch.dtype | None,
    batch: int = 8,
) -> Tensor:
    """The labeller's ``N x H x W`` labels, batch by batch, inside ``autocast(dtype)``."""
    out = []
    for lo in range(0, images.shape[0], batch):
        with torch.no_grad(), autocast(dtype):
            out.append(labeler(images[lo : lo + batch], list(labels[lo : lo + batch])).labels.cpu())
    return torch.cat(out)


def miou(pred: Tensor, masks: Tensor, n_classes: int) -> float:
    """mIoU (%) of ``N x H x W`` labels against the masks (background + classes)."""
    conf = ConfusionMatrix(n_classes)
    for p, m in zip(pred, masks, strict=True):
        conf.update(p, m)
    return 100.0 * float(conf.compute()["miou"])


def end_to_end(
    make: Callable[[list[str]], PseudoLabeler],
    images: Tensor,
    labels: Sequence[tuple[int, ...]],
    masks: Tensor | None,
    modes: Sequence[str],
    batch: int = 8,
) -> dict[str, dict[str, float]]:
    """Per mode: pixels (%) whose label differs from fp32, pseudo-label mIoU when ``masks`` are
    given, and seconds. ``make(overrides)`` builds a fresh labeller (fp16 weights convert it)."""
    rows: dict[str, dict[str, float]] = {}
    ref: Tensor | None = None
    for mode in modes:
        labeler = make(mode_overrides(mode))
        start = time.perf_counter()
        pred = run_labels(labeler, images, labels, MODES[mode][0], batch)
        row = {"seconds": round(time.perf_counter() - start, 2)}
        if ref is None:
            ref = pred
        row["pixels_changed_pct"] = round(changed(ref, pred)["changed_pct"], 3)
        if masks is not None:
            row["miou"] = round(miou(pred, masks, int(labeler.class_emb.shape[0]) + 1), 2)
        rows[mode] = row
    return rows


def _last_block_cams(
    labeler: PseudoLabeler, x: Tensor, labels: Sequence[tuple[int, ...]]
) -> Tensor:
    """Grad-CAM's last block, head, scores, backward and channel weights from the block input
    ``x`` (``B x (1+N) x D``), with no island: what that section does in the ambient precision.
    Returns the raw CAMs ``B x K x N``."""
    visual = labeler.clip.visual
    last = visual.blocks[-1]
    ids, valid = pad_labels(labels, x.device)
    with torch.enable_grad():
        h = last.norm1(x).detach().requires_grad_(True)
        y, _ = last.forward_from_norm1(x, h)
        emb = visual.head(y[:, 1:]).mean(dim=1)
        scores = class_scores(
            emb, labeler.class_emb, labeler.bg_emb, ids, valid, labeler.raw_logit_scale
        )
        grads = _score_grads(scores, h, True)
    return _weighted_tokens(h[:, 1:], grads[:, :, 1:])


def section_errors(
    labeler: PseudoLabeler, images: Tensor, labels: Sequence[tuple[int, ...]], dtype: torch.dtype
) -> dict[str, dict[str, float]]:
    """Each section of the labeller (``affinity.mask_target=transition``, ``pseudo.output_resize``
    direct, no ``cam_size``) on the float32 run's inputs, once more inside
    ``torch.autocast("cpu", dtype)``: its error against float32 (see the module docstring)."""
    cfg, aff = labeler.cfg, labeler.cfg.affinity
    visual = labeler.clip.visual
    n_layers = visual.cfg.layers
    labels = [tuple(lab) for lab in labels]
    clip_attn = list(range(max(0, n_layers - aff.clip_layers), n_layers))
    out: dict[str, dict[str, float]] = {}

    def both(fn: Callable[[], Any]) -> tuple[Any, Any]:
        with torch.no_grad():
            ref = fn()
            with autocast(dtype):
                return ref, fn()

    x_in = visual.normalize(images)
    ref_f, half_f = both(
        lambda: visual.forward_intermediates(
            x_in, attn_layers=clip_attn[:-1], n_blocks=n_layers - 1
        )
    )
    out["clip_blocks_tokens"] = error(ref_f.tokens[-1], half_f.tokens[-1])
    keys = sorted(ref_f.attentions)
    if keys:
        out["clip_attention_maps"] = error(
            torch.stack([ref_f.attentions[k] for k in keys]),
            torch.stack([half_f.attentions[k] for k in keys]),
        )
    x_last = ref_f.tokens[-1].float()
    with torch.no_grad():
        raw_ref = _last_block_cams(labeler, x_last, labels)
        with autocast(dtype):
            raw_half = _last_block_cams(labeler, x_last, labels)
    out["gradcam_last_block_backward_no_island"] = error(raw_ref, raw_half)

    def cams_fn() -> Any:
        return gradcam(
            visual,
            images,
            labels,
            labeler.class_emb,
            labeler.bg_emb,
            labeler.raw_logit_scale,
            attn_last=aff.clip_layers if aff.use_clip_attention else 0,
            minmax_passes=cfg.cam.minmax_passes,
        )

    ref_g, half_g = both(cams_fn)
    out["gradcam_whole"] = error(torch.cat(ref_g.cams), torch.cat(half_g.cams))
    raw = torch.cat(ref_g.raw)
    ref_n, half_n = both(lambda: normalise_cams(raw, cfg.cam.minmax_passes))
    out["minmax"] = error(ref_n, half_n)

    attn = dict(ref_g.vit.attentions)
    grid = ref_g.grid
    a_clip = None
    if aff.use_clip_attention:
        ref_a, half_a = both(lambda: mean_attention(attn, clip_attn))
        out["attention_layer_mean"] = error(ref_a, half_a)
        a_clip = ref_a
    a_dino = None
    if aff.use_dino_attention and labeler.dino is not None:
        dino = labeler.dino
        layers = [-(i + 1) for i in range(aff.dino_layers)]
        ref_d, half_d = both(lambda: run_on_grid(dino, images, grid, attn_layers=layers))
        ks = sorted(ref_d.attentions)
        out["dino_attention_maps"] = error(
            torch.stack([ref_d.attentions[k] for k in ks]),
            torch.stack([half_d.attentions[k] for k in ks]),
        )
        a_dino = mean_attention(ref_d.attentions, ks)
    k_max = max(len(lab) for lab in labels)
    cams = pad_stack(ref_g.cams, k_max).float()
    superpixels = batch_superpixels(images, cfg) if aff.mask == "sgc" else None
    ref_m, half_m = both(lambda: labeler._masks(images, ref_g.cams, superpixels))
    out["sgc_or_box_masks"] = changed(torch.cat(ref_m), torch.cat(half_m))
    masks = None if aff.mask == "none" else pad_stack(ref_m, k_max)
    if a_clip is not None or a_dino is not None:
        affinity = fuse_affinity(a_clip, a_dino, aff.clip_weight, aff.dino_weight)
        ref_t, half_t = both(lambda: transition_matrix(affinity, aff.sinkhorn_rounds, aff.square))
        out["transition_matrix"] = error(ref_t, half_t)
        ref_r, half_r = both(lambda: refine_with_transition(ref_t, cams, masks))
        out["refinement"] = error(ref_r, half_r)
    else:
        ref_r = cams
    size = tuple(images.shape[-2:])
    ref_u, half_u = both(lambda: upsample(ref_r, size))  # type: ignore[arg-type]
    out["upsample"] = error(ref_u, half_u)
    scores = with_background(ref_u, cfg.pseudo.background_power)
    ref_p, half_p = both(lambda: par_refine(images, scores, cfg.par))
    out["par"] = error(ref_p, half_p)

    def argmax() -> Tensor:
        return torch.stack(
            [
                scores_to_labels(ref_p[i, : 1 + len(lab)], lab, cfg.pseudo)
                for i, lab in enumerate(labels)
            ]
        )

    ref_l, half_l = both(argmax)
    out["background_argmax"] = changed(ref_l, half_l)
    return {k: {m: round(v, 7) for m, v in row.items()} for k, row in out.items()}


def toy_scenes(n: int, seed: int = 0) -> tuple[Tensor, Tensor, list[tuple[int, ...]]]:
    """Train scenes ``0 .. n-1`` of the toy world ``seed`` (what ``ssrseg toy render`` writes):
    images ``n x 3 x 128 x 128`` in [0, 1], masks ``n x 128 x 128``, per image its classes."""
    world = ToyWorld("train", seed)
    samples = [world[i] for i in range(n)]
    images = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1) for s in samples])
    masks = torch.stack([torch.from_numpy(s.mask).long() for s in samples])
    return images.float() / 255.0, masks, [tuple(s.labels) for s in samples]


def toy_labeler_factory(
    root: str = "data/toy", device: str = "cpu"
) -> Callable[[list[str]], PseudoLabeler]:
    """``make(overrides)``: a fresh labeller of ``configs/toy.yaml`` on ``device`` (packaged tiny
    CLIP and DINO; the toy prompts need no files under ``root``)."""
    config = Path(__file__).parents[1] / "configs" / "toy.yaml"

    def make(overrides: list[str]) -> PseudoLabeler:
        cfg = load_config(config, [f"data.root={root}", *overrides])
        return build_pseudo_labeler(cfg, device)

    return make


def toy_leg(
    n: int, root: str, modes: Sequence[str], sections: dict[str, torch.dtype]
) -> dict[str, Any]:
    """The toy world: ``n`` train scenes of seed 0, ``configs/toy.yaml``."""
    images, masks, labels = toy_scenes(n)
    make = toy_labeler_factory(root)

    leg: dict[str, Any] = {
        "images": f"toy train 0..{n - 1} (seed 0), 128 x 128",
        "labels": end_to_end(make, images, labels, masks, modes),
    }
    if sections:
        base = make([])
        leg["sections"] = {
            name: section_errors(base, images[:8], labels[:8], dtype)
            for name, dtype in sections.items()
        }
    return leg


def voc_leg(
    n: int, modes: Sequence[str], sections: dict[str, torch.dtype], tiny: bool = False
) -> dict[str, Any]:
    """VOC-size random-weight towers: ``n`` smooth 512 x 384 images, the ``voc`` preset."""
    hw = (64, 96) if tiny else (384, 512)
    images = torch.cat(
        [smooth_images(1, *hw, seed=i, device=torch.device("cpu")) for i in range(n)]
    )
    labels = [LABEL_SETS[i % len(LABEL_SETS)] for i in range(n)]

    def make(overrides: list[str]) -> PseudoLabeler:
        cfg: SSRConfig = preset("voc", overrides)
        return make_labeler(cfg, torch.device("cpu"), build_towers(tiny, seed=0))

    leg: dict[str, Any] = {
        "images": f"{n} smooth random images {hw[1]} x {hw[0]}, random-weight towers",
        "labels": end_to_end(make, images, labels, None, modes, batch=1),
    }
    if sections:
        base = make([])
        leg["sections"] = {
            name: section_errors(base, images[:1], labels[:1], dtype)
            for name, dtype in sections.items()
        }
    return leg


DEVICE_MODES = ("fp32", "fp16_weights", "bf16_config")  # backbone.precision fp32 / fp16 / bf16


def device_leg(
    device: torch.device, tiny: bool, n_voc: int, repeats: int, n_toy: int
) -> dict[str, Any]:
    """The precision modes on ``device`` (a GPU session; on the CPU with
    ``backbone.precision_cpu``): per mode the share of label pixels that differ from fp32,
    pseudo-label images per second (median of ``repeats`` passes over ``n_voc`` VOC-size images,
    one per call, random-weight towers) and the peak memory of those passes; and the toy
    world's mIoU / label agreement on ``n_toy`` scenes."""
    hw = (64, 96) if tiny else (384, 512)
    images = torch.cat([smooth_images(1, *hw, seed=i, device=device) for i in range(n_voc)])
    labels = [LABEL_SETS[i % len(LABEL_SETS)] for i in range(n_voc)]
    rows: dict[str, dict[str, float]] = {}
    ref: Tensor | None = None
    for mode in DEVICE_MODES:
        cfg = preset("voc", mode_overrides(mode))
        labeler = make_labeler(cfg, device, build_towers(tiny, seed=0))
        run_labels(labeler, images[:1], labels[:1], None, batch=1)  # warm-up (fp16: converts)
        reset_peak_memory(device)
        times, pred = [], torch.empty(0)
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            pred = run_labels(labeler, images, labels, None, batch=1)
            sync(device)
            times.append(time.perf_counter() - start)
        if ref is None:
            ref = pred
        rows[MODES[mode][1] or "fp32"] = {
            "images_per_s": round(n_voc / sorted(times)[len(times) // 2], 3),
            "peak_memory_mib": round(peak_memory_mib(device), 1),
            "pixels_changed_pct": round(changed(ref, pred)["changed_pct"], 3),
        }
        del labeler
    leg: dict[str, Any] = {"voc_random": rows, "images": f"{n_voc} x {hw[1]} x {hw[0]}"}
    if n_toy:
        t_images, t_masks, t_labels = toy_scenes(n_toy)
        make = toy_labeler_factory(device=str(device))
        leg["toy"] = end_to_end(make, t_images.to(device), t_labels, t_masks, DEVICE_MODES)
    return leg


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy-images", type=int, default=24)
    parser.add_argument("--voc-images", type=int, default=2)
    parser.add_argument(
        "--root", default="data/toy", help="toy root (only its class lists are read)"
    )
    parser.add_argument("--no-sections", action="store_true", help="end to end only")
    parser.add_argument(
        "--tiny", action="store_true", help="narrow VOC towers, tiny images (smoke test)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--device", default="cpu", help="cuda: the device leg only (bench_gpu.py runs it)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="device leg: timed passes")
    parser.add_argument("--device-leg", action="store_true", help="the device leg on the CPU")
    parser.add_argument("--modes", default=None, help="comma-separated subset of MODES")
    parser.add_argument("--voc-modes", default=None, help="modes of the VOC leg (default: --modes)")
    parser.add_argument(
        "--section-dtypes", default="bf16,fp16", help="autocast dtypes of the section errors"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    report: dict[str, Any]
    if device.type != "cpu" or args.device_leg:
        report = {"machine": machine_info(device), "tiny": args.tiny}
        report["device_leg"] = device_leg(
            device, args.tiny, args.voc_images, args.repeats, args.toy_images
        )
        print(report["device_leg"], flush=True)
        print(f"wrote {write_json(out_path(args.out, 'precision', device), report)}")
        return report
    modes = [m for m in available_modes() if args.modes is None or m in args.modes.split(",")]
    voc_modes = modes if args.voc_modes is None else args.voc_modes.split(",")
    voc_modes = [m for m in voc_modes if m in available_modes()]
    dtypes = {k: HALF[k] for k in args.section_dtypes.split(",") if k}
    sections = dtypes if not args.no_sections else {}
    report = {"machine": machine_info(device), "modes": modes, "voc_modes": voc_modes}
    path = out_path(args.out, "precision", torch.device("cpu"))
    if args.toy_images:
        report["toy"] = toy_leg(args.toy_images, args.root, modes, sections)
        print("toy", report["toy"]["labels"], flush=True)
        write_json(path, report)  # each leg as soon as it is done
    if args.voc_images:
        report["voc_random"] = voc_leg(args.voc_images, voc_modes, sections, args.tiny)
        print("voc", report["voc_random"]["labels"], flush=True)
    print(f"wrote {write_json(path, report)}")
    return report


if __name__ == "__main__":
    main()
