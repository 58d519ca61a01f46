"""Pieces of the toy backbones' training: losses, crops, schedule, and a two-step smoke run."""

from __future__ import annotations

import math

import pytest
import torch

from ssrseg.toy.common import Budget, cosine_lr
from ssrseg.toy.train_clip import ClipTrainArgs, contrastive_loss, train_clip
from ssrseg.toy.train_dino import dino_loss, random_crops


def test_contrastive_loss_hand_values() -> None:
    emb = torch.eye(3)
    # Perfectly matched pairs with a large scale: loss -> 0.
    assert contrastive_loss(emb, emb, torch.tensor(50.0), ["a", "b", "c"]).item() < 1e-6
    # Scale 0: uniform logits, every row's loss is log(B).
    loss = contrastive_loss(emb, emb, torch.tensor(0.0), ["a", "b", "c"])
    assert loss.item() == pytest.approx(math.log(3))
    # Two identical captions share their positives: the targets of rows 0 and 1 are {0, 1}/2.
    logits_equal = contrastive_loss(emb, emb, torch.tensor(0.0), ["a", "a", "c"])
    assert logits_equal.item() == pytest.approx(math.log(3))


def test_dino_loss_skips_a_crop_paired_with_itself() -> None:
    k, b = 5, 2
    center = torch.zeros(1, k)
    teacher = torch.randn(2 * b, k)
    # Student view 0 equals teacher view 1 and vice versa; its own-view pairs are not scored,
    # so with equal temperatures the loss is the entropy of the teacher's softmax.
    student = torch.cat([teacher[b:], teacher[:b]])
    loss = dino_loss(student, teacher, center, 2, 0.5, 0.5)
    p = (teacher / 0.5).softmax(-1)
    entropy = -(p * p.log()).sum(-1).mean()
    assert loss.item() == pytest.approx(entropy.item(), rel=1e-5)


def test_random_crops_shape_and_range() -> None:
    images = torch.rand(3, 3, 32, 32)
    out = random_crops(images, 16, (0.2, 0.5), torch.Generator().manual_seed(0))
    assert out.shape == (3, 3, 16, 16)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    again = random_crops(images, 16, (0.2, 0.5), torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_cosine_lr_and_budget() -> None:
    assert cosine_lr(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 1.0, 10) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 1.0, 10) == pytest.approx(0.0)
    assert cosine_lr(50, None, 1.0, 10) == 1.0
    budget = Budget(steps=3, minutes=None)
    assert budget.total(0) == 3 and not budget.done(2) and budget.done(3)
    with pytest.raises(ValueError):
        Budget(None, None)


@pytest.mark.slow
def test_train_clip_smoke_writes_loadable_weights(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ssrseg.backbones.weights import load_clip

    out = tmp_path / "clip.safetensors"
    args = ClipTrainArgs(
        out=str(out), steps=2, minutes=None, batch_size=4, width=32, layers=1, heads=2,
        text_layers=1, image_size=32, patch_size=8, workers=0, eval_images=4, small_sample=4,
    )  # fmt: skip
    record = train_clip(args)
    assert record["steps"] == 2 and record["images_seen"] == 8
    clip, tokenizer = load_clip(str(out))
    assert clip.cfg.vision.patch_size == 8 and clip.cfg.embed_dim == 32
    assert tokenizer(["a photo of a boat."]).shape[1] == tokenizer.context_length
