"""Configuration fields of the trainable side that change numbers, each set to a value of its
own and checked against an expectation written here: the CMPA heads' shape, temperature,
symmetric term and K-means settings, the decoder's feed-forward width, and the trainer's
learning-rate schedule and parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from tests_model_fakes import one_thread, synthetic_batch, tiny_config, tiny_ssr_model
from torch import nn

import ssrseg.rectify.cmpa as cmpa_module
from ssrseg.config import CMPAConfig
from ssrseg.engine.train import Trainer
from ssrseg.rectify.cmpa import CMPA, FeatureBank, prototype_store

__all__ = ["one_thread"]  # autouse fixture


def test_cmpa_heads_follow_the_configured_shape() -> None:
    cfg = CMPAConfig(in_dim=6, hidden_dim=10, out_dim=4, num_layers=3, plain_last_layer=True)
    cmpa = CMPA(cfg, 2)
    for head in (cmpa.isa, cmpa.tsa):
        linears = [m for m in head if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(6, 10), (10, 10), (10, 4)]
        assert isinstance(head[-1], nn.Linear)  # plain last layer: no BatchNorm / ReLU after it
        assert sum(isinstance(m, nn.BatchNorm1d) for m in head) == 2
    with_relu = CMPA(CMPAConfig(in_dim=6, hidden_dim=10, out_dim=4, num_layers=2,
                                plain_last_layer=False), 2)  # fmt: skip
    assert isinstance(with_relu.isa[-1], nn.ReLU) and len(with_relu.isa) == 6


def test_cmpa_temperature_starts_at_tau_init_and_is_clamped_at_tau_min() -> None:
    cmpa = CMPA(CMPAConfig(in_dim=4, hidden_dim=4, out_dim=4, tau_init=0.07, tau_min=0.02), 2)
    assert float(cmpa.tau.detach()) == pytest.approx(0.07, rel=1e-6)
    with torch.no_grad():
        cmpa.log_tau.fill_(math.log(0.005))
    assert float(cmpa.tau.detach()) == pytest.approx(0.02, rel=1e-6)


def test_symmetric_term_is_in_the_loss_only_when_configured() -> None:
    g = torch.Generator().manual_seed(2)
    patch, text = torch.randn(2, 4, 8, generator=g), torch.randn(3, 8, generator=g)
    cams = [torch.rand(2, 2, 2, generator=g), torch.rand(1, 2, 2, generator=g)]
    totals = {}
    for symmetric in (True, False):
        torch.manual_seed(0)
        cmpa = CMPA(CMPAConfig(in_dim=8, hidden_dim=8, out_dim=4, symmetric=symmetric), 3)
        with torch.no_grad():  # valid visual prototypes, so the symmetric term is not empty
            cmpa.visual_protos.copy_(torch.randn(3, 4, generator=g))
            cmpa.proto_valid.fill_(1)
        loss, parts, _, _ = cmpa.loss(patch, cams, [(0, 2), (1,)], (2, 2), text)
        totals[symmetric] = (float(loss.detach()), parts)
    loss_sym, parts_sym = totals[True]
    loss_plain, parts_plain = totals[False]
    assert float(parts_sym["proto_sym"]) > 1e-3
    assert loss_sym == pytest.approx(float(parts_sym["proto"]) + float(parts_sym["proto_sym"]))
    assert loss_plain == pytest.approx(float(parts_plain["proto"]))


def test_kmeans_settings_reach_the_bank_and_the_clustering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = CMPAConfig(
        in_dim=8, hidden_dim=8, out_dim=4, prototypes="kmeans", kmeans_iters=7,
        kmeans_max_features=9,
    )  # fmt: skip
    cmpa = CMPA(cfg, 3)
    bank = prototype_store(cmpa)
    assert isinstance(bank, FeatureBank) and bank.capacity == 9
    bank.add(torch.nn.functional.normalize(torch.randn(12, 4), dim=-1), torch.arange(12) % 3)
    assert bank.features()[0].shape[0] == 9  # the newest 9 kept
    calls: list[tuple[int, int]] = []
    real = cmpa_module.kmeans

    def spy(points: torch.Tensor, k: int, iters: int, seed: int):  # type: ignore[no-untyped-def]
        calls.append((k, iters))
        return real(points, k, iters, seed)

    monkeypatch.setattr(cmpa_module, "kmeans", spy)
    cmpa.refresh(bank, torch.randn(3, 8))
    assert calls == [(3, 7), (3, 7)]  # image features, then the class texts


def test_decoder_feed_forward_width_is_ffn_ratio_times_embed_dim() -> None:
    cfg = tiny_config(decoder__ffn_ratio=2.5, decoder__embed_dim=16, decoder__num_layers=2)
    model = tiny_ssr_model(cfg, 0)
    widths = {
        m.out_features
        for name, m in model.decoder.named_modules()
        if isinstance(m, nn.Linear) and name.endswith("linear1")
    }
    assert widths == {40}


def _ramp(step: int, warmup: int, ratio: float) -> float:
    return ratio + (1 - ratio) * step / warmup


@pytest.mark.parametrize("warmup_poly", [False, True])
def test_trainer_learning_rates_follow_the_configured_schedule(tmp_path, warmup_poly: bool) -> None:
    cfg = tiny_config(
        train__iterations=10,
        train__warmup_iters=4,
        train__warmup_ratio=0.2,
        train__poly_power=2.0,
        train__lr=1e-3,
        train__decoder_lr_mult=7.0,
        train__weight_decay=0.003,
        train__warmup_poly=warmup_poly,
        data__crop_size=32,
        affinity__mask="none",
    )
    trainer = Trainer(cfg, tiny_ssr_model(cfg, 0), [], tmp_path, progress=False)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert {n: g["weight_decay"] for n, g in groups.items()} == {
        "decoder": 0.003, "cmpa": 0.003, "tau": 0.0,
    }  # fmt: skip
    for step in range(6):
        poly = (1 - step / 10) ** 2.0
        if step < 4:
            factor = _ramp(step, 4, 0.2) * (poly if warmup_poly else 1.0)
        else:
            factor = poly
        values = trainer.train_step(synthetic_batch(2, seed=step))
        assert values["lr"] == pytest.approx(1e-3 * factor, rel=1e-9)
        assert groups["decoder"]["lr"] == pytest.approx(7e-3 * factor, rel=1e-9)
        assert groups["cmpa"]["lr"] == pytest.approx(1e-3 * factor, rel=1e-9)
