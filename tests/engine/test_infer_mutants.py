"""Contract tests of the inference helpers, image intake, releases and the Segmenter's
constructors: defaults, argument wiring, edge cases and error messages (mutation triage of
``ssrseg.engine.infer``, docs/mutation/engine.infer.md)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from ssrseg.config import CRFConfig, InferConfig, SSRConfig
from ssrseg.engine import infer
from ssrseg.engine.infer import (
    Segmenter,
    as_uint8_image,
    base_factor,
    multiscale_logits,
    pad_to_multiple,
    probs_to_mask,
    scaled_size,
    to_tensor01,
)

# ------------------------------------------------------------------ pure helpers


def test_scaled_size_keeps_one_pixel_on_either_side() -> None:
    # 900 x 1 scaled by 0.1: the long side 90, the short one rounds to 0 and is kept at 1
    assert scaled_size(900, 1, 0.1) == (90, 1)
    assert scaled_size(1, 900, 0.1) == (1, 90)


def test_base_factor_of_a_one_pixel_long_side() -> None:
    # long_side 1 is a (useless but valid) target: 1 / 8, not the "no resize" 1.0
    assert base_factor(4, 8, 1) == 1 / 8
    assert base_factor(4, 8, 0) == 1.0


def test_pad_to_multiple_pads_only_the_last_two_dims() -> None:
    x = torch.arange(3 * 5 * 6, dtype=torch.float32).reshape(3, 5, 6)  # C x H x W
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (3, 8, 8)
    assert torch.equal(padded[:, :5, :6], x)


def _shape_recorder(calls: list[tuple[int, ...]]) -> Any:
    def fn(t: Tensor) -> Tensor:
        calls.append(tuple(t.shape))
        return t[:, :2]

    return fn


def test_multiscale_defaults_are_the_spec_settings() -> None:
    """Defaults: scales (1, 0.75), flip, long side 512, patch 16 (SSR_SPEC section 10).

    An 8 x 16 image: factor 512 / 16 = 32 -> 256 x 512 (already a multiple of 16), at 0.75
    192 x 384; flip doubles the batch."""
    calls: list[tuple[int, ...]] = []
    out = multiscale_logits(_shape_recorder(calls), torch.rand(1, 3, 8, 16))
    assert calls == [(2, 3, 256, 512), (2, 3, 192, 384)]
    assert out.shape == (1, 2, 8, 16)


def test_multiscale_default_flip_matches_explicit_flip() -> None:
    # a model that sees the column index is not mirror-symmetric, so flip changes the output
    def fn(t: Tensor) -> Tensor:
        col = torch.arange(t.shape[-1], dtype=t.dtype).expand_as(t[:, :1])
        return torch.cat([t[:, :1] + col, t[:, 1:2]], dim=1)

    x = torch.rand(1, 3, 4, 8)
    kw: dict[str, Any] = {"scales": (1.0,), "long_side": None, "patch_size": 4}
    default = multiscale_logits(fn, x, **kw)
    torch.testing.assert_close(default, multiscale_logits(fn, x, flip=True, **kw))
    assert not torch.allclose(default, multiscale_logits(fn, x, flip=False, **kw))


def test_multiscale_error_messages() -> None:
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        multiscale_logits(lambda t: t, torch.rand(1, 4, 8, 8), patch_size=8)
    with pytest.raises(ValueError, match=r"^at least one inference scale is needed$"):
        multiscale_logits(lambda t: t, torch.rand(1, 3, 8, 8), scales=())
    with pytest.raises(ValueError, match=r"^patch_size must be positive, got 0$"):
        multiscale_logits(lambda t: t, torch.rand(1, 3, 8, 8), patch_size=0)
    # flip doubles a batch of 2 to 4: the message names the batch the model was given
    with pytest.raises(ValueError, match="expected 4 x K x h x w"):
        multiscale_logits(
            lambda t: t[:1], torch.rand(2, 3, 8, 8), scales=(1.0,), long_side=None, patch_size=8
        )


def test_low_resolution_logits_are_upsampled_half_pixel() -> None:
    """A per-patch model (patch 2) on a 2 x 4 ramp [0, 1, 2, 3]: patch means [0.5, 2.5],
    upsampled bilinearly with half-pixel centres (align_corners=False) to
    [0.5, 0.75 * 0.5 + 0.25 * 2.5, 0.25 * 0.5 + 0.75 * 2.5, 2.5] = [0.5, 1, 2, 2.5]
    (corner-aligned would give [0.5, 7/6, 11/6, 2.5])."""
    x = torch.zeros(1, 3, 2, 4)
    x[0, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    out = multiscale_logits(
        lambda t: torch.nn.functional.avg_pool2d(t[:, :2], 2),
        x,
        scales=(1.0,),
        flip=False,
        long_side=None,
        patch_size=2,
    )
    want = torch.tensor([0.5, 1.0, 2.0, 2.5])
    for row in range(2):
        torch.testing.assert_close(out[0, 0, row], want, atol=1e-6, rtol=0)


def test_probs_to_mask_labels_and_limits() -> None:
    probs = torch.zeros(2, 3, 4, 5)  # B x K x H x W with distinct sizes on every axis
    probs[0, 2, :, :] = 1.0
    probs[1, 1, 1:, 2:] = 1.0
    mask = probs_to_mask(probs)
    assert mask.dtype == torch.uint8 and mask.shape == (2, 4, 5)
    want = torch.zeros(2, 4, 5, dtype=torch.uint8)
    want[0] = 2
    want[1, 1:, 2:] = 1
    torch.testing.assert_close(mask, want)
    # a single K x H x W map works too; ties go to the first maximum (index 0)
    assert probs_to_mask(torch.ones(3, 2, 2)).tolist() == [[0, 0], [0, 0]]
    # 256 classes still fit a uint8 (labels 0..255), 257 do not
    big = torch.zeros(256, 1, 2)
    big[255] = 1.0
    assert probs_to_mask(big).tolist() == [[255, 255]]
    with pytest.raises(ValueError, match=r"^257 classes do not fit a uint8 mask$"):
        probs_to_mask(torch.zeros(257, 1, 2))
    with pytest.raises(ValueError, match="257 classes do not fit"):
        probs_to_mask(torch.zeros(1, 257, 1, 2))


# ------------------------------------------------------------------ images at the edge


def test_as_uint8_image_reads_paths(tmp_path: Path) -> None:
    image = np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "im.png"
    Image.fromarray(image).save(path)
    np.testing.assert_array_equal(as_uint8_image(path), image)
    np.testing.assert_array_equal(as_uint8_image(str(path)), image)


def test_as_uint8_image_converts_pil_modes_to_rgb() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = as_uint8_image(Image.fromarray(gray))  # mode "L"
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))


def test_as_uint8_image_rejects_other_types_by_name() -> None:
    with pytest.raises(ValueError, match=r"^unsupported image type list$"):
        as_uint8_image([[1, 2, 3]])


def test_as_uint8_image_sides() -> None:
    with pytest.raises(ValueError, match="empty side"):
        as_uint8_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="empty side"):
        as_uint8_image(np.zeros((5, 0, 3), np.uint8))
    one = np.full((1, 1, 3), 9, np.uint8)  # a 1 x 1 image is small but not empty
    np.testing.assert_array_equal(as_uint8_image(one), one)


def test_to_tensor01_puts_the_batch_on_the_device() -> None:
    images = [np.full((2, 3, 3), 255, np.uint8), np.zeros((2, 3, 3), np.uint8)]
    out = to_tensor01(images, "meta")  # the meta device has no data but keeps the device
    assert out.device.type == "meta" and out.shape == (2, 3, 2, 3)
    cpu = to_tensor01(images, "cpu")
    assert cpu.dtype == torch.float32
    assert cpu[0].eq(1.0).all() and cpu[1].eq(0.0).all()


# ------------------------------------------------------------------ releases and checkpoints


class FakeSSR(nn.Module):
    """Stands in for a loaded SSRModel: records the inputs of ``segment``."""

    def __init__(self, channels: int, **attrs: Any) -> None:
        super().__init__()
        self.channels = channels
        self.seen: list[tuple[tuple[int, ...], str]] = []
        for key, value in attrs.items():
            setattr(self, key, value)

    def segment(self, x: Tensor) -> Tensor:
        self.seen.append((tuple(x.shape), x.device.type))
        # 1 x 1 output: its channel count differs from every other dimension below
        return torch.zeros(x.shape[0], self.channels, 1, 1, device=x.device)


CFG = SSRConfig(
    infer=InferConfig(scales=(1.0,), flip=False, long_side=32),
    crf=CRFConfig(iterations=3),
)


@pytest.fixture
def fake_load(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[Any, Any]], dict[str, Any]]:
    """Replaces checkpoint loading: ``holder["model"]`` is returned with ``CFG``."""
    calls: list[tuple[Any, Any]] = []
    holder: dict[str, Any] = {}

    def load_model(path: Any, device: Any = "cpu") -> tuple[Any, SSRConfig]:
        calls.append((path, device))
        return holder["model"], CFG

    monkeypatch.setattr(infer, "load_model", load_model)
    return calls, holder


def test_from_checkpoint_wires_the_model_and_its_config(
    fake_load: tuple[list[tuple[Any, Any]], dict[str, Any]], tmp_path: Path
) -> None:
    calls, holder = fake_load
    model = FakeSSR(4, num_classes=4, patch_size=8, class_names=("a", "b", "c")).train()
    holder["model"] = model
    seg = Segmenter.from_checkpoint(tmp_path)
    assert calls == [(str(tmp_path), "cpu")]  # a str path, the default device
    assert not model.training  # put in eval mode
    assert (seg.num_classes, seg.patch_size, seg.class_names) == (4, 8, ("a", "b", "c"))
    assert seg.infer == CFG.infer and seg.crf_cfg == CFG.crf  # the checkpoint's own settings
    assert seg.config is CFG and seg.model is model
    assert seg.device == torch.device("cpu")
    assert seg.palette.shape == (256, 3)  # no palette of its own: the VOC one
    assert model.seen == []  # num_classes stated: no probe forward
    seg.logits(torch.rand(1, 3, 8, 8))
    # logits_fn is the model's segment, run with CFG.infer: long side 32, one scale, no flip
    assert model.seen == [((1, 3, 32, 32), "cpu")]


def test_from_checkpoint_overrides_and_probe(
    fake_load: tuple[list[tuple[Any, Any]], dict[str, Any]], tmp_path: Path
) -> None:
    calls, holder = fake_load
    # no num_classes attribute: one probe forward on a patch-sized image tells it (6)
    model = FakeSSR(6, patch_size=4, class_names=("x",))
    holder["model"] = model
    own_infer, own_crf = InferConfig(long_side=16), CRFConfig(iterations=1)
    seg = Segmenter.from_checkpoint(tmp_path, device="meta", infer=own_infer, crf=own_crf)
    assert calls == [(str(tmp_path), "meta")]
    assert model.seen == [((1, 3, 4, 4), "meta")]
    assert seg.num_classes == 6 and seg.patch_size == 4
    assert seg.class_names is None  # one name for 5 foreground classes is dropped
    assert seg.infer is own_infer and seg.crf_cfg is own_crf
    assert seg.device == torch.device("meta")


def test_from_checkpoint_finds_the_patch_of_its_vits(
    fake_load: tuple[list[tuple[Any, Any]], dict[str, Any]], tmp_path: Path
) -> None:
    from ssrseg.backbones.vit import VisionTransformer, ViTConfig

    _, holder = fake_load
    model = FakeSSR(3, num_classes=3)
    model.vit = VisionTransformer(
        ViTConfig(image_size=16, patch_size=4, width=8, layers=1, heads=2)
    )
    holder["model"] = model
    seg = Segmenter.from_checkpoint(tmp_path)
    assert seg.patch_size == 4 and seg.class_names is None


@pytest.fixture
def fake_release(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[Any, Any]]:
    """A release "toy" and a stand-in huggingface_hub.snapshot_download (no network)."""
    downloads: list[tuple[Any, Any]] = []

    def snapshot_download(repo_id: str, allow_patterns: Any = None) -> str:
        downloads.append((repo_id, allow_patterns))
        return str(tmp_path / "hub")

    hub = types.ModuleType("huggingface_hub")
    hub.snapshot_download = snapshot_download  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    monkeypatch.setitem(infer.RELEASES, "toy", infer.Release("org/ssr", "voc_b16", "test"))
    return downloads


def test_resolve_release_downloads_only_its_folder(
    fake_release: list[tuple[Any, Any]], tmp_path: Path
) -> None:
    assert infer.resolve_release("toy") == str(tmp_path / "hub" / "voc_b16")
    assert fake_release == [("org/ssr", ["voc_b16/*"])]


def test_unknown_release_message(
    fake_release: list[tuple[Any, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(infer.RELEASES, "alpha", infer.Release("org/a", "a", "test"))
    with pytest.raises(KeyError, match=r"available: alpha, toy\); pass a checkpoint folder "):
        infer.resolve_release("nope")
    # ".$": the message ends with the closing quote of the KeyError's repr
    with pytest.raises(KeyError, match=r"to Segmenter\.from_checkpoint instead.$"):
        infer.resolve_release("nope")
    assert fake_release == []


def test_from_pretrained_passes_its_arguments_on(
    fake_release: list[tuple[Any, Any]],
    fake_load: tuple[list[tuple[Any, Any]], dict[str, Any]],
    tmp_path: Path,
) -> None:
    calls, holder = fake_load
    holder["model"] = FakeSSR(3, num_classes=3, patch_size=2)
    folder = str(tmp_path / "hub" / "voc_b16")
    seg = Segmenter.from_pretrained("toy")
    assert calls == [(folder, "cpu")]
    assert seg.infer == CFG.infer and seg.crf_cfg == CFG.crf
    own_infer, own_crf = InferConfig(long_side=16), CRFConfig(iterations=1)
    seg = Segmenter.from_pretrained("toy", device="meta", infer=own_infer, crf=own_crf)
    assert calls[-1] == (folder, "meta")
    assert seg.infer is own_infer and seg.crf_cfg is own_crf


def test_patch_size_stated_by_the_model_wins_only_when_positive() -> None:
    from ssrseg.backbones.vit import VisionTransformer, ViTConfig

    holder = nn.Module()
    holder.vit = VisionTransformer(
        ViTConfig(image_size=16, patch_size=4, width=8, layers=1, heads=2)
    )
    holder.patch_size = 1  # type: ignore[assignment]  # a stated 1 is a valid patch
    assert infer._patch_size_of(holder) == 1
    holder.patch_size = 0  # type: ignore[assignment]  # not a patch size: the ViTs decide
    assert infer._patch_size_of(holder) == 4
    no_vit = r"^cannot tell the model's patch size: it holds no VisionTransformer$"
    with pytest.raises(ValueError, match=no_vit):
        infer._patch_size_of(nn.Linear(2, 2))


# ------------------------------------------------------------------ Segmenter construction


def _two_class(x: Tensor) -> Tensor:
    return x[:, :2]


def test_segmenter_defaults_and_stored_arguments() -> None:
    seg = Segmenter(_two_class, 2, 2)
    assert seg.infer == InferConfig() and seg.crf_cfg == CRFConfig()
    assert seg.class_names is None and seg.config is None and seg.model is None
    assert seg.device == torch.device("cpu")
    pal = np.arange(256 * 3, dtype=np.uint8).reshape(256, 3)
    seg = Segmenter(_two_class, 3, 2, None, pal, ["cat", "dog"], device="meta")
    assert seg.palette is pal
    assert seg.class_names == ("cat", "dog")
    assert seg.device == torch.device("meta")


def test_segmenter_class_count_limits() -> None:
    with pytest.raises(ValueError, match=r"^num_classes must be in \[2, 256\], got 1$"):
        Segmenter(_two_class, 1, 2)
    with pytest.raises(ValueError, match="got 257"):
        Segmenter(_two_class, 257, 2)
    assert Segmenter(_two_class, 256, 2).num_classes == 256
    names_msg = r"^3 class names for 3 classes \(expected one name per foreground class\)$"
    with pytest.raises(ValueError, match=names_msg):
        Segmenter(_two_class, 3, 2, class_names=["a", "b", "c"])


def test_segmenter_logits_wiring_and_class_message(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_multiscale(fn: Any, images01: Tensor, **kw: Any) -> Tensor:
        seen.update(fn=fn, device=images01.device.type, **kw)
        return torch.zeros(1, 2, 1, 1)

    monkeypatch.setattr(infer, "multiscale_logits", fake_multiscale)
    cfg = InferConfig(scales=(0.5,), flip=False, long_side=7, pad_mode="zeros")
    seg = Segmenter(_two_class, 2, 4, cfg, device="meta")
    seg.logits(torch.rand(1, 3, 2, 2))  # a CPU batch is moved to the segmenter's device
    assert seen == {
        "fn": _two_class,
        "device": "meta",
        "scales": (0.5,),
        "flip": False,
        "long_side": 7,
        "patch_size": 4,
        "pad_mode": "zeros",
    }
    three = Segmenter(_two_class, 3, 2)
    with pytest.raises(ValueError, match=r"^model gave 2 classes, expected 3$"):
        three.logits(torch.rand(1, 3, 2, 2))
