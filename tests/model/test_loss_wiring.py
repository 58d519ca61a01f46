"""The training loss is ``w_seg * seg + w_aff * aff + w_proto * proto`` with the configured
weights (three different ones, none a default) and the configured affinity radius; each term
is recomputed here from the loss functions called by hand."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from tests_model_fakes import one_thread, synthetic_batch, tiny_config, tiny_ssr_model

from ssrseg.model.losses import (
    affinity_loss,
    affinity_targets,
    balanced_seg_loss,
    feature_affinity,
)

__all__ = ["one_thread"]  # autouse fixture

W_SEG, W_AFF, W_PROTO, RADIUS = 0.3, 0.07, 2.5, 1


def test_loss_is_the_configured_weighted_sum_of_its_terms() -> None:
    cfg = tiny_config(
        loss__w_seg=W_SEG, loss__w_aff=W_AFF, loss__w_proto=W_PROTO, loss__aff_radius=RADIUS
    )
    model = tiny_ssr_model(cfg, 3).eval()  # eval: no dropout, BatchNorm on running stats
    batch = synthetic_batch(2, seed=4)
    out = model.labeler(batch["images"], batch["labels"])
    tokens, grid, pseudo = out.clip_out.tokens, out.grid, out.labels
    proto_inputs = {
        "patch_emb": out.patch_emb,
        "cams": out.cams,
        "labels": batch["labels"],
        "text_emb": model.labeler.class_emb,
    }
    with torch.no_grad():
        res = model.losses(tokens, grid, pseudo, proto_inputs)
        logits, fused = model.decoder(tokens, grid)
        up = F.interpolate(logits, size=pseudo.shape[-2:], mode="bilinear", align_corners=False)
        seg = balanced_seg_loss(up, pseudo)
        targets = affinity_targets(pseudo, model.patch_size, grid, RADIUS)
        aff = affinity_loss(feature_affinity(fused), targets)
        assert model.cmpa is not None
        proto = model.cmpa.loss(
            out.patch_emb, out.cams, batch["labels"], grid, model.labeler.class_emb
        )[0]
        other_radius = affinity_loss(
            feature_affinity(fused), affinity_targets(pseudo, model.patch_size, grid, 2)
        )
    # each term is non-trivial and the radius matters on this batch
    assert min(float(seg), float(aff), float(proto)) > 1e-3
    assert abs(float(other_radius) - float(aff)) > 1e-4
    assert float(res["seg"]) == pytest.approx(float(seg), rel=1e-6)
    assert float(res["aff"]) == pytest.approx(float(aff), rel=1e-6)
    want = W_SEG * float(seg) + W_AFF * float(aff) + W_PROTO * float(proto)
    assert float(res["loss"]) == pytest.approx(want, rel=1e-6)
    # any two weights swapped would give another total
    for a, b, c in ((W_AFF, W_SEG, W_PROTO), (W_PROTO, W_AFF, W_SEG), (W_SEG, W_PROTO, W_AFF)):
        other = a * float(seg) + b * float(aff) + c * float(proto)
        assert other != pytest.approx(want, rel=1e-4)


def test_without_prototype_inputs_the_loss_has_two_terms() -> None:
    cfg = tiny_config(
        loss__w_seg=W_SEG, loss__w_aff=W_AFF, loss__w_proto=W_PROTO, loss__aff_radius=RADIUS
    )
    model = tiny_ssr_model(cfg, 3).eval()
    batch = synthetic_batch(2, seed=5)
    out = model.labeler(batch["images"], batch["labels"])
    with torch.no_grad():
        res = model.losses(out.clip_out.tokens, out.grid, out.labels, None)
    assert "proto" not in res
    want = W_SEG * float(res["seg"]) + W_AFF * float(res["aff"])
    assert float(res["loss"]) == pytest.approx(want, rel=1e-6)


def test_affinity_targets_refuse_labels_smaller_than_the_grid() -> None:
    labels = torch.zeros(1, 8, 12, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^labels \(8, 12\) too small for grid \(2, 2\)$"):
        affinity_targets(labels, 8, (2, 2), 1)


def test_affinity_targets_hand_computed_without_warnings() -> None:
    # grid 2 x 3, labels sampled at the patch corners (patch 2): [[1, 1, 2], [255, 1, 0]];
    # 1 same label, 0 different, 255 ignored or Chebyshev distance > 1 (columns 0 and 2)
    labels = torch.tensor([[[1, 1, 1, 1, 2, 2], [1, 1, 1, 1, 2, 2], [255, 0, 1, 1, 0, 0],
                            [0, 0, 1, 1, 0, 0]]])  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch.meshgrid without an indexing argument
        t = affinity_targets(labels, 2, (2, 3), radius=1)
    i = 255
    assert t[0].tolist() == [
        [1, 1, i, i, 1, i],
        [1, 1, 0, i, 1, 0],
        [i, 0, 1, i, 0, 0],
        [i, i, i, i, i, i],
        [1, 1, 0, i, 1, 0],
        [i, 0, 0, i, 0, 1],
    ]
