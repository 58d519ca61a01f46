"""SSRLosses hands the background prompts to CMPA's optional background term."""

from __future__ import annotations

import torch
from tests_model_fakes import (  # one_thread: autouse fixture
    one_thread,  # noqa: F401
    proto_inputs,
    synthetic_batch,
    tiny_config,
    tiny_ssr_model,
)


def test_background_prompts_reach_the_background_term() -> None:
    model = tiny_ssr_model(tiny_config(cmpa__background_term="raw_nearest"), 1).train()
    batch = synthetic_batch(2)
    bg = torch.randn(2, 16, requires_grad=True)  # tiny_config: cmpa.in_dim=16
    x = proto_inputs(model, batch, bg)
    res = model.losses(x["tokens"], x["grid"], x["pseudo"], x["proto"])
    assert res["proto_bg"].item() > 0.0
    res["loss"].backward()
    assert bg.grad is not None and bg.grad.abs().sum() > 0


def test_without_the_option_no_background_term() -> None:
    model = tiny_ssr_model(tiny_config(), 1).train()
    x = proto_inputs(model, synthetic_batch(2), torch.randn(2, 16))
    res = model.losses(x["tokens"], x["grid"], x["pseudo"], x["proto"])
    assert "proto_bg" not in res and "proto" in res
