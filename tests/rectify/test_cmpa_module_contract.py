"""The CMPA module and its stores at their edges: error messages, checkpointed dtypes, input
dtypes and devices, the K-means refresh recipe and the feature bank's ring buffer (issue 26,
mutation triage; docs/mutation/rectify.cmpa.md). "meta" tensors stand in for an accelerator:
they check where results are placed without a GPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ssrseg.config import CMPAConfig, load_config
from ssrseg.rectify.cmpa import (
    CMPA,
    FeatureBank,
    PrototypeAccumulator,
    cluster_prototypes,
    prototype_loss,
    prototype_store,
)
from ssrseg.rectify.sgc import kmeans as lloyd


def _cmpa(*over: str) -> CMPA:
    items = ["cmpa.in_dim=8", "cmpa.hidden_dim=8", "cmpa.out_dim=4", *over]
    return CMPA(load_config(None, items).cmpa, num_classes=3)


def _raises(exc: type[Exception], cfg: CMPAConfig) -> str:
    with pytest.raises(exc) as info:
        CMPA(cfg, num_classes=3)
    return str(info.value)


def test_invalid_modes_name_the_choices_exactly() -> None:
    # configs built in code bypass the loader's checks: the module's own messages
    base = load_config(None, []).cmpa
    msg = _raises(ValueError, dataclasses.replace(base, prototypes="spectral"))
    assert msg == (
        "cmpa.prototypes='spectral': use one of class_mean, kmeans "
        "(see docs/training.md, CMPA prototypes)"
    )
    msg = _raises(ValueError, dataclasses.replace(base, background_term="bogus"))
    assert msg == "cmpa.background_term='bogus': use one of none, raw_nearest, any"


def test_refresh_errors_say_what_is_missing() -> None:
    bank = FeatureBank(4, capacity=10)
    with pytest.raises(ValueError, match=r"^a K-means refresh needs the class text embeddings$"):
        _cmpa("cmpa.prototypes=kmeans").refresh(bank)
    with pytest.raises(TypeError, match=r"^cmpa.prototypes=kmeans refreshes from a FeatureBank$"):
        _cmpa("cmpa.prototypes=kmeans").refresh(PrototypeAccumulator(3, 4))


def test_checkpointed_buffers_keep_their_dtypes() -> None:
    # checkpoints hold these buffers; their dtypes are part of the format (class docstring)
    state = _cmpa("cmpa.prototypes=kmeans").state_dict()
    assert state["proto_valid"].dtype == torch.uint8
    assert state["refreshes"].dtype == torch.long and state["refreshes"].shape == ()
    assert state["text_cluster"].dtype == torch.long
    assert _cmpa().state_dict()["proto_valid"].dtype == torch.uint8


def test_heads_take_embeddings_of_another_dtype() -> None:
    # CLIP may run in float64 / float16: the heads cast the embeddings to their own dtype
    cmpa = _cmpa().eval()
    patch, text = torch.randn(2, 3, 8).double(), torch.randn(3, 8).double()
    assert torch.equal(cmpa.project_image(patch), cmpa.project_image(patch.float()))
    assert torch.equal(cmpa.project_text(text), cmpa.project_text(text.float()))


def test_class_features_without_cams_or_classes_are_empty() -> None:
    cmpa = _cmpa().eval()
    patch = torch.randn(1, 2, 8)  # N = 2 patches != d2 = 4
    for cams, labels in (([], []), ([torch.zeros(0, 1, 2)], [()])):
        feats, classes = cmpa.class_features(patch, cams, labels, (1, 2))
        assert feats.shape == (0, 4) and classes.shape == (0,) and classes.dtype == torch.long


def test_class_features_need_one_label_list_per_image() -> None:
    cmpa = _cmpa()
    cams = [torch.rand(1, 2, 2), torch.rand(1, 2, 2)]
    with pytest.raises(ValueError):
        cmpa.class_features(torch.randn(2, 4, 8), cams, [(0,)], (2, 2))


def test_background_prompts_are_cast_like_the_class_texts() -> None:
    # one TSA pass over [classes + background prompts]: the prompts are brought to the class
    # texts' dtype (and device) first, so float32 prompts with float16 texts are float16 prompts
    torch.manual_seed(0)
    cmpa = _cmpa("cmpa.background_term=any", "cmpa.symmetric=false").eval()
    patch, cams = torch.randn(2, 4, 8), [torch.rand(2, 2, 2), torch.rand(1, 2, 2)]
    text, bg = torch.randn(3, 8).half(), torch.randn(2, 8)
    args = (patch, cams, [(0, 1), (2,)], (2, 2), text)
    assert torch.equal(cmpa.loss(*args, bg)[0], cmpa.loss(*args, bg.half())[0])
    assert not torch.equal(bg, bg.half().float())  # guard: the rounding is visible


def _identity_heads(*over: str) -> CMPA:
    # single plain Linear heads set to the identity: f_ic are the pooled raw embeddings
    items = ["cmpa.in_dim=4", "cmpa.hidden_dim=4", "cmpa.out_dim=4", "cmpa.num_layers=1"]
    cmpa = CMPA(load_config(None, [*items, *over]).cmpa, num_classes=3)
    with torch.no_grad():
        for head in (cmpa.isa, cmpa.tsa):
            head[0].weight.copy_(torch.eye(4))
            head[0].bias.zero_()
    return cmpa


def _set_clusters(cmpa: CMPA, centroids: torch.Tensor, valid: list[int]) -> None:
    with torch.no_grad():
        cmpa.visual_protos.copy_(centroids)
        cmpa.proto_valid.copy_(torch.tensor(valid, dtype=torch.uint8))
        cmpa.cluster_positive.copy_(torch.tensor([1, 2, 0]))
        cmpa.refreshes.fill_(1)


def test_kmeans_positive_uses_each_feature_normalised_on_its_own() -> None:
    # centroids e0, e1 and a short 0.2 e2; image cluster k -> text cluster (1, 2, 0)[k].
    # f = (10, 1, 0, 0) and (0, 0.1, 0, 0): normalised each on its own they are nearest e0 and
    # e1 (positives 1, 2); scaled jointly (or per column) the small one falls near the origin,
    # hence near 0.2 e2 (positive 0)
    cmpa = _identity_heads("cmpa.prototypes=kmeans", "cmpa.symmetric=false")
    _set_clusters(
        cmpa, torch.stack([torch.eye(4)[0], torch.eye(4)[1], 0.2 * torch.eye(4)[2]]), [1, 1, 1]
    )
    patch = torch.tensor([[[10.0, 1.0, 0.0, 0.0]], [[0.0, 0.1, 0.0, 0.0]]])
    cams = [torch.ones(1, 1, 1), torch.ones(1, 1, 1)]
    text = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    _, parts, feats, _ = cmpa.loss(patch, cams, [(0,), (1,)], (1, 1), text)
    with torch.no_grad():
        protos = cluster_prototypes(cmpa.project_text(text), cmpa.text_cluster, 3)
        want = prototype_loss(feats, torch.tensor([1, 2]), protos, cmpa.tau)
        other = prototype_loss(feats, torch.tensor([1, 0]), protos, cmpa.tau)
    assert parts["proto"].item() == pytest.approx(want.item(), rel=1e-6)
    assert abs(want.item() - other.item()) > 1e-3  # guard: the two positives differ


def test_kmeans_positive_never_picks_an_empty_image_cluster() -> None:
    # cluster 2 is empty (zero centroid, not valid): a unit feature is nearer to it (distance
    # 1) than to e0 (about 1.34), yet its positive comes from e0's cluster
    cmpa = _cmpa("cmpa.prototypes=kmeans")
    _set_clusters(cmpa, torch.stack([torch.eye(4)[0], torch.eye(4)[1], torch.zeros(4)]), [1, 1, 0])
    feat = F.normalize(torch.tensor([[0.1, 0.0, 0.0, 1.0]]), dim=-1)
    assert cmpa.kmeans_positives(feat, torch.tensor([0])).tolist() == [1]


def _bank(groups: list[tuple[int, int, int]]) -> FeatureBank:
    # (axis, class, count): `count` features of `class` near the unit axis e_axis
    g = torch.Generator().manual_seed(2)
    bank = FeatureBank(4, capacity=100)
    for axis, cls, count in groups:
        f = torch.eye(4)[axis].repeat(count, 1) + 0.01 * torch.randn(count, 4, generator=g)
        bank.add(F.normalize(f, dim=-1), torch.full((count,), cls))
    return bank


def _reference_refresh(cmpa: CMPA, bank: FeatureBank, text: torch.Tensor, seed: int) -> dict:
    # the recipe of refresh_kmeans's docstring, from the pieces
    feats, classes = bank.features()
    img = lloyd(feats, 3, cmpa.cfg.kmeans_iters, seed)
    centroids = torch.stack([feats[img == k].mean(0) for k in range(3)])
    tsa = cmpa.tsa.eval()
    with torch.no_grad():
        t = F.normalize(tsa(text), dim=-1)
    tsa.train()
    text_of_class = lloyd(t, 3, cmpa.cfg.kmeans_iters, seed)
    cooc = torch.zeros(3, 3)
    for i, c in zip(img.tolist(), text_of_class[classes].tolist(), strict=True):
        cooc[i, c] += 1
    rows, cols = linear_sum_assignment(cooc.numpy(), maximize=True)
    return {"centroids": centroids, "text": text_of_class, "match": torch.as_tensor(cols)[rows]}


def test_kmeans_refresh_follows_the_recipe_with_seed_1000_plus_refreshes() -> None:
    torch.manual_seed(0)
    cmpa = _cmpa("cmpa.prototypes=kmeans")
    # texts whose second refresh (seed 1001) clusters them differently if they were normalised
    # per dimension instead of per text
    text = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    # group near e0: 5 pairs of class 0 and 1 of class 1; near e1: 1 pair of class 0; near
    # e2: 5 of class 2. By counts e0's cluster matches class 0's text cluster (5 + 0 + 5 beats
    # 1 + 1 + 5); by mere presence it would match class 1's (1 + 1 + 1 beats 1 + 0 + 1)
    bank = _bank([(0, 0, 5), (0, 1, 1), (1, 0, 1), (2, 2, 5)])
    for r in range(2):
        assert cmpa.refresh(bank, text) == 3 and int(cmpa.refreshes) == r + 1
        ref = _reference_refresh(cmpa, bank, text, 1000 + r)
        assert torch.allclose(cmpa.visual_protos, ref["centroids"], atol=1e-6)
        assert cmpa.text_cluster.tolist() == ref["text"].tolist()
        assert cmpa.cluster_positive.tolist() == ref["match"].tolist()
        e0 = int(nearest_to(cmpa.visual_protos, torch.eye(4)[0]))
        assert int(cmpa.cluster_positive[e0]) == int(cmpa.text_cluster[0])
    # guard: the seeds give different clusterings of this bank
    feats = bank.features()[0]
    labels = [lloyd(feats, 3, cmpa.cfg.kmeans_iters, s).tolist() for s in (999, 1000, 1001)]
    assert labels[0] != labels[2] and labels[1] != labels[2]


def nearest_to(centroids: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    return (centroids - point).norm(dim=1).argmin()


def test_kmeans_refresh_runs_with_exactly_k_features() -> None:
    cmpa = _cmpa("cmpa.prototypes=kmeans")
    bank = _bank([(0, 0, 1), (1, 1, 1), (2, 2, 1)])
    assert cmpa.refresh(bank, torch.randn(3, 8)) == 3 and int(cmpa.refreshes) == 1


# -- stores ---------------------------------------------------------------------------------


def test_stores_live_on_the_requested_device() -> None:
    for mode in ("class_mean", "kmeans"):
        store = prototype_store(_cmpa(f"cmpa.prototypes={mode}"), "meta")
        tensors = (
            (store.feats, store.classes)
            if isinstance(store, FeatureBank)
            else (store.sum, store.count)
        )
        assert all(t.device.type == "meta" for t in tensors)
    # (only creation and copies on "meta": its first computation imports sympy, ~10 s)
    bank = FeatureBank(4, capacity=3, device="meta")
    assert bank.feats.shape == (0, 4) and bank.classes.shape == (0,)


def test_accumulator_sums_in_float64() -> None:
    # 1e8 + 1 is not a float32 number: float32 sums would lose the 1 (docstring: float64 for
    # exact sums over long runs)
    acc = PrototypeAccumulator(1, 1)
    for v in (1e8, 1.0, -1e8):
        acc.add(torch.tensor([[v]]), torch.tensor([0]))
    assert acc.sum.item() == 1.0 and acc.count.item() == 3.0
    assert acc.sum.dtype == acc.count.dtype == torch.float64
    assert PrototypeAccumulator(3, 4, "meta").count.device.type == "meta"


def test_feature_bank_capacity_and_empty_shape() -> None:
    with pytest.raises(ValueError, match=r"kmeans_max_features must be >= 1, got 0"):
        FeatureBank(4, capacity=0)
    one = FeatureBank(4, capacity=1)  # the smallest bank keeps the newest feature
    assert one.features()[0].shape == (0, 4) and one.features()[1].dtype == torch.long
    one.add(torch.ones(1, 4), torch.tensor([2]))
    one.add(2 * torch.ones(1, 4), torch.tensor([1]))
    assert one.features()[0].tolist() == [[2.0] * 4] and one.features()[1].tolist() == [1]


def test_feature_bank_ring_order_and_count() -> None:
    # capacity 3 (> 2, so writing backwards would differ), features wider than the capacity
    bank = FeatureBank(4, capacity=3)
    rows = torch.arange(1.0, 8.0)[:, None].repeat(1, 4)  # feature i = (i, i, i, i)
    bank.add(rows[:3], torch.tensor([0, 1, 2]))
    assert bank.total == 3
    bank.add(rows[3:5], torch.tensor([0, 1]))  # overwrite the two oldest, in order
    assert bank.features()[0][:, 0].tolist() == [4.0, 5.0, 3.0] and bank.total == 5
    bank.add(rows[5:6], torch.tensor([2]))
    bank.add(rows[6:7], torch.tensor([0]))
    assert bank.features()[0][:, 0].tolist() == [7.0, 5.0, 6.0] and bank.total == 7
    assert int(bank.state_dict()["total"]) == 7
    bank.reset()
    assert bank.total == 0 and bank.features()[1].shape == (0,)
    bank.add(rows[:4], torch.tensor([0, 1, 2, 0]))  # after a reset the ring restarts at 0
    assert bank.features()[0][:, 0].tolist() == [4.0, 2.0, 3.0] and bank.total == 4


def test_feature_bank_rejects_features_without_classes() -> None:
    bank = FeatureBank(2, capacity=2)
    with pytest.raises(ValueError):
        bank.add(torch.randn(3, 2), torch.tensor([0]))


def test_feature_bank_load_casts_and_moves_the_state() -> None:
    state = {
        "feats": torch.randn(2, 4, dtype=torch.float64),
        "classes": torch.tensor([1, 2], dtype=torch.int32),
        "total": torch.tensor(2),
    }
    bank = FeatureBank(4, capacity=5, device="meta")
    bank.load_state_dict(state)
    assert bank.feats.device.type == "meta" and bank.feats.dtype == torch.float32
    assert bank.classes.device.type == "meta" and bank.classes.dtype == torch.long
    assert bank.total == 2
