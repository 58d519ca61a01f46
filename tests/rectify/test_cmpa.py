"""CMPA: hand-computed prototype losses, pooling, temperature and prototype refresh."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from ssrseg.config import load_config
from ssrseg.rectify.cmpa import (
    CMPA,
    FeatureBank,
    PrototypeAccumulator,
    cluster_prototypes,
    kmeans,
    masked_average_pool,
    match_clusters,
    nearest_centroid,
    projection_head,
    prototype_loss,
    prototype_store,
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


def test_unknown_prototype_mode_is_rejected_clearly() -> None:
    with pytest.raises(ValueError, match=r"class_mean.*kmeans"):
        _cmpa(prototypes="spectral")
    # the module checks too (configs built in code bypass the loader's checks)
    cfg = dataclasses.replace(load_config(None, []).cmpa, prototypes="spectral")
    with pytest.raises(ValueError, match=r"class_mean.*kmeans"):
        CMPA(cfg, num_classes=3)


# -- the paper's K-means variant ----------------------------------------------------------------


def _blobs() -> tuple[torch.Tensor, torch.Tensor]:
    # three tight, well separated groups of 5 points around (10,0), (0,10), (-10,-10)
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    truth = torch.arange(3).repeat_interleave(5)
    return centres[truth] + 0.1 * torch.randn(15, 2, generator=g), truth


def test_kmeans_recovers_separable_groups() -> None:
    points, truth = _blobs()
    for seed in range(5):  # any k-means++ start finds the partition
        centroids, labels, filled = kmeans(points, 3, 20, seed)
        assert filled.all()
        # same partition up to a renaming of the clusters
        pairs = set(zip(truth.tolist(), labels.tolist(), strict=True))
        assert len(pairs) == 3 and len({b for _, b in pairs}) == 3
        for t, lab in pairs:
            assert torch.allclose(centroids[lab], points[truth == t].mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="at least k=3"):
        kmeans(points[:2], 3, 5, 0)


def test_kmeans_duplicates_leave_empty_clusters_marked() -> None:
    # two distinct points for K = 3: at most two clusters get points; the third is not filled
    points = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    centroids, labels, filled = kmeans(points, 3, 10, 0)
    assert int(filled.sum()) == 2 and labels[0] == labels[1] != labels[2]
    assert centroids[labels[2]].tolist() == [1.0, 1.0]
    # an unfilled cluster is never the nearest one
    far = torch.tensor([[100.0, 100.0]])
    assert bool(filled[nearest_centroid(far, centroids, filled)])


def test_match_clusters_maximises_co_occurrence() -> None:
    # greedy would take (0, 0) = 5 then (1, 1) = 0 (total 5); the best is (0,1) + (1,0) = 4 + 4
    counts = torch.tensor([[5.0, 4.0], [4.0, 0.0]])
    assert match_clusters(counts).tolist() == [1, 0]
    perm = torch.tensor([[0.0, 0.0, 7.0], [9.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    assert match_clusters(perm).tolist() == [2, 0, 1]


def test_cluster_prototypes_average_normalised_members() -> None:
    protos = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, -1.0]])
    out = cluster_prototypes(protos, torch.tensor([0, 0, 1]), 3)
    assert out.tolist() == [[0.5, 0.5], [0.0, -1.0], [0.0, 0.0]]


def _kmeans_cmpa(**over: object) -> CMPA:
    return _cmpa(prototypes="kmeans", **over)


def test_kmeans_positive_before_first_refresh_is_the_class() -> None:
    cmpa = _kmeans_cmpa()
    feats = F.normalize(torch.randn(4, 4), dim=-1)
    assert cmpa.kmeans_positives(feats, torch.tensor([2, 0, 1, 2])).tolist() == [2, 0, 1, 2]


def _bank_with_swapped_clusters() -> FeatureBank:
    # image features in three tight groups along the axes; the group near e0 holds pairs of
    # class 1, near e1 class 2, near e2 class 0 (5 pairs each)
    bank = FeatureBank(4, capacity=100)
    g = torch.Generator().manual_seed(1)
    axes = torch.eye(4)[:3]
    groups = torch.arange(3).repeat_interleave(5)
    feats = F.normalize(axes[groups] + 0.01 * torch.randn(15, 4, generator=g), dim=-1)
    bank.add(feats, torch.tensor([1, 2, 0])[groups])
    return bank


def test_kmeans_refresh_assigns_positives_by_cluster() -> None:
    torch.manual_seed(0)
    cmpa = _kmeans_cmpa()
    bank = _bank_with_swapped_clusters()
    # distinct class texts: K-means over the 3 text features puts each in its own cluster
    assert cmpa.refresh(bank, torch.randn(3, 8)) == 3
    assert int(cmpa.refreshes) == 1 and cmpa.proto_valid.tolist() == [1, 1, 1]
    assert sorted(cmpa.text_cluster.tolist()) == [0, 1, 2]
    # a feature near e0 lies in the image cluster of class-1 pairs: its positive is class 1's
    # text cluster, whatever its own class; likewise e1 -> class 2, e2 -> class 0
    probe = torch.eye(4)[:3]
    positives = cmpa.kmeans_positives(probe, torch.tensor([0, 0, 0]))
    assert positives.tolist() == cmpa.text_cluster[torch.tensor([1, 2, 0])].tolist()
    # the centroids are the groups' means
    feats, classes = bank.features()
    for c in range(3):
        k = int(nearest_centroid(feats[classes == c][:1], cmpa.visual_protos))
        assert torch.allclose(cmpa.visual_protos[k], feats[classes == c].mean(0), atol=1e-5)


def test_kmeans_refresh_needs_k_features_and_text() -> None:
    cmpa = _kmeans_cmpa()
    bank = FeatureBank(4, capacity=10)
    bank.add(torch.randn(2, 4), torch.tensor([0, 1]))
    assert cmpa.refresh(bank, torch.randn(3, 8)) == 0 and int(cmpa.refreshes) == 0
    with pytest.raises(ValueError, match="text"):
        cmpa.refresh(bank)
    with pytest.raises(TypeError, match="FeatureBank"):
        cmpa.refresh(PrototypeAccumulator(3, 4))


def test_kmeans_loss_targets_and_symmetric_term() -> None:
    torch.manual_seed(0)
    cmpa = _kmeans_cmpa()
    cmpa.refresh(_bank_with_swapped_clusters(), torch.randn(3, 8))
    cams = [torch.rand(2, 2, 2), torch.rand(1, 2, 2)]
    patch, text_emb = torch.randn(2, 4, 8), torch.randn(3, 8)
    loss, parts, feats, classes = cmpa.loss(patch, cams, [(0, 2), (1,)], (2, 2), text_emb)
    assert classes.tolist() == [0, 2, 1] and parts["proto_sym"].item() > 0.0
    loss.backward()
    assert cmpa.tsa[0].weight.grad is not None and cmpa.tsa[0].weight.grad.abs().sum() > 0
    # by hand: P_T = text-cluster means of the normalised TSA outputs (train-mode BatchNorm, as
    # in the loss); positive of each f = the text cluster matched to its nearest image centroid
    with torch.no_grad():
        text = cluster_prototypes(cmpa.project_text(text_emb), cmpa.text_cluster, 3)
        targets = cmpa.cluster_positive[nearest_centroid(feats, cmpa.visual_protos)]
        logits = feats @ F.normalize(text, dim=-1).t() / cmpa.tau
        expected = F.cross_entropy(logits, targets)
        # symmetric: text cluster t against the centroid of the image cluster matched to t
        visual = torch.zeros(3, 4)
        visual[cmpa.cluster_positive] = cmpa.visual_protos
        sym = F.cross_entropy(
            F.normalize(text, dim=-1) @ F.normalize(visual, dim=-1).t() / cmpa.tau,
            torch.arange(3),
        )
    assert parts["proto"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["proto_sym"].item() == pytest.approx(sym.item(), rel=1e-5)


def test_kmeans_state_round_trips_through_state_dict() -> None:
    torch.manual_seed(0)
    cmpa = _kmeans_cmpa()
    cmpa.refresh(_bank_with_swapped_clusters(), torch.randn(3, 8))
    state = cmpa.state_dict()
    assert {"text_cluster", "cluster_positive", "refreshes"} <= set(state)
    other = _kmeans_cmpa()
    other.load_state_dict(state)
    probe = F.normalize(torch.randn(6, 4), dim=-1)
    classes = torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.equal(
        other.kmeans_positives(probe, classes), cmpa.kmeans_positives(probe, classes)
    )
    assert "text_cluster" not in _cmpa().state_dict()  # class_mean checkpoints are unchanged


def test_feature_bank_ring_buffer_and_state() -> None:
    bank = FeatureBank(1, capacity=3)
    bank.add(torch.tensor([[1.0], [2.0]]), torch.tensor([0, 1]))
    bank.add(torch.tensor([[3.0], [4.0]]), torch.tensor([2, 0]))  # 4 overwrites the oldest (1)
    feats, classes = bank.features()
    assert feats[:, 0].tolist() == [4.0, 2.0, 3.0] and classes.tolist() == [0, 1, 2]
    restored = FeatureBank(1, capacity=3)
    restored.load_state_dict(bank.state_dict())
    restored.add(torch.tensor([[5.0]]), torch.tensor([1]))
    bank.add(torch.tensor([[5.0]]), torch.tensor([1]))
    assert torch.equal(restored.features()[0], bank.features()[0])
    assert restored.features()[0][:, 0].tolist() == [4.0, 5.0, 3.0]
    bank.extend([{"feats": torch.tensor([[7.0]]), "classes": torch.tensor([2])}] * 2)
    assert bank.features()[0][:, 0].tolist() == [7.0, 7.0]
    bank.reset()
    assert bank.features()[0].shape == (0, 1)
    big = FeatureBank(1, capacity=2)
    big.add(torch.arange(5.0)[:, None], torch.zeros(5, dtype=torch.long))  # newest two kept
    assert sorted(big.features()[0][:, 0].tolist()) == [3.0, 4.0]


def test_prototype_store_matches_the_mode() -> None:
    assert isinstance(prototype_store(_cmpa()), PrototypeAccumulator)
    assert isinstance(prototype_store(_kmeans_cmpa()), FeatureBank)
