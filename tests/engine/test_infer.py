"""Multi-scale + flip inference and the Segmenter API on small stand-in models."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from ssrseg.config import CRFConfig, InferConfig
from ssrseg.engine import infer
from ssrseg.engine.infer import (
    Segmenter,
    base_factor,
    multiscale_logits,
    pad_to_multiple,
    scaled_size,
)

PATCH = 8  # the toy CLIP's patch; nothing below may assume 16


class PatchNet(nn.Module):
    """Random ViT stand-in: one logit vector per patch, plus a 3x3 mixing conv.

    It is not mirror-symmetric, refuses inputs that are not multiples of its patch, and records
    the input shapes it saw.
    """

    def __init__(self, num_classes: int = 5, patch: int = PATCH) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = patch
        self.embed = nn.Conv2d(3, 16, patch, stride=patch)
        self.mix = nn.Conv2d(16, num_classes, 3, padding=1)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[-2] % self.patch == 0 and x.shape[-1] % self.patch == 0, x.shape
        self.calls.append(tuple(x.shape))
        return self.mix(torch.relu(self.embed(x)))


def make_segmenter(num_classes: int = 5, **infer_kw: object) -> tuple[Segmenter, PatchNet]:
    net = PatchNet(num_classes).eval()
    cfg = InferConfig(**{"long_side": 64, **infer_kw})  # type: ignore[arg-type]
    return Segmenter(net, num_classes, PATCH, cfg), net


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------ pure helpers


def test_sizes_and_padding() -> None:
    assert base_factor(375, 500, 512) == 512 / 500
    assert base_factor(375, 500, None) == 1.0
    assert scaled_size(375, 500, 512 / 500 * 0.75) == (288, 384)
    assert scaled_size(1, 900, 0.1) == (1, 90)  # never a zero side
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (2, 3, 8, 8)
    torch.testing.assert_close(padded[..., :5, :7], x)
    torch.testing.assert_close(padded[..., 7, :7], x[..., 4, :])  # edge row replicated
    assert float(pad_to_multiple(x, 4, "zeros")[..., 5:, :].abs().sum()) == 0.0
    assert pad_to_multiple(x[..., :4, :4], 4) is not None
    with pytest.raises(ValueError, match="pad mode"):
        pad_to_multiple(x, 4, "mirror")


def test_identity_model_round_trips_exactly() -> None:
    """A 'model' returning its (padded) input at full resolution must come back unchanged:
    this pins the pad position, the crop and the flip-back."""
    x = torch.rand(2, 3, 37, 53)
    out = multiscale_logits(
        lambda t: t, x, scales=(1.0,), flip=True, long_side=None, patch_size=PATCH
    )
    torch.testing.assert_close(out, x)


def test_scales_reach_the_model_padded_to_the_patch() -> None:
    net = PatchNet()
    x = torch.rand(1, 3, 37, 53)
    out = multiscale_logits(net, x, scales=(1.0, 0.75), flip=True, long_side=64, patch_size=8)
    assert out.shape == (1, 5, 37, 53)
    # 37x53 -> long side 64: 45x64 (pad 48x64); x0.75: 34x48 (pad 40x48); flip doubles B.
    assert net.calls == [(2, 3, 48, 64), (2, 3, 40, 48)]


def test_flip_average_of_symmetric_input_is_symmetric() -> None:
    net = PatchNet()
    half = torch.rand(1, 3, 29, 20)
    x = torch.cat([half, half.flip(-1)], dim=-1)  # 29 x 40, mirror-symmetric
    kw = {"scales": (1.0, 0.75), "long_side": 48, "patch_size": PATCH}
    out = multiscale_logits(net, x, flip=True, **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(out, out.flip(-1), atol=1e-5, rtol=0)
    # The stand-in model itself is not symmetric, so the check above can fail.
    plain = multiscale_logits(net, x, flip=False, **kw)  # type: ignore[arg-type]
    assert (plain - plain.flip(-1)).abs().max() > 1e-2


def test_flip_average_is_mirror_equivariant() -> None:
    net = PatchNet()
    x = torch.rand(1, 3, 30, 45)
    kw = {"scales": (1.0, 0.75), "flip": True, "long_side": 40, "patch_size": PATCH}
    a = multiscale_logits(net, x, **kw)  # type: ignore[arg-type]
    b = multiscale_logits(net, x.flip(-1), **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(b, a.flip(-1), atol=1e-5, rtol=0)


def test_bad_inputs_to_multiscale() -> None:
    net = PatchNet()
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        multiscale_logits(net, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="scale"):
        multiscale_logits(net, torch.rand(1, 3, 8, 8), scales=(0.0,), patch_size=PATCH)
    with pytest.raises(ValueError, match="logits function returned"):
        multiscale_logits(lambda t: t[:1], torch.rand(2, 3, 8, 8), patch_size=PATCH)


# ------------------------------------------------------------------ Segmenter


@pytest.mark.parametrize("size", [(40, 40), (37, 53), (90, 31), (5, 70), (17, 9)])
def test_predict_shapes_at_any_size(size: tuple[int, int]) -> None:
    seg, _ = make_segmenter()
    image = random_image(*size)
    mask, probs = seg.predict(image, return_probs=True)
    assert mask.shape == size and mask.dtype == np.uint8
    assert probs.shape == (5, *size) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(mask, probs.argmax(axis=0))
    assert mask.max() < 5


def test_predict_matches_multiscale_logits() -> None:
    seg, net = make_segmenter(scales=(1.0, 0.5))
    image = random_image(30, 50)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    expected = multiscale_logits(net, x, (1.0, 0.5), True, 64, PATCH)[0].argmax(0)
    np.testing.assert_array_equal(seg.predict(image), expected.numpy())


def test_image_types() -> None:
    seg, _ = make_segmenter()
    image = random_image(24, 33)
    mask = seg.predict(image)
    np.testing.assert_array_equal(seg.predict(Image.fromarray(image)), mask)
    rgba = np.concatenate([image, np.full((24, 33, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(seg.predict(rgba), mask)  # alpha dropped
    assert seg.predict(image[:, :, 0]).shape == (24, 33)  # grayscale
    with pytest.raises(ValueError, match="uint8"):
        seg.predict(image.astype(np.float32))
    with pytest.raises(ValueError, match="H x W x 3"):
        seg.predict(np.zeros((4, 4, 2), np.uint8))


def test_predict_batch_groups_sizes_and_keeps_order() -> None:
    seg, net = make_segmenter(scales=(1.0,), flip=False)
    images = [random_image(32, 48, 1), random_image(40, 40, 2), random_image(32, 48, 3)]
    batched = seg.predict_batch(images, return_probs=True, batch_size=4)
    # One forward for the two 32x48 images, one for the 40x40 one.
    assert sorted(c[0] for c in net.calls) == [1, 2]
    for image, (mask, probs) in zip(images, batched, strict=True):
        one_mask, one_probs = seg.predict(image, return_probs=True)
        np.testing.assert_allclose(probs, one_probs, atol=1e-5)
        np.testing.assert_array_equal(mask, one_mask)
    net.calls.clear()
    seg.predict_batch(images, batch_size=1)
    assert [c[0] for c in net.calls] == [1, 1, 1]


def test_segmenter_validates_classes() -> None:
    with pytest.raises(ValueError, match="class names"):
        Segmenter(PatchNet(3), 3, PATCH, InferConfig(), None, ["only-one"])
    with pytest.raises(ValueError, match="pad_mode"):
        Segmenter(PatchNet(3), 3, PATCH, InferConfig(pad_mode="reflect"))
    seg = Segmenter(PatchNet(3), 4, PATCH, InferConfig(long_side=16))
    with pytest.raises(ValueError, match="expected 4"):
        seg.predict(random_image(16, 16))


def test_patch_size_from_model() -> None:
    from ssrseg.backbones.vit import VisionTransformer, ViTConfig

    def vit(p: int) -> VisionTransformer:
        return VisionTransformer(ViTConfig(image_size=32, patch_size=p, width=8, layers=1, heads=2))

    holder = nn.Module()
    holder.a = vit(8)
    holder.b = vit(16)
    assert infer._patch_size_of(holder) == 16
    holder.patch_size = 8
    assert infer._patch_size_of(holder) == 8
    with pytest.raises(ValueError, match="patch size"):
        infer._patch_size_of(nn.Linear(2, 2))


def test_unknown_release_lists_names() -> None:
    with pytest.raises(KeyError, match="available: none yet"):
        Segmenter.from_pretrained("ssr_voc_vitb16")


# ------------------------------------------------------------------ CRF


def test_crf_receives_image_and_probs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CRF gets the uint8 image and the K x H x W softmax; its output decides the mask."""
    pytest.importorskip("ssrseg.engine.crf")
    seen: dict[str, object] = {}

    def fake_crf(image: np.ndarray, probs: np.ndarray, cfg: CRFConfig) -> np.ndarray:
        seen.update(image=image, probs=probs, cfg=cfg)
        out = np.zeros_like(probs)
        out[2] = 1.0  # everything becomes class index 2
        return out

    monkeypatch.setattr(infer, "dense_crf", fake_crf)
    seg, _ = make_segmenter()
    image = random_image(21, 34)
    plain_mask, plain_probs = seg.predict(image, return_probs=True)
    mask, probs = seg.predict(image, return_probs=True, crf=True)
    np.testing.assert_array_equal(seen["image"], image)
    np.testing.assert_allclose(seen["probs"], plain_probs, atol=1e-6)  # type: ignore[arg-type]
    assert seen["cfg"] == CRFConfig()
    assert (mask == 2).all() and probs.shape == (5, 21, 34)
    assert (plain_mask != 2).any()


