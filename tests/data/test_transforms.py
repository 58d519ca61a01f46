"""TrainTransform / collate_train: shapes, nearest sampling of maps, padding, alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssrseg.config import load_config
from ssrseg.data.base import Sample, Skipped
from ssrseg.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    TrainTransform,
    clip_normalize,
    collate_train,
    imagenet_normalize,
    input_stats,
    normalize,
    resize_nearest,
    scaled_size,
    to_tensor,
)


def _sample(h: int = 20, w: int = 30) -> tuple[Sample, np.ndarray]:
    rng = np.random.default_rng(1)
    mask = rng.choice(np.array([0, 3, 7, 255], np.uint8), size=(h, w))
    image = np.stack([mask, mask, mask], axis=-1).astype(np.uint8)  # image encodes the mask
    sp = (np.arange(h * w).reshape(h, w) % 13).astype(np.int32)
    return Sample("x", image, (2, 6), mask, "x.png"), sp


def test_unit_scale_crop_and_flip_keep_maps_aligned() -> None:
    sample, sp = _sample()
    for seed in range(10):
        t = TrainTransform(16, scale_range=(1.0, 1.0), hflip=True, seed=seed)
        out = t(sample, sp)
        assert out.image.shape == (16, 16, 3) and out.mask.shape == (16, 16)
        assert out.valid.all()  # 20 x 30 covers a 16 crop: no padding
        # image == mask everywhere (the crop and the flip moved both identically)
        np.testing.assert_array_equal(out.image[..., 0], out.mask)
        # superpixel ids still match the pixel positions they came from
        assert set(np.unique(out.superpixels)) <= set(range(13))


def test_padding_uses_ignore_values() -> None:
    sample, sp = _sample(6, 8)
    t = TrainTransform(32, scale_range=(1.0, 1.0), hflip=False, seed=0)
    out = t(sample, sp)
    assert out.valid.sum() == 6 * 8
    assert (out.mask[~out.valid] == 255).all()
    assert (out.superpixels[~out.valid] == -1).all()
    assert (out.image[~out.valid] == 0).all()
    assert (out.superpixels[out.valid] >= 0).all()


def test_rescale_range_and_nearest_sampling() -> None:
    sample, sp = _sample(40, 40)
    sizes = set()
    for seed in range(20):
        t = TrainTransform(64, scale_range=(0.5, 2.0), hflip=True, seed=seed)
        out = t(sample, sp)
        n_valid = int(out.valid.sum())
        side = round(n_valid**0.5)
        sizes.add(side)
        # rescaled side in [20, 80], cropped to at most 64
        assert 20 <= side <= 64
        # nearest sampling: no new label values appear
        assert set(np.unique(out.mask[out.valid])) <= {0, 3, 7, 255}
        assert set(np.unique(out.superpixels[out.valid])) <= set(range(13))
    assert len(sizes) > 3  # the scale really varies


def test_same_seed_same_crop() -> None:
    sample, sp = _sample()
    a = TrainTransform(16, seed=3)(sample, sp)
    b = TrainTransform(16, seed=3)(sample, sp)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.superpixels, b.superpixels)


def test_resize_nearest_exact() -> None:
    lab = np.array([[1, 2], [3, 4]])
    np.testing.assert_array_equal(
        resize_nearest(lab, 4, 4), [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    )
    # pixel centres 0.5 and 1.5 of the output map to input positions 1.0 and 3.0
    np.testing.assert_array_equal(resize_nearest(np.arange(4)[None], 1, 2), [[1, 3]])


def test_map_size_mismatch_is_an_error() -> None:
    sample, _ = _sample()
    with pytest.raises(ValueError, match="superpixels"):
        TrainTransform(16, seed=0).apply(sample.image, sample.mask, np.zeros((3, 3), np.int32))


def test_collate_train() -> None:
    sample, sp = _sample()
    t = TrainTransform(16, seed=0)
    no_mask = Sample("y", sample.image, (1,), None, "y.png")
    batch = collate_train([t(sample, sp), Skipped("bad", "bad.png: broken"), t(no_mask, sp)])
    images = batch["images"]
    assert isinstance(images, torch.Tensor) and images.shape == (2, 3, 16, 16)
    assert images.dtype == torch.float32 and 0.0 <= images.min() and images.max() <= 1.0
    masks = batch["masks"]
    assert isinstance(masks, torch.Tensor) and masks.dtype == torch.long
    assert (masks[1] == 255).all()  # no ground truth: all unknown
    assert batch["superpixels"].shape == (2, 16, 16)  # type: ignore[union-attr]
    assert batch["valid"].dtype == torch.bool  # type: ignore[union-attr]
    assert batch["labels"] == [(2, 6), (1,)] and batch["ids"] == ["x", "y"]
    assert batch["skipped"] == [("bad", "bad.png: broken")]
    no_sp = collate_train([t(sample)])
    assert no_sp["superpixels"] is None


def test_normalisation_constants() -> None:
    x = torch.ones(1, 3, 2, 2)
    y = clip_normalize(x)
    assert torch.allclose(y[0, :, 0, 0], (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD))
    z = imagenet_normalize(torch.zeros(1, 3, 1, 1))
    assert torch.allclose(
        z.flatten(), -torch.tensor(IMAGENET_MEAN) / torch.tensor([0.229, 0.224, 0.225])
    )


def test_scaled_size_floor_is_weclips_int() -> None:
    # WeCLIP: new size = (int(s * w), int(s * h)); 37 x 50 at 0.75 -> 27.75 x 37.5
    assert scaled_size(37, 50, 0.75, "floor") == (27, 37)
    assert scaled_size(37, 50, 0.75, "round") == (28, 38)
    assert scaled_size(3, 3, 0.1, "floor") == (1, 1)  # never empty
    assert load_config(None).data.scale_rounding == "floor"
    with pytest.raises(ValueError, match="scale_rounding"):
        scaled_size(3, 3, 1.0, "ceil")
    with pytest.raises(ValueError, match="scale_rounding"):
        TrainTransform(16, scale_rounding="ceil")


@pytest.mark.parametrize(("rounding", "side"), [("floor", (27, 37)), ("round", (28, 38))])
def test_transform_uses_the_rounding(rounding: str, side: tuple[int, int]) -> None:
    sample, sp = _sample(37, 50)
    t = TrainTransform(64, scale_range=(0.75, 0.75), hflip=False, seed=0, scale_rounding=rounding)
    out = t(sample, sp)
    assert int(out.valid.sum()) == side[0] * side[1]  # the whole rescaled image fits the crop
    rows = np.flatnonzero(out.valid.any(axis=1))
    cols = np.flatnonzero(out.valid.any(axis=0))
    assert (rows.size, cols.size) == side


def test_imagenet_input_equals_weclips_loader() -> None:
    # WeCLIP: (x - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375] on 0..255 values
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    ref = (img.astype(np.float32) - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]
    ours = normalize(to_tensor(img)[None], *input_stats("imagenet"))[0].permute(1, 2, 0)
    np.testing.assert_allclose(ours.numpy(), ref, atol=2e-6, rtol=0)
    assert load_config(None).data.clip_normalisation == "imagenet"
    assert input_stats("clip") == (CLIP_MEAN, CLIP_STD)
    with pytest.raises(ValueError, match="normalisation"):
        input_stats("laion")
