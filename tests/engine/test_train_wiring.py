"""The trainer's validation mIoUs equal a confusion matrix built by hand from the predictions
it is given, on exactly ``train.val_images`` images; the segmentation and pseudo-label scores
are kept apart."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
from tests_model_fakes import one_thread, tiny_config, tiny_ssr_model

from ssrseg.data.base import Sample
from ssrseg.engine.train import Trainer

__all__ = ["one_thread"]  # autouse fixture

# 16 x 16 images, patch 8: a 2 x 2 grid of 8 x 8 blocks. Predicted class per block
# (top-left, top-right, bottom-left, bottom-right), the trainer's segmentation logits and the
# labeller's pseudo labels:
SEG_BLOCKS = [(1, 0, 0, 2), (3, 3, 0, 1), (2, 2, 2, 2)]
PSEUDO_BLOCKS = [(1, 0, 0, 2), (3, 1, 0, 1), (2, 2, 2, 2)]


def _blocks(classes: tuple[int, ...]) -> np.ndarray:
    out = np.zeros((16, 16), dtype=np.uint8)
    for i, c in enumerate(classes):
        r, col = divmod(i, 2)
        out[8 * r : 8 * r + 8, 8 * col : 8 * col + 8] = c
    return out


def _masks() -> list[np.ndarray]:
    a = _blocks((1, 0, 0, 0))
    a[8:, :4] = 3  # left half of the bottom-left block: class 3 (predicted 0)
    a[8:12, 8:] = 255  # top half of the bottom-right block ignored, bottom half class 2
    a[12:, 8:] = 2
    b = _blocks((3, 1, 0, 1))
    c = _blocks((0, 0, 0, 0))  # the third image: all wrong, must not be counted
    return [a, b, c]


# Hand-built confusion matrix hist[gt, pred] of the segmentation on the first two images:
# 0->0: 64 (A top-right) + 32 (A bottom-left right half) + 64 (B bottom-left) = 160
# 1->1: 64 (A top-left) + 64 (B bottom-right) = 128; 1->3: 64 (B top-right)
# 2->2: 32 (A bottom-right, bottom half); 3->0: 32 (A bottom-left, left half); 3->3: 64 (B)
# IoU = TP / (row + column - TP): 160/192, 128/192, 32/32, 64/160 -> mean 0.725
SEG_MIOU = (160 / 192 + 128 / 192 + 1.0 + 64 / 160) / 4
# Pseudo labels differ in B's top-right block (1, right): 1->1 192, 1->3 0
# IoU: 160/192, 192/192, 1, 64/96 -> mean 0.875
PSEUDO_MIOU = (160 / 192 + 1.0 + 1.0 + 64 / 96) / 4


class _Data:
    def __init__(self) -> None:
        image = np.full((16, 16, 3), 100, dtype=np.uint8)
        self.samples = [
            Sample(f"im{i}", image, (0,), m, f"mem://{i}") for i, m in enumerate(_masks())
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


class _Queue:
    """The next image's block classes, in the order the trainer visits the images."""

    def __init__(self, blocks: list[tuple[int, ...]]) -> None:
        self.blocks = list(blocks)

    def next(self) -> tuple[int, ...]:
        return self.blocks.pop(0)


class _Labeler(nn.Module):
    def __init__(self, blocks: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.queue = _Queue(blocks)

    def forward(self, images01: Tensor, labels: Any, **_: Any) -> SimpleNamespace:
        assert images01.shape == (1, 3, 16, 16)
        return SimpleNamespace(labels=torch.from_numpy(_blocks(self.queue.next()))[None].long())


def test_validation_mious_equal_hand_built_confusion_matrices(tmp_path: Path) -> None:
    cfg = tiny_config(train__val_images=2)
    model = tiny_ssr_model(cfg, 0)
    seg_queue = _Queue(SEG_BLOCKS)

    def segment(images01: Tensor) -> Tensor:
        # one-hot logits per pixel (a resize to the image size leaves them as they are)
        assert images01.shape == (1, 3, 16, 16)
        classes = torch.from_numpy(_blocks(seg_queue.next())).long()
        return 5.0 * torch.nn.functional.one_hot(classes, 4).permute(2, 0, 1)[None].float()

    model.segment = segment  # type: ignore[method-assign]
    model.labeler = _Labeler(PSEUDO_BLOCKS)
    trainer = Trainer(cfg, model, _Data(), tmp_path, val_set=_Data(), progress=False)
    scores = trainer.validate()
    assert scores["val_miou"] == pytest.approx(SEG_MIOU, abs=1e-12)
    assert scores["pseudo_miou"] == pytest.approx(PSEUDO_MIOU, abs=1e-12)
    # exactly val_images images were scored from each split
    assert len(seg_queue.blocks) == 1 and len(model.labeler.queue.blocks) == 1


class _Recording(nn.Module):
    """The fake labeller, recording the keyword arguments of each call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.clip = inner.clip
        self.register_buffer("class_emb", inner.class_emb)
        self.calls: list[dict[str, Any]] = []

    def forward(self, images01: Tensor, labels: Any, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.inner(images01, labels, superpixels=kwargs.get("superpixels"))


def test_train_step_hands_the_batch_superpixels_to_the_labeller(tmp_path: Path) -> None:
    cfg = tiny_config(train__iterations=4, affinity__mask="none")
    model = tiny_ssr_model(cfg, 0)
    model.labeler = _Recording(model.labeler)
    trainer = Trainer(cfg, model, [], tmp_path, progress=False)
    g = torch.Generator().manual_seed(0)
    superpixels = torch.randint(0, 5, (2, 32, 32), generator=g)
    batch = {"images": torch.rand(2, 3, 32, 32, generator=g), "labels": [(0,), (1, 2)]}
    trainer.train_step({**batch, "superpixels": superpixels})
    trainer.train_step(batch)
    first, second = model.labeler.calls
    assert torch.equal(first["superpixels"], superpixels)
    assert second["superpixels"] is None


def test_train_step_hands_the_decoder_affinity_to_the_labeller(tmp_path: Path) -> None:
    """affinity.decoder_affinity (WeCLIP's RFM): the labeller gets sigmoid(F^T F) of the
    decoder's fused features of the batch's images."""
    cfg = tiny_config(train__iterations=4, affinity__mask="none", affinity__decoder_affinity=True)
    model = tiny_ssr_model(cfg, 0)
    model.labeler = _Recording(model.labeler)
    trainer = Trainer(cfg, model, [], tmp_path, progress=False)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)  # the decoder's dropout draws
    with torch.no_grad():
        visual = model.visual
        out = visual.forward_intermediates(
            visual.normalize(images), n_blocks=model.decoder.num_layers_in
        )
        fused = model.decoder(out.tokens, out.grid)[1]
        f = fused.flatten(2).transpose(1, 2)
        want = torch.sigmoid(f @ f.transpose(1, 2))
    torch.manual_seed(5)
    trainer.train_step({"images": images, "labels": [(0,), (1, 2)]})
    got = model.labeler.calls[0]["decoder_affinity"]
    assert got.shape == (2, 16, 16)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
