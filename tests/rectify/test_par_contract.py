"""PAR (``ssrseg.rectify.par``): argument checks, dtype / device plumbing, edge cases of the
iteration count and the wiring to the compiled kernels (mutation-testing follow-up, see
``docs/mutation/rectify.par.md``)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from par_reference import reference_par

from ssrseg.config import PARConfig
from ssrseg.rectify import par, par_native
from ssrseg.rectify.par import (
    neighbour_offsets,
    par_propagate,
    par_refine,
    par_weights,
    position_weights,
)

META = torch.device("meta")  # shapes and devices without data: device plumbing on a CPU box
CFG = PARConfig(dilations=(1, 2), iterations=2)


def test_position_weights_independent_formula_and_device() -> None:
    # a high temperature keeps all 16 weights comparable, so the +1e-8 in the std's
    # denominator shows at 1e-12 relative precision
    dil, t = (1, 2), 10.0
    dist = [math.hypot(dy, dx) for dy, dx in neighbour_offsets(dil)]
    mean = sum(dist) / len(dist)
    std = math.sqrt(sum((d - mean) ** 2 for d in dist) / (len(dist) - 1))
    logits = [-((d / (std + 1e-8) / t) ** 2) for d in dist]
    z = sum(math.exp(v) for v in logits)
    expected = torch.tensor([math.exp(v) / z for v in logits], dtype=torch.float64)
    got = position_weights(dil, t, dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=0)
    assert position_weights(dil, t, device=META).device == META
    # no dilations: no neighbours, an empty weight vector (not an error)
    empty = position_weights((), 0.3, dtype=torch.float64)
    assert empty.shape == (0,) and empty.dtype == torch.float64


def test_par_weights_rejects_non_4d_images() -> None:
    with pytest.raises(ValueError, match=r"B x C x H x W images, got \(3, 4, 4\)"):
        par_weights(torch.rand(3, 4, 4), CFG)


def test_par_weights_low_precision_images_work_in_float32() -> None:
    gen = torch.Generator().manual_seed(10)
    images = torch.rand(1, 3, 6, 7, generator=gen)
    w_bf16, _ = par_weights(images.bfloat16(), CFG)
    w_f32, _ = par_weights(images.bfloat16().float(), CFG)
    assert w_bf16.dtype == torch.float32
    assert torch.equal(w_bf16, w_f32)  # the bf16 -> f32 conversion is exact


def test_torch_form_weights_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(par_native.ENV_SWITCH, "0")  # the torch form (also autograd's path)
    gen = torch.Generator().manual_seed(11)
    images = torch.rand(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    cfg = dataclasses.replace(CFG, position_weight=0.25)
    plain, _ = par_weights(images, cfg)
    normed, _ = par_weights(images, dataclasses.replace(cfg, normalise=True))
    torch.testing.assert_close(plain.sum(1), torch.full((2, 5, 6), 1.25, dtype=torch.float64))
    torch.testing.assert_close(normed, plain / 1.25, rtol=1e-15, atol=0)


def test_devices_are_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # one device on a CPU box: spies record which device each step is asked to use (running
    # PAR itself on the meta device costs seconds of first-use set-up)
    asked: list[torch.device | None] = []
    real_position = par.position_weights

    def position(*args: Any) -> torch.Tensor:
        asked.append(args[2])
        return real_position(*args)

    monkeypatch.setattr(par, "position_weights", position)
    par_weights(torch.rand(1, 3, 6, 7, dtype=torch.float64), CFG)
    assert asked == [torch.device("cpu")]  # the position term is made on the images' device

    seen: list[torch.Tensor] = []

    def weights(images: torch.Tensor, cfg: PARConfig) -> tuple[torch.Tensor, list]:
        seen.append(images)
        return torch.zeros(1, 16, 6, 7, device=images.device), neighbour_offsets(cfg.dilations)

    monkeypatch.setattr(par, "par_weights", weights)
    monkeypatch.setattr(par, "par_propagate", lambda s, w, o, i: s.to(w.dtype))
    out = par_refine(torch.rand(1, 3, 6, 7), torch.empty(1, 2, 6, 7, device=META), CFG)
    # the images follow the scores' device (here from the CPU onto the meta device)
    assert seen[0].device == META and seen[0].dtype == torch.float32 and out.device == META


@pytest.mark.skipif(par_native._compiler() is None, reason="no C compiler")
def test_compiled_kernels_are_what_par_uses() -> None:
    lib = par_native.load()
    assert lib is not None
    gen = torch.Generator().manual_seed(12)
    images = torch.rand(1, 3, 9, 10, generator=gen)
    scores = torch.rand(1, 2, 9, 10, generator=gen)
    weights, offsets = par_weights(images, CFG)
    pos = position_weights(CFG.dilations, CFG.colour_temperature) * CFG.position_weight
    native_w = par_native.weights(lib, images, offsets, 1e-8, CFG.colour_temperature, pos, None)
    assert torch.equal(weights, native_w)  # bit for bit: the compiled path, not the torch one
    out = par_propagate(scores, weights, offsets, 3)
    assert torch.equal(out, par_native.propagate(lib, scores, weights, offsets, 3))


def test_propagate_shape_mismatch_messages() -> None:
    scores = torch.rand(1, 2, 4, 5)
    offsets = neighbour_offsets((1,))
    # each mismatch alone (weights larger than needed, so no kernel could read out of bounds)
    for shape in [(2, 8, 4, 5), (1, 8, 5, 5), (1, 9, 4, 5)]:
        with pytest.raises(ValueError, match=r"PAR weights \(.*\) do not match scores \(1, 2"):
            par_propagate(scores, torch.rand(*shape), offsets, 2)


def test_propagate_edge_cases_return_the_scores() -> None:
    gen = torch.Generator().manual_seed(13)
    scores = torch.rand(1, 2, 4, 5, generator=gen)
    weights = torch.rand(1, 8, 4, 5, generator=gen, dtype=torch.float64)
    offsets = neighbour_offsets((1,))
    for its in (0, -1):  # no step (a negative count is no step either)
        out = par_propagate(scores, weights, offsets, its)
        assert out.dtype == torch.float64  # in the weights' dtype, as documented
        assert torch.equal(out, scores.double())
    no_nb = par_propagate(scores, weights[:, :0], [], 3)
    assert torch.equal(no_nb, scores.double())


def test_one_iteration_and_mixed_dtypes_match_reference() -> None:
    gen = torch.Generator().manual_seed(14)
    images = torch.rand(1, 3, 7, 9, generator=gen, dtype=torch.float64)
    scores = torch.rand(1, 2, 7, 9, generator=gen, dtype=torch.float64)
    out = par_refine(images, scores, dataclasses.replace(CFG, iterations=1))
    ref = reference_par(images, scores, CFG.dilations, 1, 0.3, 0.01)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    weights, offsets = par_weights(images, CFG)
    mixed = par_propagate(scores.float(), weights, offsets, 1)  # float32 scores, f64 weights
    assert mixed.dtype == torch.float64
    torch.testing.assert_close(
        mixed,
        reference_par(images, scores.float().double(), CFG.dilations, 1, 0.3, 0.01),
        rtol=1e-9,
        atol=1e-10,
    )


def test_propagate_gradient_of_either_input(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(15)
    scores = torch.rand(1, 2, 4, 5, generator=gen)
    weights = torch.rand(1, 8, 4, 5, generator=gen)
    offsets = neighbour_offsets((1,))

    def grads() -> tuple[torch.Tensor, torch.Tensor]:
        # only the scores, then only the weights need a gradient: the compiled kernels record
        # no graph, so either one alone must keep PAR in its torch form
        s = scores.clone().requires_grad_(True)
        par_propagate(s, weights, offsets, 2).sum().backward()
        w = weights.clone().requires_grad_(True)
        par_propagate(scores, w, offsets, 2).sum().backward()
        assert s.grad is not None and w.grad is not None
        return s.grad, w.grad

    got = grads()
    monkeypatch.setenv(par_native.ENV_SWITCH, "0")  # the torch form only
    expected = grads()
    torch.testing.assert_close(got, expected)


def test_refine_argument_checks() -> None:
    for images, scores in [
        (torch.rand(1, 3, 4, 4), torch.rand(2, 4, 4)),
        (torch.rand(3, 4, 4), torch.rand(1, 2, 4, 4)),
    ]:
        with pytest.raises(ValueError, match="B x K x H x W"):
            par_refine(images, scores, CFG)
    with pytest.raises(ValueError, match=r"batch sizes differ \(images 2, scores 1\)"):
        par_refine(torch.rand(2, 3, 4, 4), torch.rand(1, 5, 4, 4), CFG)


def test_refine_resizes_images_in_float32_and_keeps_float64_scores() -> None:
    gen = torch.Generator().manual_seed(16)
    images = torch.rand(1, 3, 12, 14, generator=gen).bfloat16()
    scores = torch.rand(1, 2, 6, 7, generator=gen, dtype=torch.float64)
    out = par_refine(images, scores, CFG)
    # bf16 images are converted exactly to float32 before the (float32) resize
    assert torch.equal(out, par_refine(images.float(), scores, CFG))
    # float32 images, float64 scores: the propagation runs in float64 (a float32 one would
    # lose the 1e-12 structure of these scores)
    small = torch.nn.functional.interpolate(
        images.float(), size=(6, 7), mode="bilinear", align_corners=True
    )
    weights, offsets = par_weights(small, CFG)
    fine = 1.0 + 1e-12 * scores
    expected = par_propagate(fine, weights.double(), offsets, CFG.iterations)
    torch.testing.assert_close(par_refine(images, fine, CFG), expected, rtol=1e-15, atol=0)
