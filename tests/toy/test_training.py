"""Pieces of the toy backbones' training: losses, crops, schedule, and a two-step smoke run."""

from __future__ import annotations

import math

import pytest
import torch

from ssrseg.backbones.toy_shapes import toy_dino_config
from ssrseg.backbones.vit import VisionTransformer
from ssrseg.toy.common import Budget, cosine_lr
from ssrseg.toy.train_clip import ClipTrainArgs, contrastive_loss, train_clip
from ssrseg.toy.train_dino import (
    DinoHead,
    DinoNet,
    block_masks,
    dino_loss,
    masked_patch_loss,
    masked_tokens,
    random_crops,
)


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


def test_clip_corpus_is_the_train_split_or_a_separate_weakened_stream() -> None:
    from dataclasses import replace

    from ssrseg.data.toy import ToyWorld, WorldConfig, weakened_config
    from ssrseg.toy.train_clip import corpus_batches

    def first_captions(bias_scale: float) -> list[str]:
        args = ClipTrainArgs(out="unused", seed=5, batch_size=3, workers=0, bias_scale=bias_scale)
        return next(corpus_batches(args))[1]

    # bias_scale 1 keeps the committed weights' stream: the scored world's `train` split.
    assert first_captions(1.0) == [ToyWorld("train", 5)[i].caption for i in range(3)]
    # Below 1, scenes of the weakened world under the split name `corpus` (never scored).
    corpus = ToyWorld("corpus", 5, weakened_config(0.25))
    assert first_captions(0.25) == [corpus[i].caption for i in range(3)]
    # Captions without the background also come from the corpus stream, biases at full strength.
    args = ClipTrainArgs(out="unused", seed=5, batch_size=3, workers=0, caption_background=0.0)
    plain = ToyWorld("corpus", 5, replace(WorldConfig(), background_words=0.0))
    assert next(corpus_batches(args))[1] == [plain[i].caption for i in range(3)]


def test_image_embedding_pools_patch_mean_or_class_token() -> None:
    from ssrseg.backbones.clip import CLIP
    from ssrseg.backbones.toy_shapes import toy_clip_config, toy_tokenizer
    from ssrseg.toy.common import image_embedding

    torch.manual_seed(0)
    clip = CLIP(toy_clip_config(toy_tokenizer(), image_size=32, width=32, layers=1, heads=2,
                                embed_dim=16, text_layers=1))  # fmt: skip
    x = torch.rand(2, 3, 32, 32)
    # The class token through ln_post and proj is CLIP's own image embedding.
    cls = image_embedding(clip.visual, x, "cls")
    assert torch.allclose(cls, clip.encode_image(clip.visual.normalize(x)))
    # The patch mean is what SSR's Grad-CAM differentiates: mean of the per-patch embeddings.
    assert torch.allclose(
        image_embedding(clip.visual, x), clip.visual(clip.visual.normalize(x)).mean(1)
    )
    with pytest.raises(ValueError, match="pool"):
        image_embedding(clip.visual, x, "max")


def _tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(toy_dino_config(image_size=32, width=16, layers=2, heads=2))


def test_masked_tokens_without_mask_is_the_plain_forward() -> None:
    vit = _tiny_vit()
    x = torch.rand(2, 3, 32, 32)
    plain = vit.head(vit.forward_intermediates(vit.normalize(x)).last)
    assert torch.allclose(masked_tokens(vit, x, None, torch.zeros(16)), plain, atol=1e-6)
    # a masked patch sees the mask token instead of its pixels: changing those pixels changes
    # nothing, changing an unmasked patch does
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 0] = True
    token = torch.randn(16)
    y = x.clone()
    y[:, :, :8, :8] = torch.rand(2, 3, 8, 8)  # patch 0
    assert torch.allclose(masked_tokens(vit, x, mask, token), masked_tokens(vit, y, mask, token))
    y[:, :, 8:16, 8:16] = 0.0  # patch 5, unmasked
    assert not torch.allclose(
        masked_tokens(vit, x, mask, token), masked_tokens(vit, y, mask, token)
    )


def test_block_masks_cover_the_drawn_share_in_blocks() -> None:
    gen = torch.Generator().manual_seed(0)
    masks = block_masks(64, (12, 12), 1.0, (0.3, 0.3), gen)
    share = masks.float().mean(dim=1)
    # every image reaches 30% of 144 patches (43), overshooting by at most one block
    assert bool((share >= 43 / 144).all()) and float(share.mean()) < 0.5
    none = block_masks(8, (12, 12), 0.0, (0.3, 0.5), gen)
    assert not none.any()
    half = block_masks(400, (4, 4), 0.5, (0.5, 0.5), gen).any(dim=1).float().mean()
    assert 0.4 < float(half) < 0.6


