"""The labeller's small contracts (issue 26, mutation triage): helpers (uint8 conversion, label
size, SLIC thread and device), the constructor's own checks and their messages, the input checks
of ``forward``, the text space with CMPA heads, the precision switches, the timer sections and the
builders' wiring (backbones loaded by name are replaced by the tiny random ones)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from pseudo_models import PROMPTS, small_config, tiny_models

import ssrseg.pseudo.labeler as labeler_module
from ssrseg.cam.prompts import ClassPrompts
from ssrseg.config import ConfigError
from ssrseg.pseudo.labeler import (
    PseudoLabeler,
    Timer,
    batch_superpixels,
    build_pseudo_labeler,
    build_ssr_model,
    images_to_uint8,
    label_size,
    slic_pool,
)


def test_images_to_uint8_clamps_rounds_and_casts() -> None:
    # out-of-range inputs saturate (a missing clamp would wrap -0.5 * 255 to 128 in uint8);
    # 0.2 * 255 = 51 exactly, 0.5 * 255 = 127.5 rounds half to even -> 128
    row = torch.tensor([-0.5, 0.0, 0.2, 0.5, 1.0, 1.5])
    images = row.reshape(1, 1, 1, 6).expand(1, 3, 1, 6)
    (arr,) = images_to_uint8(images)
    assert arr.dtype.name == "uint8" and arr.shape == (1, 6, 3)
    assert arr[0, :, 0].tolist() == [0, 0, 51, 128, 255, 255]


def test_label_size_keeps_each_side_at_least_one_pixel() -> None:
    # long side 100 -> 20 (s = 0.2): the short side 4 * 0.2 = 0.8 rounds to 1, 2 * 0.2 to 0 -> 1
    assert label_size(100, 4, 20) == (20, 1)
    assert label_size(4, 100, 20) == (1, 20)
    assert label_size(2, 100, 20) == (1, 20)
    assert label_size(30, 40, 20) == (15, 20)
    assert label_size(30, 40, None) == (30, 40)
    assert label_size(30, 40, 40) == (30, 40)


def test_slic_pool_is_one_shared_worker() -> None:
    """One worker: a second job waits while the first runs (SLIC must not take two cores)."""
    pool = slic_pool()
    assert slic_pool() is pool
    release, second_started = threading.Event(), threading.Event()
    first = pool.submit(release.wait, 5.0)
    second = pool.submit(second_started.set)
    try:
        assert not second_started.wait(0.3)  # with two workers it would start at once
    finally:
        release.set()
    assert first.result(timeout=5.0) and second.result(timeout=5.0) is None
    assert second_started.is_set()


def test_batch_superpixels_come_back_on_the_images_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SLIC runs on host arrays; the stacked labels go to the images' device ("meta" stands for
    an accelerator here: the conversion and SLIC are replaced, only the placement is checked)."""
    cfg = small_config("sgc.n_segments=7", "sgc.compactness=2.5")
    seen: list[tuple[int, float]] = []

    def fake_slic(img: Any, n: int, c: float) -> torch.Tensor:
        seen.append((n, c))
        return torch.full(img.shape[:2], len(seen), dtype=torch.long)

    monkeypatch.setattr(labeler_module, "slic_superpixels", fake_slic)
    host = torch.rand(2, 3, 4, 5)
    monkeypatch.setattr(labeler_module, "images_to_uint8", lambda x: images_to_uint8(host))
    out = batch_superpixels(torch.empty(2, 3, 4, 5, device="meta"), cfg)
    assert out.device.type == "meta" and out.shape == (2, 4, 5)
    assert seen == [(7, 2.5), (7, 2.5)]


def _bypass(**sections: dict[str, Any]) -> Any:
    """small_config() with fields replaced after validation (the labeller checks again: a
    config built in code need not pass through load_config)."""
    cfg = small_config()
    parts = {name: dataclasses.replace(getattr(cfg, name), **kw) for name, kw in sections.items()}
    return dataclasses.replace(cfg, **parts)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"affinity": {"mask": "boxes"}}, "affinity.mask must be none | box | sgc, got 'boxes'"),
        (
            {"affinity": {"mask_target": "cams"}},
            "affinity.mask_target must be transition | affinity, got 'cams'",
        ),
        (
            {"cam": {"input_resize": "nearest"}},
            "cam.input_resize must be pil_bicubic | torch_bilinear, got 'nearest'",
        ),
        ({"cam": {"minmax_passes": 0}}, "cam.minmax_passes must be >= 1, got 0"),
        (
            {"pseudo": {"output_resize": "once"}},
            "pseudo.output_resize must be direct | two_step, got 'once'",
        ),
        ({"pseudo": {"par_downscale": 0}}, "pseudo.par_downscale must be >= 1, got 0"),
    ],
)
def test_constructor_rejects_unvalidated_configs(
    sections: dict[str, dict[str, Any]], message: str
) -> None:
    clip, tok, dino = tiny_models()
    with pytest.raises(ConfigError) as err:
        PseudoLabeler(clip, tok, dino, PROMPTS, _bypass(**sections))
    assert str(err.value) == message


