"""CMPA: hand-computed prototype losses, pooling, temperature and prototype refresh."""

from __future__ import annotations

import math

import pytest
import torch

from ssrseg.config import load_config
from ssrseg.rectify.cmpa import (
    CMPA,
    PrototypeAccumulator,
    masked_average_pool,
    projection_head,
    prototype_loss,
    symmetric_prototype_loss,
)


def test_prototype_loss_hand_computed() -> None:
    # f = (1,0), (0,1); P_T = (1,0), (0.6,0.8); tau = 0.5.
    # row 0 logits (2, 1.2), class 0: log(1 + e^-0.8); row 1 logits (0, 1.6), class 1:
    # log(1 + e^-1.6)
    feats = torch.tensor([[3.0, 0.0], [0.0, 0.5]])  # scales must not matter (L2-normalised)
    protos = torch.tensor([[2.0, 0.0], [0.6, 0.8]])
    loss = prototype_loss(feats, torch.tensor([0, 1]), protos, torch.tensor(0.5))
    expected = 0.5 * (math.log1p(math.exp(-0.8)) + math.log1p(math.exp(-1.6)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_prototype_loss_empty_is_zero_and_differentiable() -> None:
    protos = torch.randn(3, 4, requires_grad=True)
    loss = prototype_loss(
        torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), protos, torch.tensor(0.1)
    )
    loss.backward()
    assert loss.item() == 0.0 and protos.grad is not None


def test_symmetric_loss_uses_only_valid_prototypes() -> None:
    # text (1,0), (0,1), (1,1); visual protos valid for classes 0 and 2 only: (1,0), (0,1).
    # class 0 logits (1, 0)/tau, target 0; class 2 logits (1/sqrt2, 1/sqrt2)/tau, target 1.
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    visual = torch.tensor([[1.0, 0.0], [5.0, 5.0], [0.0, 1.0]])
    valid = torch.tensor([True, False, True])
    tau = torch.tensor(0.25)
    loss = symmetric_prototype_loss(text, visual, valid, tau)
    expected = 0.5 * (math.log1p(math.exp(-4.0)) + math.log(2.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    none = symmetric_prototype_loss(text, visual, torch.zeros(3, dtype=torch.bool), tau)
    assert none.item() == 0.0


def test_masked_average_pool_hand_example() -> None:
    # 2x2 grid, features 1..4 (d=1); CAM (1, 0, 0, 3) -> (1*1 + 3*4) / 4 = 3.25
    feats = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
    cam = torch.tensor([[[1.0, 0.0], [0.0, 3.0]], [[0.0, 1.0], [1.0, 0.0]]])
    pooled = masked_average_pool(feats, [cam], (2, 2))[0]
    assert pooled[:, 0].tolist() == pytest.approx([3.25, 2.5], rel=1e-5)


def test_heads_shape_and_plain_last_layer() -> None:
    head = projection_head(8, 6, 4, 2, plain_last=True)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    head = projection_head(8, 6, 4, 1, plain_last=False)
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU"]
    with pytest.raises(ValueError, match="num_layers"):
        projection_head(8, 6, 4, 0, plain_last=True)


def _cmpa(**over: object) -> CMPA:
    items = ["cmpa.in_dim=8", "cmpa.hidden_dim=8", "cmpa.out_dim=4"]
    items += [f"cmpa.{k}={v}" for k, v in over.items()]
    return CMPA(load_config(None, items).cmpa, num_classes=3)


def test_tau_initial_value_and_clamp() -> None:
    cmpa = _cmpa()
    assert cmpa.tau.item() == pytest.approx(0.05, rel=1e-6)
    with torch.no_grad():
        cmpa.log_tau.fill_(math.log(1e-4))
    assert cmpa.tau.item() == pytest.approx(0.01, rel=1e-6)


def test_projection_shapes() -> None:
    cmpa = _cmpa()
    assert cmpa.project_image(torch.randn(2, 5, 8)).shape == (2, 5, 4)
    assert cmpa.project_text(torch.randn(3, 8)).shape == (3, 4)


def test_loss_trains_both_heads_and_tau() -> None:
    torch.manual_seed(0)
    cmpa = _cmpa()
    cams = [torch.rand(2, 2, 2), torch.rand(1, 2, 2)]
    # the symmetric term needs >= 2 visual prototypes to be non-zero
    acc = PrototypeAccumulator(3, 4)
    acc.add(torch.randn(2, 4), torch.tensor([0, 1]))
    assert cmpa.refresh(acc) == 2
    loss, parts, feats, classes = cmpa.loss(
        torch.randn(2, 4, 8), cams, [(0, 2), (1,)], (2, 2), torch.randn(3, 8)
    )
    assert set(parts) == {"proto", "proto_sym"} and parts["proto_sym"].item() > 0.0
    assert feats.shape == (3, 4) and classes.tolist() == [0, 2, 1]
    loss.backward()
    assert cmpa.isa[0].weight.grad is not None and cmpa.isa[0].weight.grad.abs().sum() > 0
    assert cmpa.tsa[0].weight.grad is not None and cmpa.tsa[0].weight.grad.abs().sum() > 0
    assert cmpa.log_tau.grad is not None and cmpa.log_tau.grad.abs() > 0


def test_cams_must_match_labels() -> None:
    cmpa = _cmpa()
    with pytest.raises(ValueError, match="2 CAMs for 1 labels"):
        cmpa.loss(torch.randn(1, 4, 8), [torch.rand(2, 2, 2)], [(0,)], (2, 2), torch.randn(3, 8))


def test_accumulate_and_refresh_class_means() -> None:
    cmpa = _cmpa(symmetric=False)
    acc = PrototypeAccumulator(3, 4)
    feats = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    acc.add(feats, torch.tensor([0, 0, 2]))
    assert cmpa.refresh(acc) == 2
    assert cmpa.visual_protos[0].tolist() == [0.5, 0.5, 0.0, 0.0]
    assert cmpa.visual_protos[2].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert cmpa.proto_valid.tolist() == [1, 0, 1]
    acc.reset()
    assert acc.count.sum().item() == 0.0
    # a class not seen since the last refresh keeps its prototype
    acc.add(torch.tensor([[0, 0, 0, 1.0]]), torch.tensor([2]))
    restored = PrototypeAccumulator(3, 4)
    restored.load_state_dict(acc.state_dict())
    cmpa.refresh(restored)
    assert cmpa.visual_protos[0].tolist() == [0.5, 0.5, 0.0, 0.0]
    assert cmpa.visual_protos[2].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_kmeans_variant_is_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="class_mean"):
        _cmpa(prototypes="kmeans")
