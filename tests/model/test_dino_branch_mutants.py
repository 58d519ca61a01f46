"""The DINO branch's contracts that test_dino_branch.py leaves open (issue 26, mutation triage).

Config bounds and error messages, the per-layer MLP (Linear, ReLU, Linear), several DINO
layers concatenated on channels, inputs of another dtype than the head's (a half-precision
DINO), the layer choice per image, and the hook's bookkeeping (a fresh hook, a batch-size
mismatch, a decoder that reads a single CLIP layer). Tiny random backbones as in
test_dino_branch.py (docs/mutation/model.dino_branch.md lists what each test kills).
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from test_dino_branch import PROMPTS, _backbones, _config
from tests_model_fakes import FakeLabeler, one_thread, tiny_clip  # noqa: F401 (autouse)

from ssrseg.backbones.vit import ViTOutput
from ssrseg.config import ConfigError, DecoderConfig
from ssrseg.model.decoder import SegDecoder
from ssrseg.model.dino_branch import (
    DinoBranch,
    DinoBranchHook,
    branch_forward,
    dino_patch_features,
    select_attention_layers,
    weight_cams,
)
from ssrseg.model.ssr import SSRModel
from ssrseg.pseudo.labeler import PseudoLabeler


def _dcfg(**over: object) -> DecoderConfig:
    return dataclasses.replace(_config().decoder, **over)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- the head
def test_head_config_bounds_and_messages() -> None:
    """dino_layers >= 1 and dino_weight in the closed [0, 1]: both ends are legal weights
    (CLIP only, DINO only); the errors name the key and the value."""
    with pytest.raises(ConfigError, match=r"^decoder\.dino_layers must be >= 1, got 0$"):
        DinoBranch(_dcfg(dino_layers=0), 24)
    for w in (0.0, 1.0):
        assert DinoBranch(_dcfg(dino_weight=w), 24).weight == w
    for w in (1.5, -0.1):
        with pytest.raises(
            ConfigError, match=re.escape(f"decoder.dino_weight must be in [0, 1], got {w}")
        ):
            DinoBranch(_dcfg(dino_weight=w), 24)


def test_head_is_linear_relu_linear_per_layer_then_a_channel_fusion() -> None:
    """Two DINO layers: each through its own Linear -> ReLU -> Linear, concatenated on
    channels (layer order kept), fused by one Linear; recomputed from the weights by hand."""
    torch.manual_seed(0)
    branch = DinoBranch(_dcfg(dino_layers=2), 24).eval()
    feats = [torch.randn(2, 6, 24), torch.randn(2, 6, 24)]
    with torch.no_grad():
        got = branch(feats, (2, 3), (2, 3))
        maps = []
        for mlp, f in zip(branch.mlps, feats, strict=True):
            lin1, lin2 = mlp[0], mlp[2]
            hidden = torch.clamp(f @ lin1.weight.T + lin1.bias, min=0.0)
            maps.append(hidden @ lin2.weight.T + lin2.bias)
        ref = torch.cat(maps, dim=2) @ branch.fuse.weight.T + branch.fuse.bias
    assert got.shape == (2, 6, 16)
    torch.testing.assert_close(got, ref)
    # the ReLU matters: some hidden units are negative before it on these inputs
    with torch.no_grad():
        assert (branch.mlps[0][0](feats[0]) < 0).any()


def test_head_casts_dino_features_to_its_own_dtype() -> None:
    """A DINO run in another precision (here float64 features into a float32 head) is cast
    to the head's dtype, so the result equals the head on the cast features."""
    torch.manual_seed(1)
    branch = DinoBranch(_dcfg(), 24).eval()
    f64 = torch.randn(1, 4, 24, dtype=torch.float64)
    with torch.no_grad():
        got = branch([f64], (2, 2), (2, 2))
        ref = branch([f64.float()], (2, 2), (2, 2))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)


def test_head_wrong_number_of_layers_message() -> None:
    branch = DinoBranch(_dcfg(), 24)
    with pytest.raises(ValueError, match=r"^DINO branch needs 1 layers, got 2$"):
        branch([torch.zeros(1, 4, 24)] * 2, (2, 2), (2, 2))


# --------------------------------------------------------------------- DINO features
def test_patch_features_take_all_blocks_when_exactly_enough_ran() -> None:
    """n_layers equal to the number of blocks run is enough (oldest first, prefix dropped);
    one more is an error naming both counts."""
    _, _, dino = _backbones("v1")
    images = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    out = dino.forward_intermediates(dino.normalize(images))
    n = len(out.tokens)
    with torch.no_grad():
        feats = dino_patch_features(dino, out, n)
        ref = [dino.head(t[:, 1:]) for t in out.tokens]
    assert len(feats) == n
    for a, b in zip(feats, ref, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=rf"^DINO ran {n} blocks, the branch needs {n + 1}$"):
        dino_patch_features(dino, out, n + 1)