def test_dino_attention_without_dino_names_the_switch() -> None:
    clip, tok, _ = tiny_models()
    with pytest.raises(ConfigError) as err:
        PseudoLabeler(clip, tok, None, PROMPTS, small_config())
    assert str(err.value) == (
        "affinity.use_dino_attention=true needs a DINO backbone (backbone.use_dino=true)"
    )


def test_text_embeddings_are_not_saved_with_the_weights(
    make_labeler: Callable[..., PseudoLabeler],
) -> None:
    """The prompt embeddings are re-encoded from the backbone: checkpoints do not carry them."""
    labeler = make_labeler()
    keys = set(labeler.state_dict())
    assert "class_emb" not in keys and "bg_emb" not in keys
    assert {"class_emb", "bg_emb"} <= {name for name, _ in labeler.named_buffers()}


def test_forward_input_errors(make_labeler: Callable[..., PseudoLabeler]) -> None:
    labeler = make_labeler("affinity.mask=box")
    images = torch.rand(2, 3, 16, 16)
    cases: list[tuple[torch.Tensor, list[tuple[int, ...]], str]] = [
        (images, [(0,)], "1 label lists for a batch of 2 images"),
        (images[:0], [], "0 label lists for a batch of 0 images"),
        (images, [(0,), (3,)], r"labels \(3,\) out of range for 3 classes"),
        (images, [(-1,), (1,)], r"labels \(-1,\) out of range for 3 classes"),
        (images, [(0,), (2, 16)], r"labels \(2, 16\) out of range for 3 classes"),
    ]
    for imgs, labels, message in cases:
        with pytest.raises(ValueError, match=f"^{message}$"):
            labeler(imgs, labels)


class _Heads(torch.nn.Module):
    """CMPA-like heads that record the mode each projection ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.tsa = torch.nn.Linear(16, 8)
        self.isa = torch.nn.Linear(16, 8)
        self.modes: list[tuple[str, bool]] = []

    @property
    def tau(self) -> torch.Tensor:
        return torch.tensor(0.1)

    def project_image(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(("image", self.training))
        return self.isa(x)

    def project_text(self, t: torch.Tensor) -> torch.Tensor:
        self.modes.append(("text", self.training))
        return self.tsa(t)


def test_cmpa_projections_run_in_eval_mode_and_the_mode_is_restored(
    make_labeler: Callable[..., PseudoLabeler],
) -> None:
    heads = _Heads().train()
    labeler = make_labeler("cam.projected=true", "affinity.mask=box")
    labeler(torch.rand(1, 3, 16, 16), [(1,)], cmpa=heads)
    assert heads.modes and all(not training for _, training in heads.modes)
    assert {kind for kind, _ in heads.modes} == {"text", "image"}
    assert heads.training


def test_projected_space_without_background_words(
    make_labeler: Callable[..., PseudoLabeler],
) -> None:
    """No background prompts: the projected background set is empty (0 x d2), so the CAM's
    softmax runs over the image's classes only (what the raw space does with 0 x E)."""
    clip, tok, dino = tiny_models()
    prompts = ClassPrompts(PROMPTS.names, PROMPTS.prompts, (), PROMPTS.template)
    labeler = PseudoLabeler(clip, tok, dino, prompts, small_config("cam.projected=true"))
    assert labeler.bg_emb.shape == (0, 16)
    heads = _Heads()
    cls, bg, scale, proj = labeler._text_space(heads)
    assert bg.shape == (0, 8) and bg.dtype == torch.float32
    assert scale == pytest.approx(10.0) and proj is not None
    with torch.no_grad():
        want = torch.nn.functional.normalize(heads.tsa(labeler.class_emb), dim=-1)
    torch.testing.assert_close(cls, want)
    out = labeler(torch.rand(1, 3, 16, 16), [(0, 2)], cmpa=heads)
    assert out.cams[0].shape == (2, 2, 2)


def test_fp16_converts_clip_dino_and_prompts_once_before_the_first_cam(
    make_labeler: Callable[..., PseudoLabeler], monkeypatch: pytest.MonkeyPatch
) -> None:
    """backbone.precision=fp16: the first forward already scores with the fp16-encoded
    prompts (the same CAMs as a labeller converted beforehand), DINO is converted too, and
    later forwards do not convert again."""
    fp16 = ("backbone.precision=fp16", "backbone.precision_cpu=true", "affinity.mask=box")
    images = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(5))
    ready = make_labeler(*fp16)
    ready.use_fp16_weights()
    want = ready(images, [(0, 2)])
    calls: list[str] = []
    real_half = labeler_module.half_weights

    def counting_half(module: torch.nn.Module) -> None:
        calls.append(type(module).__name__)
        real_half(module)

    monkeypatch.setattr(labeler_module, "half_weights", counting_half)
    labeler = make_labeler(*fp16)
    first = labeler(images, [(0, 2)])
    for got, exp in zip(first.cams, want.cams, strict=True):
        torch.testing.assert_close(got, exp, atol=0, rtol=0)
    assert calls == ["CLIP", "VisionTransformer"]
    assert labeler.dino is not None
    assert labeler.dino.get_parameter("blocks.0.attn.qkv.weight").dtype == torch.float16
    labeler(images, [(0, 2)])
    assert calls == ["CLIP", "VisionTransformer"]  # converted once