def test_masked_patch_loss_hand_values() -> None:
    # teacher == student with equal temperatures: the loss is the teacher's entropy over the
    # masked patches only (image 1 has none and does not count)
    teacher = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[5.0, 0.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, False], [False, False]])
    loss = masked_patch_loss(teacher, teacher, torch.zeros(1, 1, 2), mask, 1.0, 1.0)
    p = torch.tensor([2.0, 0.0]).softmax(0)
    assert loss.item() == pytest.approx(float(-(p * p.log()).sum()), rel=1e-6)
    empty = masked_patch_loss(teacher, teacher, torch.zeros(1, 1, 2), mask & False, 1.0, 1.0)
    assert empty.item() == 0.0


def test_dino_net_pools_class_token_or_patch_mean() -> None:
    vit = _tiny_vit()
    x = torch.rand(2, 3, 32, 32)
    tokens = masked_tokens(vit, x, None, torch.zeros(16))
    for pool, feat in (("cls", tokens[:, 0]), ("mean", tokens[:, 1:].mean(dim=1))):
        net = DinoNet(vit, DinoHead(16, 8, hidden=8, bottleneck=4), pool)
        image, patches, final = net.forward_tokens(x, None)
        assert torch.allclose(image, net.head(feat), atol=1e-6) and torch.equal(final, tokens)
        assert patches is not None and patches.shape == (2, 16, 8)
    with pytest.raises(ValueError, match="pool"):
        DinoNet(vit, DinoHead(16, 8), "max")


def test_attention_grouping_wrapper_matches_the_pure_function() -> None:
    from ssrseg.toy.diagnostics import (
        attention_grouping_by_layer,
        patch_labels,
        same_label_attention,
    )

    vit = _tiny_vit()
    images = torch.rand(3, 3, 32, 32)
    masks = torch.zeros(3, 32, 32, dtype=torch.long)
    masks[:, 8:24, 8:16] = 2
    by_layer = attention_grouping_by_layer(vit, images, masks, batch_size=2)
    out = vit.forward_intermediates(vit.normalize(images), attn_layers=[1])
    expected = same_label_attention(out.attentions[1], patch_labels(masks, out.grid))
    assert set(by_layer) == {0, 1} and by_layer[1] == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "losses",
    [{}, {"dino_weight": 1.0, "mim_weight": 1.0, "pool": "mean"}],
    ids=["default-denoise-only", "dino-ibot-denoise"],
)
def test_train_dino_smoke(tmp_path, losses) -> None:  # type: ignore[no-untyped-def]
    from ssrseg.backbones.weights import load_dino
    from ssrseg.toy.train_dino import DinoTrainArgs, train_dino

    out = tmp_path / "dino.safetensors"
    args = DinoTrainArgs(
        out=str(out), steps=2, minutes=None, batch_size=2, width=16, layers=2, heads=2,
        global_size=32, local_size=16, local_crops=1, out_dim=16, workers=0, eval_images=2,
        grouping_images=2, eval_every=1, **losses,
    )  # fmt: skip
    record = train_dino(args)
    assert record["steps"] == 2 and len(record["grouping_history"]) == 2
    assert set(record["attention"]["same_label_mass_by_block"]) == {"0", "1"}
    assert load_dino(str(out)).cfg.width == 16


def test_patch_colour_noise_is_constant_per_patch_and_patch_pixels_order() -> None:
    from ssrseg.toy.train_dino import patch_colour_noise, patch_pixels

    images = torch.full((1, 3, 16, 16), 0.5)
    noisy = patch_colour_noise(images, 8, 0.1, torch.Generator().manual_seed(0))
    diff = noisy - images
    for r in (0, 8):
        for c in (0, 8):
            cell = diff[0, :, r : r + 8, c : c + 8]
            assert torch.allclose(cell, cell[:, :1, :1].expand_as(cell))  # one offset per cell
    assert not torch.allclose(diff[0, :, 0, 0], diff[0, :, 0, 8])
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    pix = patch_pixels(x, 2)
    # token 1 = top-right 2x2 cell; channels first, then rows, then columns
    assert pix.shape == (2, 4, 12)
    assert pix[0, 1, :4].tolist() == [2.0, 3.0, 6.0, 7.0]


def test_train_dino_refuses_all_zero_weights(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ssrseg.toy.train_dino import DinoTrainArgs, train_dino

    args = DinoTrainArgs(out=str(tmp_path / "d.safetensors"), steps=1, denoise_weight=0.0)
    with pytest.raises(ValueError, match="all loss weights are 0"):
        train_dino(args)
