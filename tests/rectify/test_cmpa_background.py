"""CMPA's optional background term (``cmpa.background_term``): hand-computed values, the
gradient path to the background prompts, and the paper's loss unchanged when it is off."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from ssrseg.config import ConfigError, load_config
from ssrseg.rectify.cmpa import (
    CMPA,
    background_prototype_loss,
    background_weights,
    masked_average_pool,
    nearest_prompt,
    prototype_loss,
    symmetric_prototype_loss,
)

# one class prototype (0, 1), background prototypes (1, 0) and (0.6, 0.8), tau 0.5:
# a feature along (1, 0) has logits (0, 2, 1.2)
CLASS = torch.tensor([[0.0, 3.0]])
BG = torch.tensor([[2.0, 0.0], [0.6, 0.8]])
TAU = torch.tensor(0.5)


def test_background_loss_with_a_target_hand_computed() -> None:
    feats = torch.tensor([[4.0, 0.0], [0.0, 1.0]])  # logits (0, 2, 1.2) and (2, 0, 1.6)
    loss = background_prototype_loss(feats, CLASS, BG, TAU, torch.tensor([0, 1]))
    row0 = math.log(1 + math.exp(2) + math.exp(1.2)) - 2.0
    row1 = math.log(math.exp(2) + 1 + math.exp(1.6)) - 1.6
    assert loss.item() == pytest.approx(0.5 * (row0 + row1), rel=1e-6)


def test_background_loss_any_prompt_hand_computed() -> None:
    # multi-positive: -log((e^2 + e^1.2) / (1 + e^2 + e^1.2)) = log(1 + 1 / (e^2 + e^1.2))
    loss = background_prototype_loss(torch.tensor([[1.0, 0.0]]), CLASS, BG, TAU)
    # float32: a difference of two log-sum-exps
    assert loss.item() == pytest.approx(math.log1p(1 / (math.exp(2) + math.exp(1.2))), rel=1e-5)
    # a feature on the class prototype: log(1 + e^2 / (e^0 + e^1.6))
    loss = background_prototype_loss(torch.tensor([[0.0, 1.0]]), CLASS, BG, TAU)
    assert loss.item() == pytest.approx(math.log1p(math.exp(2) / (1 + math.exp(1.6))), rel=1e-5)


def test_background_loss_empty_is_zero_and_differentiable() -> None:
    bg = BG.clone().requires_grad_(True)
    loss = background_prototype_loss(torch.zeros(0, 2), CLASS, bg, TAU)
    loss.backward()
    assert loss.item() == 0.0 and bg.grad is not None


def test_background_weights_are_one_minus_max_cam() -> None:
    cam = torch.tensor([[[0.2, 1.0], [0.0, 1.5]], [[0.5, 0.1], [0.0, -1.0]]])
    (w,) = background_weights([cam])
    # max over classes (0.5, 1.0, 0.0, 1.5 -> clamped 1.0)
    assert w.shape == (1, 2, 2)
    assert w.flatten().tolist() == pytest.approx([0.5, 0.0, 1.0, 0.0])
    (empty,) = background_weights([torch.zeros(0, 3, 2)])
    assert torch.equal(empty, torch.ones(1, 3, 2))


def test_nearest_prompt_is_the_highest_cosine() -> None:
    feats = torch.tensor([[5.0, 0.1], [0.5, 0.6], [-1.0, 0.0]])
    assert nearest_prompt(feats, BG).tolist() == [0, 1, 1]  # (-1,0): cos -1 vs -0.6


def _cmpa(**over: object) -> CMPA:
    items = ["cmpa.in_dim=8", "cmpa.hidden_dim=8", "cmpa.out_dim=4"]
    items += [f"cmpa.{k}={v}" for k, v in over.items()]
    return CMPA(load_config(None, items).cmpa, num_classes=3)


def _batch() -> tuple[torch.Tensor, list[torch.Tensor], list[tuple[int, ...]], torch.Tensor]:
    torch.manual_seed(0)
    patch = torch.randn(2, 4, 8)
    cams = [torch.rand(2, 2, 2), torch.rand(1, 2, 2)]
    return patch, cams, [(0, 2), (1,)], torch.randn(3, 8)


def test_option_off_is_the_old_loss_bit_identical() -> None:
    patch, cams, labels, text = _batch()
    cmpa = _cmpa()
    with torch.no_grad():
        cmpa.visual_protos.copy_(torch.randn(3, 4))
        cmpa.proto_valid.fill_(1)
    bg = torch.randn(2, 8, requires_grad=True)
    off = copy.deepcopy(cmpa)
    loss, parts, _, _ = off.loss(patch, cams, labels, (2, 2), text, bg)
    # the paper's loss written out from the pieces (what cmpa.loss computed before the option)
    ref = copy.deepcopy(cmpa)
    feats, classes = ref.class_features(patch, cams, labels, (2, 2))
    protos = ref.project_text(text)
    expected = prototype_loss(feats, classes, protos, ref.tau) + symmetric_prototype_loss(
        protos, ref.visual_protos, ref.proto_valid.bool(), ref.tau
    )
    assert torch.equal(loss, expected) and set(parts) == {"proto", "proto_sym"}
    loss.backward()
    assert bg.grad is None  # the background prompts are not used
    # nor is the BatchNorm state touched differently
    for a, b in zip(off.buffers(), ref.buffers(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["raw_nearest", "any"])
def test_option_on_adds_the_background_term(mode: str) -> None:
    patch, cams, labels, text = _batch()
    bg = torch.randn(2, 8)
    cmpa = _cmpa(background_term=mode, symmetric="false").eval()  # eval: batch-independent BN
    loss, parts, _, _ = cmpa.loss(patch, cams, labels, (2, 2), text, bg)
    # independent recomputation: L_proto + CE of the 1 - max CAM pooled ISA features
    proj = cmpa.project_image(patch)
    feats, classes = cmpa.class_features(patch, cams, labels, (2, 2))
    protos = cmpa.project_text(torch.cat([text, bg]))
    main = prototype_loss(feats, classes, protos[:3], cmpa.tau)
    bg_feats = []
    raw_feats = []
    for b, cam in enumerate(cams):
        w = (1 - cam.amax(dim=0)).flatten()
        bg_feats.append((w[:, None] * proj[b]).sum(0) / (w.sum() + 1e-6))
        raw_feats.append((w[:, None] * patch[b]).sum(0) / (w.sum() + 1e-6))
    logits = F.normalize(torch.stack(bg_feats), dim=-1) @ F.normalize(protos, dim=-1).t()
    logits = logits / cmpa.tau
    if mode == "raw_nearest":
        sims = F.normalize(torch.stack(raw_feats), dim=-1) @ F.normalize(bg, dim=-1).t()
        term = F.cross_entropy(logits, 3 + sims.argmax(dim=1))
    else:
        term = (logits.logsumexp(1) - logits[:, 3:].logsumexp(1)).mean()
    assert parts["proto_bg"].item() == pytest.approx(term.item(), rel=1e-5)
    assert loss.item() == pytest.approx((main + term).item(), rel=1e-5)


def test_gradient_reaches_the_background_prompts() -> None:
    patch, cams, labels, text = _batch()
    bg = torch.randn(2, 8, requires_grad=True)
    cmpa = _cmpa(background_term="raw_nearest")
    loss, parts, _, _ = cmpa.loss(patch, cams, labels, (2, 2), text, bg)
    loss.backward()
    assert parts["proto_bg"].item() > 0.0
    assert bg.grad is not None and bg.grad.abs().sum() > 0  # through TSA: bg prototypes move
    first = cmpa.tsa[0]
    assert isinstance(first, torch.nn.Linear) and first.weight.grad is not None
    assert first.weight.grad.abs().sum() > 0


def test_background_term_works_with_kmeans_prototypes() -> None:
    patch, cams, labels, text = _batch()
    cmpa = _cmpa(background_term="any", prototypes="kmeans")
    loss, parts, _, _ = cmpa.loss(patch, cams, labels, (2, 2), text, torch.randn(2, 8))
    assert torch.isfinite(loss) and parts["proto_bg"].item() > 0.0


def test_background_term_needs_background_prompts_and_a_valid_mode() -> None:
    patch, cams, labels, text = _batch()
    cmpa = _cmpa(background_term="any")
    with pytest.raises(ValueError, match="background prompts"):
        cmpa.loss(patch, cams, labels, (2, 2), text)
    with pytest.raises(ValueError, match="background prompts"):
        cmpa.loss(patch, cams, labels, (2, 2), text, torch.zeros(0, 8))
    with pytest.raises(ConfigError, match="background_term"):
        load_config(None, ["cmpa.background_term=nearest"])


def test_background_weights_pool_like_the_module() -> None:
    # the pooled background of a 2x2 image with one class CAM (1, 0.5, 0, 0):
    # weights (0, 0.5, 1, 1), features 1..4 -> (0.5*2 + 3 + 4) / 2.5 = 3.2
    feats = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
    cam = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]])
    pooled = masked_average_pool(feats, background_weights([cam]), (2, 2))[0]
    assert pooled.item() == pytest.approx(3.2, rel=1e-5)
