"""SSRModel: segment(), trainable weights, losses and a few optimisation steps."""

from __future__ import annotations

import pytest
import torch
from tests_model_fakes import (  # one_thread: autouse fixture
    FakeLabeler,
    one_thread,  # noqa: F401
    proto_inputs,
    synthetic_batch,
    tiny_clip,
    tiny_config,
    tiny_ssr_model,
)

from ssrseg.config import ConfigError
from ssrseg.model.ssr import SSRModel


def _model(**over: object) -> SSRModel:
    return tiny_ssr_model(tiny_config(**over), 1)


def test_segment_shape_and_equivalence_to_decoder_on_clip_tokens() -> None:
    model = _model().eval()
    images = torch.rand(2, 3, 32, 40)
    logits = model.segment(images)
    assert logits.shape == (2, 4, 4, 5) and logits.dtype == torch.float32
    visual = model.labeler.clip.visual
    out = visual.forward_intermediates(visual.normalize(images))
    ref, _ = model.decoder(out.tokens, out.grid)  # all blocks given; decoder reads layers 1..2
    assert torch.allclose(logits, ref, atol=1e-6)
    assert model.decoder.num_layers_in == 2  # toy rule: min(11, 3 - 1)


def test_trainable_state_excludes_backbones_and_round_trips() -> None:
    model = _model()
    state = model.trainable_state_dict()
    assert state and all(k.startswith(("decoder.", "cmpa.")) for k in state)
    assert "cmpa.log_tau" in state and "cmpa.visual_protos" in state
    assert not any(p.requires_grad for p in model.labeler.parameters())
    other = _model()
    with torch.no_grad():
        for p in other.decoder.parameters():
            p.add_(1.0)
    other.load_trainable_state_dict(state)
    images = torch.rand(1, 3, 32, 32)
    assert torch.equal(model.eval().segment(images), other.eval().segment(images))
    with pytest.raises(KeyError, match="missing"):
        other.load_trainable_state_dict({k: v for k, v in state.items() if "tau" not in k})


def test_cmpa_width_mismatch_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"set cmpa\.in_dim=16"):
        SSRModel(tiny_config(cmpa__in_dim=32), FakeLabeler(tiny_clip(), 3), 4)


def test_train_mode_keeps_backbones_in_eval() -> None:
    model = _model().train()
    assert model.decoder.training and not model.labeler.training


def test_a_few_steps_reduce_the_loss() -> None:
    model = _model(train__lr=3e-3).train()
    batch = synthetic_batch(4)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    x = proto_inputs(model, batch)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        res = model.losses(x["tokens"], x["grid"], x["pseudo"], x["proto"])
        res["loss"].backward()
        opt.step()
        losses.append(res["loss"].item())
        assert {"seg", "aff", "proto", "proto_sym"} <= set(res)
    assert losses[-1] < 0.7 * losses[0]