def test_crf_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ssrseg.engine.crf")
    for name in ("pydensecrf", "pydensecrf.densecrf", "pydensecrf2"):
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    seg, _ = make_segmenter()
    with pytest.raises(RuntimeError, match="pip install"):
        seg.predict(random_image(16, 16), crf=True)
    with pytest.raises(RuntimeError, match="pip install"):
        infer.check_crf()


def test_crf_runs_when_installed() -> None:
    pytest.importorskip("pydensecrf.densecrf")
    seg, _ = make_segmenter()
    image = random_image(24, 40)
    mask, probs = seg.predict(image, return_probs=True, crf=True)
    assert mask.shape == (24, 40) and probs.shape == (5, 24, 40)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)


# ------------------------------------------------------------------ real model, datasets


def _tiny_ssr_builder() -> tuple[Any, Any]:
    """The training engineer's tiny SSRModel (random tiny CLIP, stand-in pseudo labeller)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
    from tests_model_fakes import FakeLabeler, tiny_clip, tiny_config

    from ssrseg.model.ssr import SSRModel

    def build(cfg: Any, num_classes: int, device: str = "cpu") -> SSRModel:
        return SSRModel(cfg, FakeLabeler(tiny_clip(), num_classes - 1), num_classes).to(device)

    return build, tiny_config


@pytest.mark.slow
def test_from_checkpoint_runs_the_real_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ssrseg.engine.checkpoint import rng_state, save_checkpoint, state_from

    build, tiny_config = _tiny_ssr_builder()
    torch.manual_seed(4)
    model = build(tiny_config(), 4).eval()
    state = state_from(3, model.cfg, 4, [rng_state()])
    save_checkpoint(tmp_path, 3, model.trainable_state_dict(), {}, state)
    monkeypatch.setattr("ssrseg.engine.checkpoint.build_ssr_model", build)

    seg = Segmenter.from_checkpoint(tmp_path, infer=InferConfig(long_side=48))
    assert (seg.patch_size, seg.num_classes, seg.config) == (8, 4, model.cfg)
    image = random_image(37, 50)
    mask, probs = seg.predict(image, return_probs=True)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    expected = multiscale_logits(model.segment, x, (1.0, 0.75), True, 48, 8)[0].softmax(0)
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-5)
    assert mask.shape == (37, 50)
    # The checkpoint's own inference settings are the default.
    assert Segmenter.from_checkpoint(tmp_path).infer == model.cfg.infer


def _voc_layout(root: Path, images: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> None:
    from ssrseg.viz import save_label_png

    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for image_id, image in images.items():
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.png")
        save_label_png(root / "SegmentationClass" / f"{image_id}.png", masks[image_id])
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(images) + "\n")


def test_evaluate_dataset_scores_each_crf_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ssrseg.data import build_dataset
    from ssrseg.metrics import ConfusionMatrix

    pytest.importorskip("ssrseg.engine.crf")

    def all_class_one(image: np.ndarray, probs: np.ndarray, cfg: CRFConfig) -> np.ndarray:
        out = np.zeros_like(probs)
        out[1] = 1.0
        return out

    monkeypatch.setattr(infer, "dense_crf", all_class_one)
    # evaluate_dataset's CRF runs through the CRF pool (crf_pool.crf_mask), which looks the
    # function up in its module at each call
    monkeypatch.setattr("ssrseg.engine.crf.dense_crf", all_class_one)
    seg, _ = make_segmenter(num_classes=21)
    images = {"a": random_image(30, 40, 1), "b": random_image(26, 26, 2)}
    rng = np.random.default_rng(5)
    masks = {k: rng.integers(0, 3, v.shape[:2]).astype(np.uint8) for k, v in images.items()}
    masks["a"][:4] = 255
    _voc_layout(tmp_path / "voc", images, masks)
    dataset = build_dataset("voc", tmp_path / "voc", "val", require_labels=False)

    out = tmp_path / "preds"
    result = infer.evaluate_dataset(seg, dataset, (False, True), progress=False, pred_dir=out)
    expected = ConfusionMatrix(21)
    for k in images:
        expected.update(seg.predict(images[k]), masks[k])
        np.testing.assert_array_equal(
            np.asarray(Image.open(out / f"{k}.png")), seg.predict(images[k])
        )
        assert (np.asarray(Image.open(out / "crf" / f"{k}.png")) == 1).all()
    np.testing.assert_array_equal(result[False].hist, expected.hist)
    # With the stand-in CRF every counted pixel is predicted as class index 1.
    crf_hist = result[True].hist
    assert crf_hist.sum() == expected.hist.sum() and crf_hist[:, 1].sum() == crf_hist.sum()
