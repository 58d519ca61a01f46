"""configs/clip_es.yaml against a literal re-implementation of CLIP-ES (clip_es_reference.py) on
random-weight CLIP and random images of sizes that are not multiples of the patch: softmax, raw
and normalised Grad-CAM, last-8 attention, transition matrix, box masks, refined CAMs at the
original size agree within float32 rounding, and the labels agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from clip_es_reference import generate_cams
from pseudo_models import PROMPTS, tiny_models

from ssrseg.cam.gradcam import gradcam
from ssrseg.config import SSRConfig, load_config
from ssrseg.data.resize import resize_to_tensor01
from ssrseg.pseudo.labeler import PseudoLabeler
from ssrseg.rectify.affinity import mean_attention, transition_matrix

PRESET = Path(__file__).resolve().parents[2] / "configs" / "clip_es.yaml"
CASES = [((37, 51), [0, 2], 0), ((45, 30), [1], 1), ((29, 43), [2, 0, 1], 2), ((40, 24), [1, 2], 3)]


def test_preset_loads_with_the_clip_es_switches() -> None:
    cfg = load_config(PRESET)
    assert cfg.cam.projected is False and cfg.cam.logit_scale is None
    assert cfg.cam.minmax_passes == 2 and cfg.cam.input_resize == "pil_bicubic"
    aff = cfg.affinity
    assert aff.use_clip_attention and not aff.use_dino_attention and aff.clip_layers == 8
    assert (aff.mask, aff.mask_target, aff.box_threshold) == ("box", "transition", 0.4)
    assert aff.box_quantise and aff.box_clip_last and not aff.decoder_affinity
    assert (aff.sinkhorn_rounds, aff.square) == (3, True)
    assert not cfg.backbone.use_dino and cfg.backbone.precision == "fp16"  # fp32 on a CPU
    assert not cfg.par.enabled and not cfg.cmpa.enabled
    p = cfg.pseudo
    assert (p.output_resize, p.fp16_scores, p.background_power) == ("direct", True, 1.0)
    assert p.ignore_low is None and p.ignore_high is None and p.cam_size is None
    assert (cfg.prompts.dataset, cfg.prompts.template) == ("voc", "a clean origami {}.")
    assert cfg.prompts.use_background_words
    assert (cfg.crf.gaussian_sxy, cfg.crf.bilateral_sxy, cfg.crf.bilateral_srgb) == (1, 67, 3)


def _labeler(cfg: SSRConfig) -> PseudoLabeler:
    clip, tok, _ = tiny_models(seed=5)
    # Sharpen the random attention (query and key x 4) towards real CLIP's peaked maps. With
    # near-uniform attention T @ T is almost constant, the refined grid's range is ~1e-3 of
    # its values, and its min-max (in both codes) magnifies float32 summation-order rounding
    # ~600-fold; real attention does not have that problem.
    with torch.no_grad():
        for block in clip.visual.blocks:
            d = block.attn.qkv.weight.shape[1]
            block.attn.qkv.weight[: 2 * d] *= 4
            block.attn.qkv.bias[: 2 * d] *= 4
    # The labeller must not need DINO with this preset.
    return PseudoLabeler(clip, tok, None, PROMPTS, cfg)


def _image(size: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = rng.integers(0, 256, size=(size[0] // 4 + 2, size[1] // 4 + 2, 3), dtype=np.uint8)
    from PIL import Image

    big = Image.fromarray(smooth).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    noise = rng.integers(-20, 21, size=(*size, 3))
    return np.clip(np.asarray(big).astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("size", "label_ids", "seed"), CASES)
def test_preset_matches_clip_es_step_by_step(
    size: tuple[int, int], label_ids: list[int], seed: int
) -> None:
    cfg = load_config(PRESET)
    labeler = _labeler(cfg)
    visual = labeler.clip.visual
    image = _image(size, seed)
    ref = generate_cams(
        visual, image, label_ids, labeler.class_emb, labeler.bg_emb,
        float(labeler.clip.logit_scale.exp()),
    )  # fmt: skip
    work = ref.size
    images01 = resize_to_tensor01(image, work, cfg.cam.input_resize)

    # Grad-CAM, softmax and attention of the same forward.
    res = gradcam(
        visual, images01, [label_ids], labeler.class_emb, labeler.bg_emb,
        labeler.raw_logit_scale, attn_last=cfg.affinity.clip_layers,
        minmax_passes=cfg.cam.minmax_passes,
    )  # fmt: skip
    k = len(label_ids)
    for i in range(k):
        torch.testing.assert_close(res.scores[0][i], ref.probs[i][0, i], atol=1e-6, rtol=1e-5)
        raw = torch.from_numpy(ref.raw[i])
        torch.testing.assert_close(res.raw[0][i], raw, atol=1e-5 * float(raw.max()), rtol=0)
        torch.testing.assert_close(res.cams[0][i], torch.from_numpy(ref.cams[i]), atol=1e-5, rtol=0)
    n_layers = visual.cfg.layers
    layers = list(range(max(0, n_layers - cfg.affinity.clip_layers), n_layers))
    attn = mean_attention(res.vit.attentions, layers)[0]
    assert ref.attn is not None and ref.trans is not None
    torch.testing.assert_close(attn, ref.attn, atol=1e-7, rtol=1e-5)
    trans = transition_matrix(attn[None], cfg.affinity.sinkhorn_rounds, cfg.affinity.square)[0]
    torch.testing.assert_close(trans, ref.trans, atol=1e-7, rtol=1e-5)

    # The whole labeller: masks, refined CAMs at the original size, labels.
    out = labeler(images01, [label_ids], out_size=size)
    for i in range(k):
        torch.testing.assert_close(out.cams[0][i], torch.from_numpy(ref.cams[i]), atol=1e-5, rtol=0)
        assert torch.equal(out.masks[0][i], ref.masks[i]), f"box mask of class {label_ids[i]}"
    exact = _labeler(load_config(PRESET, ["pseudo.fp16_scores=false"]))
    out32 = exact(images01, [label_ids], out_size=size)
    assert ref.refined is not None and ref.labels is not None
    torch.testing.assert_close(out32.refined[0], torch.from_numpy(ref.refined), atol=1e-5, rtol=0)
    assert out.labels.shape == (1, *size)
    differ = float((out.labels[0].numpy() != ref.labels).mean())
    assert differ < 0.005, f"labels differ on {differ:.2%} of pixels"
    # The preset's maps are float16, as CLIP-ES's .npy: equal but where the float32 values
    # sit on either side of a float16 rounding boundary (one float16 step below 1: 2^-11).
    step = (out.refined[0] - torch.from_numpy(ref.refined.astype(np.float16)).float()).abs()
    assert float(step.max()) <= 2**-11 and float((step > 0).float().mean()) < 0.01


def test_the_old_ssrseg_path_does_not_match() -> None:
    """The switches matter: with ssrseg's former choices the same image gives other maps."""
    size, label_ids, seed = CASES[0]
    old = [
        "cam.minmax_passes=1",
        "cam.input_resize=torch_bilinear",
        "affinity.box_quantise=false",
        "affinity.box_clip_last=false",
        "pseudo.output_resize=two_step",
        "pseudo.fp16_scores=false",
    ]
    labeler = _labeler(load_config(PRESET, old))
    image = _image(size, seed)
    ref = generate_cams(
        labeler.clip.visual, image, label_ids, labeler.class_emb, labeler.bg_emb,
        float(labeler.clip.logit_scale.exp()),
    )  # fmt: skip
    images01 = resize_to_tensor01(image, ref.size, labeler.cfg.cam.input_resize)
    out = labeler(images01, [label_ids], out_size=size)
    assert ref.refined is not None
    assert float((out.refined[0] - torch.from_numpy(ref.refined)).abs().max()) > 1e-3
