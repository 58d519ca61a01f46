"""Contract tests of prediction, the CRF hooks and :func:`evaluate_dataset`'s wiring (skip
log, indices, guard, CRF modes, prediction files, progress), on a model whose mask is known:
the logits are 10 x the RGB values, so the label of a pixel is its largest channel (mutation
triage of ``ssrseg.engine.infer``, docs/mutation/engine.infer.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from ssrseg.config import CRFConfig, InferConfig
from ssrseg.data.base import Sample, SkipLog
from ssrseg.engine import infer
from ssrseg.engine.infer import Segmenter
from ssrseg.errors import BadInputError
from ssrseg.metrics import ConfusionMatrix

PALETTE = np.arange(256 * 3, dtype=np.uint8).reshape(256, 3)[::-1].copy()


def _rgb_logits(x: Tensor) -> Tensor:
    return x * 10.0


def make_seg(crf: bool = False) -> Segmenter:
    # one scale, no flip, no resize, patch 1: the logits reach the mask untouched
    infer_cfg = InferConfig(scales=(1.0,), flip=False, long_side=0, crf=crf)
    return Segmenter(_rgb_logits, 3, 1, infer_cfg, PALETTE, crf=CRFConfig(iterations=2))


def image(seed: int, h: int = 4, w: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def channel_argmax(im: np.ndarray) -> np.ndarray:
    """The mask ``make_seg`` must give without CRF (first maximum on ties, as argmax)."""
    return im.argmax(axis=2).astype(np.uint8)


class CRFRecorder:
    """Stand-in dense CRF: records its arguments and labels every pixel the last class (2 for
    the 3-class segmenter)."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray, CRFConfig]] = []

    def __call__(self, im: np.ndarray, probs: np.ndarray, cfg: CRFConfig) -> np.ndarray:
        self.calls.append((np.array(im), np.array(probs), cfg))
        out = np.zeros_like(probs)
        out[-1] = 1.0
        return out


@pytest.fixture
def fake_crf(monkeypatch: pytest.MonkeyPatch) -> CRFRecorder:
    crf = CRFRecorder()
    monkeypatch.setattr(infer, "dense_crf", crf)
    # the CRF pool (crf_pool.crf_probs) looks dense_crf up in its own module at each call
    monkeypatch.setattr("ssrseg.engine.crf.dense_crf", crf)
    return crf


# ------------------------------------------------------------------ predict and CRF


def test_predict_batch_returns_masks_by_default() -> None:
    images = [image(1), image(2, 3, 3)]
    out = make_seg().predict_batch(images)
    assert [type(m) for m in out] == [np.ndarray, np.ndarray]
    for im, mask in zip(images, out, strict=True):
        np.testing.assert_array_equal(mask, channel_argmax(im))


def test_crf_argument_and_config_switch(fake_crf: CRFRecorder) -> None:
    im = image(3)
    plain = channel_argmax(im)
    assert (plain != 2).any()  # so a CRF mask (all 2) is told apart
    seg = make_seg()
    assert (seg.predict_batch([im], crf=True)[0] == 2).all()
    np.testing.assert_array_equal(seg.predict(im), plain)  # infer.crf False: no CRF
    with_cfg = make_seg(crf=True)
    assert (with_cfg.predict(im) == 2).all()  # crf=None follows infer.crf
    np.testing.assert_array_equal(with_cfg.predict(im, crf=False), plain)
    assert len(fake_crf.calls) == 2 and fake_crf.calls[0][2] is seg.crf_cfg


def test_run_crf_returns_float32_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    # dense_crf keeps the kind of its input: a float64 tensor comes back as float32 numpy
    monkeypatch.setattr(infer, "dense_crf", lambda im, p, cfg: torch.tensor([[[0.25]], [[0.75]]]))
    out = infer.run_crf(np.zeros((1, 1, 3), np.uint8), np.zeros((2, 1, 1)), CRFConfig())
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([[[0.25]], [[0.75]]], np.float32))
    monkeypatch.setattr(infer, "dense_crf", lambda im, p, cfg: p.astype(np.float64))
    assert infer.run_crf(np.zeros((1, 1, 3), np.uint8), np.ones((2, 1, 1)), CRFConfig()).dtype == (
        np.float32
    )


def test_check_crf_probes_with_valid_inputs(fake_crf: CRFRecorder) -> None:
    """The probe must be a valid CRF input (uint8 image, float32 probabilities that sum to 1
    per pixel, sizes that agree) run with the configuration that will be used."""
    infer.check_crf()
    own = CRFConfig(iterations=1)
    infer.check_crf(own)
    (im, probs, cfg), (_, _, own_seen) = fake_crf.calls
    assert im.dtype == np.uint8 and im.shape == (2, 2, 3)
    assert probs.dtype == np.float32 and probs.shape[1:] == im.shape[:2]
    np.testing.assert_allclose(probs.sum(axis=0), 1.0)
    assert cfg == CRFConfig() and own_seen is own


