"""K-means CMPA: the image-cluster -> text-cluster mapping on a fixture whose mapping is a
3-cycle, so a mapping applied the wrong way round (its inverse) cannot pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssrseg.config import CMPAConfig
from ssrseg.rectify.cmpa import CMPA, FeatureBank

# group g of image features (near axis e_g) holds pairs of class GROUP_CLASS[g]
GROUP_CLASS = (0, 2, 1)


def _bank() -> FeatureBank:
    bank = FeatureBank(4, capacity=100)
    g = torch.Generator().manual_seed(1)
    groups = torch.arange(3).repeat_interleave(5)
    feats = F.normalize(torch.eye(4)[:3][groups] + 0.01 * torch.randn(15, 4, generator=g), dim=-1)
    bank.add(feats, torch.tensor(GROUP_CLASS)[groups])
    return bank


def _refreshed() -> CMPA:
    torch.manual_seed(0)
    cmpa = CMPA(CMPAConfig(in_dim=8, out_dim=4, hidden_dim=8, prototypes="kmeans"), 3)
    text = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    assert cmpa.refresh(_bank(), text) == 3
    return cmpa


def test_fixture_mapping_is_not_its_own_inverse() -> None:
    """The guard the old fixture lacked: its cluster mapping was an involution."""
    p = _refreshed().cluster_positive
    assert sorted(p.tolist()) == [0, 1, 2]
    assert not torch.equal(p[p], torch.arange(3))


def test_positive_of_a_feature_is_the_text_cluster_of_its_groups_class() -> None:
    cmpa = _refreshed()
    # independent expectation: a probe on axis e_g lies in the image cluster of group g, whose
    # pairs are all of class GROUP_CLASS[g]; its positive is that class's text cluster,
    # whatever class the probe itself is given
    probes = torch.eye(4)[:3]
    want = [int(cmpa.text_cluster[c]) for c in GROUP_CLASS]
    for given in (0, 1, 2):
        got = cmpa.kmeans_positives(probes, torch.full((3,), given)).tolist()
        assert got == want
    # the image cluster of group g (its centroid's index) maps to that text cluster
    nearest = torch.cdist(probes, cmpa.visual_protos).argmin(dim=1)
    assert cmpa.cluster_positive[nearest].tolist() == want
    inverse = torch.empty(3, dtype=torch.long)
    inverse[cmpa.cluster_positive] = torch.arange(3)
    assert inverse[nearest].tolist() != want  # the inverse mapping gives other positives