# ------------------------------------------------------------------------ CAM feedback
def test_weight_cams_rounds_the_probability_to_the_cam_dtype_first() -> None:
    """Half-precision CAMs: the probability is cast to half before the product (1.0004 -> 1.0,
    so a CAM of 3 stays 3.0); multiplying in float32 and rounding after would give 3.0012 ->
    3.00195 (half's spacing at 3 is 2 ** -9)."""
    cams = torch.full((1, 1, 1, 1), 3.0, dtype=torch.float16)
    prob = torch.tensor([0.0, 1.0004]).reshape(1, 2, 1, 1)
    out = weight_cams(cams, prob, [(0,)])
    assert out.dtype == torch.float16 and out.item() == 3.0


# --------------------------------------------------------------------- layer choice
def test_select_attention_layers_chooses_per_image() -> None:
    """Two images, three layers of masses (2, 1, 3) and (1, 5, 3): means 2 and 3, so image 0
    keeps layers 0 and 2, image 1 keeps layers 1 and 2 (a mean over the whole batch, 2.5,
    would keep only layer 2 of image 0 and would change the result)."""
    masses = torch.tensor([[2.0, 1.0, 3.0], [1.0, 5.0, 3.0]])  # B x L
    attns = [masses[:, layer, None, None].expand(2, 2, 2) / 4 for layer in range(3)]
    got = select_attention_layers(attns)
    kept0 = (2.0 + 3.0) / 4 / (2 + 1e-5)
    kept1 = (5.0 + 3.0) / 4 / (2 + 1e-5)
    expected = torch.stack([torch.full((2, 2), kept0), torch.full((2, 2), kept1)])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- the hook
def _hook(num_clip_layers: int = 2) -> tuple[DinoBranchHook, ViTOutput, torch.Tensor]:
    """A hook around a decoder that reads ``num_clip_layers`` CLIP layers, and a DINO forward
    of a batch of two 16 x 24 images (grid 2 x 3)."""
    cfg = _config().decoder
    _, _, dino = _backbones("v1")
    torch.manual_seed(2)
    decoder = SegDecoder(cfg, 32, num_clip_layers, 4).eval()
    branch = DinoBranch(cfg, dino.cfg.width).eval()
    images = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        d_out = dino.forward_intermediates(dino.normalize(images))
    return DinoBranchHook(decoder, branch, dino, cfg), d_out, images


def test_fresh_hook_refuses_the_losses_with_the_full_message() -> None:
    hook, _, _ = _hook()
    msg = (
        "decoder.dino_branch: no DINO features for this batch; the pseudo labeller must run "
        "on the batch before the losses (train.supervision=pseudo)"
    )
    with pytest.raises(RuntimeError, match="^" + re.escape(msg) + "$"):
        hook.train_outputs([torch.zeros(2, 7, 32)] * 2, (2, 3))


def test_hook_with_a_single_clip_layer_and_a_batch_mismatch() -> None:
    """A decoder reading one CLIP layer gets one token tensor: the hook's outputs equal the
    branch on the stored DINO features; features of 2 images for 1 image are refused."""
    hook, d_out, _ = _hook(num_clip_layers=1)
    tokens = [torch.randn(2, 1 + 6, 32)]
    with torch.no_grad():
        hook(tokens, (2, 3), d_out)
        got = hook.train_outputs(tokens, (2, 3))
        feats = dino_patch_features(hook.dino, d_out, 1)
        ref = branch_forward(hook.decoder, hook.branch, tokens, (2, 3), feats, (2, 3))
    torch.testing.assert_close(got.logits, ref.logits)
    hook(tokens, (2, 3), d_out)
    with pytest.raises(
        RuntimeError, match=r"^decoder\.dino_branch: DINO features of 2 images for 1$"
    ):
        hook.train_outputs([tokens[0][:1]], (2, 3))


# ---------------------------------------------------------------------------- wiring
def test_attach_error_messages_in_full() -> None:
    cfg = _config()
    msg = (
        "decoder.dino_branch=true needs a DINO backbone (backbone.use_dino=true and "
        "backbone.dino set)"
    )
    with pytest.raises(ConfigError, match="^" + re.escape(msg) + "$"):
        SSRModel(cfg, FakeLabeler(tiny_clip(), 3), 4)
    clip, tok, dino = _backbones("v1")
    gt = _config("train.supervision=gt", "cmpa.enabled=false")
    with pytest.raises(
        ConfigError, match=r"^decoder\.dino_branch=true needs train\.supervision=pseudo$"
    ):
        SSRModel(gt, PseudoLabeler(clip, tok, dino, PROMPTS, gt), 4)
