"""Pieces of the CMPA probe on hand-made inputs (the full probe needs the toy CLIP: run
``python -m ssrseg.toy.cmpa_probe --quick``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ssrseg.config import load_config
from ssrseg.rectify.cmpa import CMPA
from ssrseg.toy.cmpa_probe import (
    HeadRun,
    ProbeData,
    at_scale,
    background_accuracy,
    image_accuracy,
    pair_accuracy,
    recalibrated,
    train_heads,
)


def _cmpa() -> CMPA:
    cfg = load_config(None, ["cmpa.in_dim=4", "cmpa.hidden_dim=6", "cmpa.out_dim=3"])
    torch.manual_seed(0)
    return CMPA(cfg.cmpa, num_classes=2)


def _data() -> ProbeData:
    # 2 images of 2 patches; image 0 shows class 0 (patch embeddings along e0), image 1 class 1
    emb = torch.tensor([[[1.0, 0, 0, 0], [0.9, 0.1, 0, 0]], [[0, 1.0, 0, 0], [0, 0.8, 0.2, 0]]])
    cams = [torch.ones(1, 1, 2), torch.ones(1, 1, 2)]
    return ProbeData(
        torch.zeros(2, 3, 8, 16), torch.zeros(2, 8, 16), [(0,), (1,)], emb, cams, (1, 2)
    )


def test_raw_space_accuracies_by_hand() -> None:
    data = _data()
    text = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    assert pair_accuracy(None, data, [0, 1], text) == 100.0
    assert image_accuracy(None, data, [0, 1], text) == 100.0
    swapped = text.flip(0)
    assert pair_accuracy(None, data, [0, 1], swapped) == 0.0
    assert image_accuracy(None, data, [0, 1], swapped) == 0.0


def test_recalibrated_batchnorm_holds_the_exact_statistics() -> None:
    cmpa = _cmpa()
    data = _data()
    text = torch.randn(2, 4)
    out = recalibrated(cmpa, data, text, batch=1)
    bn = out.isa[1]
    assert isinstance(bn, nn.BatchNorm1d) and bn.running_mean is not None
    hidden = cmpa.isa[0](data.patch_emb.reshape(4, 4))  # every patch through the first Linear
    assert torch.allclose(bn.running_mean, hidden.mean(0), atol=1e-6)
    tsa_bn = out.tsa[1]
    assert isinstance(tsa_bn, nn.BatchNorm1d) and tsa_bn.running_mean is not None
    assert torch.allclose(tsa_bn.running_mean, cmpa.tsa[0](text).mean(0), atol=1e-6)
    assert not out.training and cmpa.isa[1].running_mean is not bn.running_mean  # a copy


def test_at_scale_sets_the_temperature() -> None:
    assert at_scale(_cmpa(), 15.0).tau.item() == pytest.approx(1 / 15)


def test_train_heads_frozen_tau_and_schedule() -> None:
    cfg = load_config(
        None,
        ["cmpa.in_dim=4", "cmpa.hidden_dim=6", "cmpa.out_dim=3", "train.batch_size=2",
         "train.warmup_iters=1", "cmpa.refresh_every=2"],
    )  # fmt: skip
    data = _data()
    text = torch.randn(2, 4)
    seen: list[int] = []
    cmpa, last = train_heads(
        cfg, data, HeadRun("frozen", 4, fixed_scale=10.0), text, torch.randn(1, 4),
        checkpoints=[2], on_checkpoint=lambda step, _: seen.append(step),
    )  # fmt: skip
    assert last["tau"] == pytest.approx(0.1) and seen == [2]
    assert cmpa.proto_valid.tolist() == [1, 1] and math.isfinite(last["loss"])
    neg, _ = train_heads(
        cfg, data, HeadRun("neg", 2, background_negatives=True), text, torch.randn(3, 4)
    )
    assert neg.proto_valid.sum() == 2


def test_background_accuracy_pools_where_the_cam_is_low() -> None:
    # image 0: CAM on patch 0 only, so its background feature is patch 1 (along e1): nearest
    # to background prompt 1, but its context is 0 -> miss; image 1: CAM on patch 0, background
    # feature = patch 1 = (0, 0.8, 0.2, 0): nearest to prompt 1 = its context -> hit
    data = _data()
    data.contexts = [0, 1]
    data.cams = [torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[1.0, 0.0]]])]
    data.patch_emb[0, 1] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    bg = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    assert background_accuracy(None, data, [0, 1], bg) == 50.0


def test_train_heads_with_the_background_term_and_recalibration() -> None:
    cfg = load_config(
        None,
        ["cmpa.in_dim=4", "cmpa.hidden_dim=6", "cmpa.out_dim=3", "train.batch_size=2",
         "cmpa.refresh_every=2"],
    )  # fmt: skip
    data = _data()
    data.cams = [torch.tensor([[[1.0, 0.2]]]), torch.tensor([[[0.3, 1.0]]])]
    text, bg = torch.randn(2, 4), torch.randn(3, 4)
    run = HeadRun("bg", 2, {"background_term": "raw_nearest"})
    cmpa, last = train_heads(cfg, data, run, text, bg)
    assert cmpa.cfg.background_term == "raw_nearest" and math.isfinite(last["loss"])
    # TSA trained on [classes + background prompts]: the exact statistics cover all five texts
    out = recalibrated(cmpa, data, text, bg_emb=bg)
    tsa_bn = out.tsa[1]
    assert isinstance(tsa_bn, nn.BatchNorm1d) and tsa_bn.running_mean is not None
    both = torch.cat([text, bg])
    assert torch.allclose(tsa_bn.running_mean, cmpa.tsa[0](both).mean(0), atol=1e-6)