# ------------------------------------------------------------------ evaluate_dataset


class ToyData:
    """A SegDataset stand-in: ``items`` are samples or the BadInputError their load raises."""

    def __init__(self, items: list[Sample | BadInputError], named: bool = True) -> None:
        self.items = items
        self.ids = [getattr(it, "image_id", "?") for it in items]
        if named:
            self.name, self.split = "toy", "val"

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        item = self.items[index]
        if isinstance(item, BadInputError):
            raise item
        return item


def sample(image_id: str, seed: int) -> Sample:
    im = image(seed)
    mask = np.random.default_rng(seed + 100).integers(0, 3, im.shape[:2]).astype(np.uint8)
    mask[0, 0] = 255
    return Sample(image_id, im, (), mask, f"{image_id}.jpg")


def toy_data(**kw: Any) -> ToyData:
    bad = BadInputError("b.jpg", "broken", image_id="b")
    return ToyData([sample("a", 1), bad, sample("c", 3)], **kw)


class Guard:
    def __init__(self) -> None:
        self.ids: list[str] = []

    @contextlib.contextmanager
    def __call__(self, image_id: str) -> Iterator[None]:
        self.ids.append(image_id)
        yield


def no_check(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    checked: list[Any] = []
    monkeypatch.setattr(infer, "check_crf", checked.append)
    return checked


def test_evaluate_without_crf_mode(
    fake_crf: CRFRecorder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    checked = no_check(monkeypatch)
    data, log, guard = toy_data(), SkipLog(), Guard()
    # infer.crf is on, but the False mode scores the plain forward
    seg = make_seg(crf=True)
    out = infer.evaluate_dataset(
        seg,
        data,
        (False,),
        skip_log=log,
        indices=[2, 1, 0],
        progress=False,
        pred_dir=tmp_path,
        guard=guard,
    )
    assert checked == [] and fake_crf.calls == []
    assert log.skipped == [("b", "b.jpg: broken")]
    assert guard.ids == ["c", "a"]  # the given order, the bad item skipped before its guard
    expected = ConfusionMatrix(3)
    for item in (data.items[2], data.items[0]):
        assert isinstance(item, Sample) and item.mask is not None
        expected.update(channel_argmax(item.image), item.mask)
        png = Image.open(tmp_path / f"{item.image_id}.png")
        np.testing.assert_array_equal(np.asarray(png), channel_argmax(item.image))
        assert png.getpalette()[:6] == PALETTE[:2].reshape(-1).tolist()  # type: ignore[index]
    assert list(out) == [False]
    np.testing.assert_array_equal(out[False].hist, expected.hist)


def test_evaluate_crf_mode_only(
    fake_crf: CRFRecorder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    checked = no_check(monkeypatch)
    data, guard = toy_data(), Guard()
    seg = make_seg()
    out = infer.evaluate_dataset(
        seg, data, (True,), progress=False, pred_dir=tmp_path, guard=guard
    )  # no skip log given: the bad item goes to a new one
    assert checked == [seg.crf_cfg]
    # each image is guarded for its forward and again for scoring its CRF mask
    assert guard.ids == ["a", "a", "c", "c"]
    assert [c[2] for c in fake_crf.calls] == [seg.crf_cfg] * 2
    for (im, _, _), item in zip(fake_crf.calls, (data.items[0], data.items[2]), strict=True):
        assert isinstance(item, Sample)
        np.testing.assert_array_equal(im, item.image)
        # with one mode the CRF masks are the predictions: no crf/ subfolder
        assert (np.asarray(Image.open(tmp_path / f"{item.image_id}.png")) == 2).all()
    assert not (tmp_path / "crf").exists()
    hist = out[True].hist
    assert list(out) == [True]
    # 2 images of 20 pixels, one ignored pixel each, all predicted class 2
    assert hist.sum() == 38 and hist[:, 2].sum() == 38


def test_evaluate_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    no_check(monkeypatch)
    no_mode = r"^at least one CRF mode \(False and/or True\) is needed$"
    with pytest.raises(ValueError, match=no_mode):
        infer.evaluate_dataset(make_seg(), toy_data(), ())
    unlabelled = ToyData([Sample("u", image(4), (), None, "u.jpg")])
    no_masks = r"^u\.jpg: this split has no ground-truth masks to score$"
    with pytest.raises(ValueError, match=no_masks):
        infer.evaluate_dataset(make_seg(), unlabelled, progress=False)


def test_evaluate_shows_progress_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    infer.evaluate_dataset(make_seg(), toy_data())
    assert "evaluate toy val: " in capsys.readouterr().err
    # a dataset without name / split still gets a progress label
    infer.evaluate_dataset(make_seg(), toy_data(named=False))
    assert "evaluate: " in capsys.readouterr().err
