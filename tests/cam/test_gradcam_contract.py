"""Grad-CAM contracts the mutation run found untested (docs/mutation/cam.gradcam.md): shallow
models (1, 2, 4 blocks), the attention defaults, error messages, empty label lists, the
backward strategy, the float32 copy of a half block, and devices of the padded labels."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from test_gradcam import _embs
from torch import Tensor

from ssrseg.backbones.clip import CLIP
from ssrseg.backbones.vit import Block
from ssrseg.cam.gradcam import (
    _score_grads,
    embedding_cams,
    float32_block,
    gradcam,
    pad_labels,
)


def _images(b: int = 2) -> Tensor:
    return torch.rand(b, 3, 16, 24, generator=torch.Generator().manual_seed(7))  # 2 x 3 grid


def test_pad_labels_of_no_images_and_on_the_requested_device() -> None:
    ids, valid = pad_labels([], torch.device("cpu"))
    assert ids.shape == (0, 0) and valid.shape == (0, 0)
    ids, valid = pad_labels([[], []], torch.device("cpu"))
    assert ids.shape == (2, 0) and valid.shape == (2, 0)
    # both outputs go to the given device (meta: no data, only where the tensor lives)
    ids, valid = pad_labels([[3, 1], [2]], torch.device("meta"))
    assert ids.device.type == "meta" and valid.device.type == "meta"
    assert ids.dtype == torch.long and valid.dtype == torch.bool


def test_errors_name_the_problem(clip: CLIP) -> None:
    cls_emb, bg = _embs(1, c=4, g=2)
    with pytest.raises(ValueError) as info:
        gradcam(clip.visual, _images(1), [[0], [1]], cls_emb, bg, 10.0)
    assert str(info.value) == "2 label lists for 1 images"
    with pytest.raises(ValueError) as info:
        gradcam(clip.visual, _images(), [[0], [1]], cls_emb, bg, 10.0, target="tokens")
    assert str(info.value) == ("target must be one of block_input, patch_embeddings, got 'tokens'")


@pytest.mark.parametrize("layers", [1, 2, 4])
@pytest.mark.parametrize("target", ["block_input", "patch_embeddings"])
def test_the_last_block_reads_the_previous_blocks_output(
    make_clip: Callable[..., CLIP], layers: int, target: str
) -> None:
    """Shallow and deeper models: the CAM's forward equals the plain forward, one token list
    per block (the last one the last block's output), the grid right."""
    clip = make_clip(layers=layers)
    cls_emb, bg = _embs(2, c=4, g=2)
    images = _images()
    res = gradcam(clip.visual, images, [[0, 2], [1]], cls_emb, bg, 10.0, target=target)
    plain = clip.visual.forward_intermediates(clip.visual.normalize(images))
    assert len(res.vit.tokens) == layers and res.grid == (2, 3)
    for got, want in zip(res.vit.tokens, plain.tokens, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert [tuple(c.shape) for c in res.cams] == [(2, 2, 3), (1, 2, 3)]


def test_default_attention_is_the_last_eight_blocks(make_clip: Callable[..., CLIP]) -> None:
    clip = make_clip(layers=10)
    cls_emb, bg = _embs(3, c=4, g=2)
    res = gradcam(clip.visual, _images(1), [[1]], cls_emb, bg, 10.0)
    assert sorted(res.vit.attentions) == list(range(2, 10))


@pytest.mark.parametrize("target", ["block_input", "patch_embeddings"])
def test_attn_last_one_is_the_last_block_and_zero_is_none(
    make_clip: Callable[..., CLIP], target: str
) -> None:
    clip = make_clip(layers=3)
    cls_emb, bg = _embs(4, c=4, g=2)
    one = gradcam(clip.visual, _images(), [[0], [3]], cls_emb, bg, 10.0, attn_last=1, target=target)
    assert sorted(one.vit.attentions) == [2] and one.vit.attentions[2].shape == (2, 6, 6)
    none = gradcam(
        clip.visual, _images(), [[0], [3]], cls_emb, bg, 10.0, attn_last=0, target=target
    )
    assert none.vit.attentions == {}


@pytest.mark.parametrize("target", ["block_input", "patch_embeddings"])
def test_images_without_labels_give_empty_cams(clip: CLIP, target: str) -> None:
    cls_emb, bg = _embs(5, c=4, g=2)
    res = gradcam(clip.visual, _images(), [[], []], cls_emb, bg, 10.0, target=target)
    assert [tuple(c.shape) for c in res.cams] == [(0, 2, 3), (0, 2, 3)]
    assert [tuple(s.shape) for s in res.scores] == [(0,), (0,)]
    h = torch.zeros(2, 7, 5)
    assert _score_grads(torch.zeros(2, 0), h, True).shape == (0, 2, 7, 5)


def _count_grad_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record each torch.autograd.grad call (whether it is one batched backward)."""
    calls: list[bool] = []
    real = torch.autograd.grad

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(bool(kwargs.get("is_grads_batched", False)))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.autograd, "grad", spy)
    return calls


@pytest.mark.parametrize("target", ["block_input", "patch_embeddings"])
def test_classes_share_one_batched_backward_by_default(
    clip: CLIP, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """K_max = 3 classes: one vectorised backward by default, three with batch_classes=False."""
    cls_emb, bg = _embs(6, c=4, g=2)
    labels = [[0, 1, 3], [2]]
    calls = _count_grad_calls(monkeypatch)
    gradcam(clip.visual, _images(), labels, cls_emb, bg, 10.0, target=target)
    assert calls == [True]
    calls.clear()
    gradcam(clip.visual, _images(), labels, cls_emb, bg, 10.0, target=target, batch_classes=False)
    assert calls == [False, False, False]
    calls.clear()
    emb = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(8))
    embedding_cams(emb, labels, cls_emb, bg, 10.0)
    assert calls == [True]


def test_a_half_block_is_copied_to_float32_and_left_as_it_was(
    make_clip: Callable[..., CLIP],
) -> None:
    clip = make_clip(layers=2)
    block = clip.visual.blocks[-1]
    assert isinstance(block, Block)
    block.half()
    f32 = float32_block(block)
    assert f32 is not block
    assert all(p.dtype == torch.float32 for p in f32.parameters())
    assert all(p.dtype == torch.float16 for p in block.parameters())  # the model is untouched
    assert float32_block(f32) is f32


def test_score_grads_keep_a_float64_graph_in_float64() -> None:
    """A float64 graph: the batched backward (one-hot grad outputs) equals the per-class loop,
    in float64."""
    gen = torch.Generator().manual_seed(9)
    h = torch.randn(2, 3, 4, dtype=torch.float64, generator=gen).requires_grad_(True)
    w = torch.randn(4, 3, dtype=torch.float64, generator=gen)

    def scores() -> Tensor:  # 2 x 3, a fresh graph for each backward strategy
        return (h.sum(dim=1) @ w).softmax(dim=1)

    batched = _score_grads(scores(), h, True)
    loop = _score_grads(scores(), h, False)
    assert batched.dtype == torch.float64 and batched.shape == (3, 2, 3, 4)
    torch.testing.assert_close(batched, loop, rtol=0, atol=1e-12)
