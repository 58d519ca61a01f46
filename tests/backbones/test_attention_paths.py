"""Attention with maps: the per-head CPU path (no autograd) against an independent formula and
against the batched path autograd uses."""

from __future__ import annotations

import math

import pytest
import torch

from ssrseg.backbones.vit import Attention


@pytest.fixture(autouse=True)
def _one_thread():
    """The per-head path runs with one torch thread (more threads use the batched path)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reference(attn: Attention, x: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Textbook multi-head attention in float64: (output ``B x L x D``, head-mean ``B x L x L``)."""
    b, n, d = x.shape
    h, hd = attn.heads, attn.head_dim
    w, bias = attn.qkv.weight.double(), attn.qkv.bias.double()
    qkv = (x.double() @ w.t() + bias).reshape(b, n, 3, h, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # B x L x H x hd
    logits = torch.einsum("bihc,bjhc->bhij", q, k) / math.sqrt(hd)
    if causal:
        logits = logits.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
    p = logits.softmax(dim=-1)
    out = torch.einsum("bhij,bjhc->bihc", p, v).reshape(b, n, d)
    out = out @ attn.proj.weight.double().t() + attn.proj.bias.double()
    return out, p.mean(dim=1)


@pytest.mark.parametrize("causal", [False, True])
def test_per_head_path_matches_reference_and_batched_path(causal: bool) -> None:
    torch.manual_seed(1)
    attn = Attention(48, 4).eval()
    x = torch.randn(2, 37, 48)
    with torch.no_grad():
        out, mean = attn(x, need_attn=True, causal=causal)  # per-head path
    ref_out, ref_mean = reference(attn, x, causal)
    assert mean is not None and mean.dtype == torch.float32 and mean.shape == (2, 37, 37)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean.double(), ref_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mean.sum(-1), torch.ones(2, 37))
    if causal:
        assert bool((mean.triu(1) == 0).all())
    # the batched path (taken when autograd records): same output bits, mean to rounding
    x_grad = x.clone().requires_grad_(True)
    out_b, mean_b = attn(x_grad, need_attn=True, causal=causal)
    assert mean_b is not None and out_b.requires_grad
    assert torch.equal(out, out_b.detach())
    torch.testing.assert_close(mean, mean_b.detach(), atol=1e-7, rtol=1e-6)
    # and the fused path without maps agrees on the output
    with torch.no_grad():
        fused, none = attn(x, causal=causal)
    assert none is None
    torch.testing.assert_close(fused, out, atol=1e-5, rtol=1e-5)


def _mean_map_and_per_head_softmax(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention(64 wide, 8 heads) on a seeded ``1 x 29 x 64`` input: (its mean map, and
    softmax(q k^T / sqrt(d)) of every head written out, ``1 x 8 x 29 x 29``)."""
    torch.manual_seed(seed)
    attn = Attention(64, 8).eval()
    x = torch.randn(1, 29, 64)
    with torch.no_grad():
        _, mean = attn(x, need_attn=True)
        qkv = attn.qkv(x).reshape(1, 29, 3, 8, 8).permute(2, 0, 3, 1, 4)
        q, k, _ = qkv.unbind(0)
        probs = ((q * (1.0 / math.sqrt(8))) @ k.transpose(-2, -1)).softmax(dim=-1)
    assert mean is not None
    return mean, probs


def test_per_head_mean_is_a_sequential_sum_over_heads() -> None:
    mean, probs = _mean_map_and_per_head_softmax(seed=2)
    total = probs[:, 0].clone()
    for i in range(1, 8):
        total = total + probs[:, i]
    assert torch.equal(mean, total / 8)


def test_more_threads_use_the_batched_path() -> None:
    torch.set_num_threads(2)  # (the autouse fixture restores the count)
    mean, probs = _mean_map_and_per_head_softmax(seed=4)
    assert torch.equal(mean, probs.mean(dim=1))


def test_per_head_path_half_precision_on_cpu() -> None:
    torch.manual_seed(3)
    attn = Attention(32, 2).eval()
    x = torch.randn(1, 17, 32)
    with torch.no_grad():
        ref_out, ref_mean = attn(x, need_attn=True)
        attn.to(torch.bfloat16)
        out, mean = attn(x.bfloat16(), need_attn=True)
    assert out.dtype == torch.bfloat16 and mean is not None and mean.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref_out, atol=0.05, rtol=0.05)
    torch.testing.assert_close(mean, ref_mean, atol=0.02, rtol=0.0)