def test_fp16_without_dino(monkeypatch: pytest.MonkeyPatch) -> None:
    clip, tok, _ = tiny_models()
    cfg = small_config(
        "backbone.precision=fp16", "backbone.precision_cpu=true",
        "affinity.use_dino_attention=false", "affinity.mask=box",
    )  # fmt: skip
    labeler = PseudoLabeler(clip, tok, None, PROMPTS, cfg)
    labeler.use_fp16_weights()
    assert labeler.clip.visual.get_parameter("blocks.0.attn.qkv.weight").dtype == torch.float16


def test_bf16_autocast_names_its_dtype() -> None:
    """backbone.precision=bf16 asks autocast for bfloat16 itself, not the device's default
    autocast dtype (float16 on CUDA; made float16 on the CPU here to see the difference)."""
    clip, tok, dino = tiny_models()
    bf16 = ("backbone.precision=bf16", "backbone.precision_cpu=true")
    cfg = small_config(*bf16, "affinity.mask=box")
    labeler = PseudoLabeler(clip, tok, dino, PROMPTS, cfg)
    before = torch.get_autocast_dtype("cpu")
    torch.set_autocast_dtype("cpu", torch.float16)
    try:
        out = labeler(torch.rand(1, 3, 16, 16), [(1,)])
    finally:
        torch.set_autocast_dtype("cpu", before)
    assert out.clip_out.tokens[0].dtype == torch.bfloat16


def test_timer_sections(make_labeler: Callable[..., PseudoLabeler]) -> None:
    """Each section reads the timer's clock at its start and end; a clock that counts its
    calls gives 1 per leaf section and shows the nesting (slic inside masks, par inside
    labels: 2 reads of the inner one between the outer's two)."""
    ticks = iter(range(1000))
    timer = Timer(clock=lambda: float(next(ticks)))
    labeler = make_labeler("affinity.mask=sgc")
    labeler(torch.rand(1, 3, 16, 16), [(0,)], timer=timer)
    assert dict(timer) == {
        "clip_gradcam": 1.0,
        "dino": 1.0,
        "slic": 1.0,
        "masks": 3.0,
        "refine": 1.0,
        "par": 1.0,
        "labels": 3.0,
    }
    assert Timer().clock is labeler_module.time.perf_counter


def _spied_builders(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Replace the by-name loaders with the tiny models and record their arguments."""
    seen: dict[str, list[Any]] = {"clip": [], "dino": [], "prompts": []}
    fresh: list[Any] = []  # each build gets new models (a built one may have moved to meta)

    def load_clip(name: str, device: Any = "cpu") -> Any:
        seen["clip"].append((name, device))
        fresh[:] = tiny_models()
        return fresh[0], fresh[1]

    def load_dino(name: str, device: Any = "cpu") -> Any:
        seen["dino"].append((name, device))
        return fresh[2]

    def prompts(*args: Any, **kwargs: Any) -> ClassPrompts:
        seen["prompts"].append((args, kwargs))
        return PROMPTS

    monkeypatch.setattr(labeler_module, "load_clip", load_clip)
    monkeypatch.setattr(labeler_module, "load_dino", load_dino)
    monkeypatch.setattr(labeler_module, "prompts_from_config", prompts)
    return seen


def test_build_pseudo_labeler_wiring(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _spied_builders(monkeypatch)
    cfg = small_config(
        "prompts.background_words=[sky,road]", "prompts.use_background_words=false",
        "data.root=/somewhere/else",
    )  # fmt: skip
    labeler = build_pseudo_labeler(cfg)
    assert seen["clip"] == [(cfg.backbone.clip, "cpu")]
    assert seen["dino"] == [(cfg.backbone.dino, "cpu")]
    p = cfg.prompts
    assert seen["prompts"] == [
        ((p.dataset, p.template, ("sky", "road"), False), {"data_root": "/somewhere/else"})
    ]
    assert labeler.dino is not None
    # DINO only when something uses it
    seen["dino"].clear()
    off = build_pseudo_labeler(
        small_config("affinity.use_dino_attention=false", "decoder.dino_branch=false")
    )
    assert off.dino is None and seen["dino"] == []


def test_builders_place_the_models_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The device reaches the loaders and the built modules ("meta": no weights are moved)."""
    seen = _spied_builders(monkeypatch)
    cfg = small_config()
    labeler = build_pseudo_labeler(cfg, "meta")
    assert seen["clip"][-1][1] == "meta" and seen["dino"][-1][1] == "meta"
    assert all(p.device.type == "meta" for p in labeler.parameters())
    tiny = small_config(
        "cmpa.in_dim=16", "cmpa.hidden_dim=16", "cmpa.out_dim=8", "decoder.embed_dim=16",
        "decoder.num_heads=2", "decoder.num_layers=1",
    )  # fmt: skip
    model = build_ssr_model(tiny, 3, "meta")
    assert seen["clip"][-1][1] == "meta"
    assert all(p.device.type == "meta" for p in model.parameters())
