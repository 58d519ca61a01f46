"""WeCLIP+'s DINO decoder branch (decoder.dino_branch) on random tiny backbones.

Shapes, the 0.5 / 0.5 logit fusion, the shared transformer, the concatenated affinity
features, the CAM feedback (checked against hand values and against a run without it), the
layer choice, the wiring into SSRModel (losses, segment, checkpoints) and a few trainer steps;
with a DINO v1 of CLIP's patch (the toy world's case, no resize) and a DINOv2 of patch 7 next to
a patch-8 CLIP (resized onto CLIP's grid).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests_model_fakes import (  # one_thread: autouse fixture
    FakeLabeler,
    TinySegDataset,
    one_thread,  # noqa: F401
    tiny_clip,
    word_clip,
)

from ssrseg.backbones.clip import CLIP
from ssrseg.backbones.dinov2 import dinov2_config
from ssrseg.backbones.tokenizer import WordTokenizer
from ssrseg.backbones.vit import VisionTransformer
from ssrseg.cam.prompts import ClassPrompts
from ssrseg.config import ConfigError, SSRConfig, load_config
from ssrseg.model.decoder import SegDecoder
from ssrseg.model.dino_branch import (
    DinoBranch,
    Feedback,
    branch_forward,
    select_attention_layers,
    weight_cams,
)
from ssrseg.model.losses import feature_affinity
from ssrseg.model.ssr import SSRModel
from ssrseg.pseudo.labeler import PseudoLabeler

WORDS = ("a", "photo", "of", "c0", "c1", "c2", "grass", "sky")
PROMPTS = ClassPrompts(
    names=("c0", "c1", "c2"), prompts=("c0", "c1", "c2"), background=("grass", "sky"),
    template="a photo of {}",
)  # fmt: skip
LABELS = [(0, 2), (1,)]


def _config(*over: str) -> SSRConfig:
    base = [
        "cmpa.in_dim=16", "cmpa.hidden_dim=16", "cmpa.out_dim=8", "decoder.embed_dim=16",
        "decoder.num_heads=2", "decoder.num_layers=1", "loss.aff_radius=2", "train.amp=off",
        "par.iterations=2", "par.dilations=[1,2]", "affinity.clip_layers=2", "affinity.mask=box",
        "decoder.dino_branch=true", "data.crop_size=32", "data.num_workers=0",
        "data.scale_range=[0.75, 1.25]", "train.batch_size=2", "train.val_every=0",
        "train.log_every=1", "train.warmup_iters=1", "train.lr=1e-3",
    ]  # fmt: skip
    return load_config(None, base + list(over))


def _backbones(dino_kind: str, seed: int = 0) -> tuple[CLIP, WordTokenizer, VisionTransformer]:
    """Patch-8 CLIP; DINO v1 of patch 8 ("v1") or a DINOv2 of patch 7 with registers ("v2")."""
    clip, tok, vision = word_clip(WORDS, seed)
    if dino_kind == "v1":
        dcfg = dataclasses.replace(
            vision, width=24, heads=3, output_dim=None, act="gelu", ln_pre=False, patch_bias=True
        )
    else:
        dcfg = dataclasses.replace(
            dinov2_config("s", registers=True), image_size=28, patch_size=7, width=24,
            layers=2, heads=3,
        )  # fmt: skip
    dino = VisionTransformer(dcfg)
    if dcfg.layer_scale:
        with torch.no_grad():
            for name, p in dino.named_parameters():
                if name.endswith("gamma"):
                    p.uniform_(0.5, 1.5)
    return clip, tok, dino


def _model(dino_kind: str = "v1", *over: str) -> SSRModel:
    cfg = _config(*over)
    clip, tok, dino = _backbones(dino_kind)
    labeler = PseudoLabeler(clip, tok, dino, PROMPTS, cfg)
    torch.manual_seed(1)
    return SSRModel(cfg, labeler, num_classes=4)


# ------------------------------------------------------------------------- pure pieces
def _decoder_and_branch() -> tuple[SegDecoder, DinoBranch]:
    cfg = _config().decoder
    torch.manual_seed(3)
    return SegDecoder(cfg, 32, 2, 4).eval(), DinoBranch(cfg, 24).eval()


def test_branch_fuses_logits_half_and_half_through_the_shared_transformer() -> None:
    decoder, branch = _decoder_and_branch()
    tokens = [torch.randn(2, 1 + 12, 32) for _ in range(3)]
    feats = [torch.randn(2, 12, 24)]
    with torch.no_grad():
        out = branch_forward(decoder, branch, tokens, (3, 4), feats, (3, 4))
        clip_logits, clip_feats = decoder(tokens, (3, 4))
        fused = branch.fuse(branch.mlps[0](feats[0]))  # B x N x E, same grid: no resize
        dino_logits = decoder.classifier(decoder.transformer(fused))  # the same layers
    dino_logits = dino_logits.unflatten(1, (3, 4)).permute(0, 3, 1, 2)
    assert out.logits.shape == (2, 4, 3, 4) and out.features.shape == (2, 32, 3, 4)
    torch.testing.assert_close(out.clip, clip_logits)
    torch.testing.assert_close(out.dino, dino_logits)
    torch.testing.assert_close(out.logits, 0.5 * clip_logits + 0.5 * dino_logits)
    torch.testing.assert_close(out.features[:, :16], clip_feats)
    torch.testing.assert_close(out.features[:, 16:], fused.unflatten(1, (3, 4)).permute(0, 3, 1, 2))


def test_branch_resizes_dino_features_to_the_clip_grid() -> None:
    _, branch = _decoder_and_branch()
    feats = [torch.randn(1, 5 * 6, 24)]
    with torch.no_grad():
        got = branch(feats, (5, 6), (3, 4))
        fused = branch.fuse(branch.mlps[0](feats[0])).unflatten(1, (5, 6)).permute(0, 3, 1, 2)
        ref = F.interpolate(fused, size=(3, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, ref.flatten(2).transpose(1, 2))


def test_dino_weight_moves_the_fusion() -> None:
    decoder, branch = _decoder_and_branch()
    branch.weight = 0.25
    tokens = [torch.randn(1, 1 + 6, 32) for _ in range(2)]
    with torch.no_grad():
        out = branch_forward(decoder, branch, tokens, (2, 3), [torch.randn(1, 6, 24)], (2, 3))
    torch.testing.assert_close(out.logits, 0.75 * out.clip + 0.25 * out.dino)


def test_weight_cams_by_hand() -> None:
    cams = torch.tensor([[[[1.0, 0.5]], [[0.2, 0.4]]], [[[0.6, 0.8]], [[0.0, 0.0]]]])  # 2x2x1x2
    prob = torch.tensor(
        [
            [[[0.1, 0.1]], [[0.5, 0.25]], [[0.2, 0.2]], [[0.2, 0.45]]],
            [[[0.3, 0.3]], [[0.1, 0.1]], [[0.5, 0.1]], [[0.1, 0.5]]],
        ]
    )  # B x K=4 x 1 x 2; class c sits at channel c + 1
    out = weight_cams(cams, prob, [(0, 2), (1,)])
    expected = torch.tensor([[[[0.5, 0.125]], [[0.04, 0.18]]], [[[0.3, 0.08]], [[0.0, 0.0]]]])
    torch.testing.assert_close(out, expected)


def test_select_attention_layers_by_hand() -> None:
    """Masses 2.0, 1.0, 3.0 (mean 2.0): layers 0 and 2 kept, their mean returned."""
    a = [torch.full((1, 2, 2), m / 4) for m in (2.0, 1.0, 3.0)]
    got = select_attention_layers(a)
    torch.testing.assert_close(
        got, torch.full((1, 2, 2), 0.625 / (2 + 1e-5) * 2), rtol=0, atol=1e-6
    )


# ------------------------------------------------------------------------ in the model
@pytest.mark.parametrize("dino_kind", ["v1", "v2"])
def test_model_losses_segment_and_checkpoint(dino_kind: str) -> None:
    model = _model(dino_kind)
    images = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    out = model.labeler(images, LABELS)  # fills the hook with this batch's DINO features
    assert out.grid == (4, 5)
    tokens = [t.detach() for t in out.clip_out.tokens]
    res = model.losses(tokens, out.grid, out.labels)
    res["loss"].backward()
    head = model.decoder.dino_branch
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    with pytest.raises(RuntimeError, match="no DINO features"):
        model.losses(tokens, out.grid, out.labels)  # features are used once

    model.eval()
    logits = model.segment(images)
    assert logits.shape == (2, 4, 4, 5)
    visual, dino = model.visual, model.labeler.dino
    with torch.no_grad():
        o = visual.forward_intermediates(visual.normalize(images))
        clip_logits, _ = model.decoder(o.tokens, o.grid)
        size = (4 * dino.cfg.patch_size, 5 * dino.cfg.patch_size)
        small = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        d = dino.forward_intermediates(dino.normalize(small))
        feats = dino.head(d.last[:, d.prefix :])
        dino_logits, _ = model.decoder.decode(head([feats], d.grid, (4, 5)), (4, 5))
    assert d.grid == (4, 5) and (d.prefix == 5) == (dino_kind == "v2")
    torch.testing.assert_close(logits, 0.5 * clip_logits + 0.5 * dino_logits)

    state = model.trainable_state_dict()
    assert any(k.startswith("decoder.dino_branch.") for k in state)
    other = _model(dino_kind)
    other.load_trainable_state_dict(state)
    torch.testing.assert_close(other.eval().segment(images), logits)


def test_feedback_is_neutral_when_the_decoder_is_sure_and_agrees() -> None:
    """All-ones probabilities and affinity change nothing; the real feedback does."""
    model = _model("v1")
    images = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(1))
    hook = model.labeler.branch_hook
    real = model.labeler(images, LABELS)

    def ones(tokens, grid, d_out):
        hook(tokens, grid, d_out)
        n = grid[0] * grid[1]
        return Feedback(torch.ones(2, 4, *grid), torch.ones(2, n, n))

    model.labeler.branch_hook = ones
    neutral = model.labeler(images, LABELS)
    model.labeler.branch_hook = None
    plain = model.labeler(images, LABELS)
    for a, b, c in zip(neutral.refined, plain.refined, real.refined, strict=True):
        torch.testing.assert_close(a, b)
        assert (a - c).abs().max() > 1e-3
    assert torch.equal(neutral.labels, plain.labels)


def test_layer_select_is_wired_under_feedback(monkeypatch: pytest.MonkeyPatch) -> None:
    """With dino_layer_select the labeller averages CLIP attention through WeCLIP+'s choice (here
    spied and replaced by the plain mean: the result must then equal the run without it)."""
    import ssrseg.pseudo.labeler as labeler_module

    calls: list[int] = []

    def plain_mean(attns):
        calls.append(len(attns))
        return torch.stack([a.float() for a in attns]).mean(0)

    monkeypatch.setattr(labeler_module, "select_attention_layers", plain_mean)
    on = _model("v1", "decoder.dino_layer_select=true", "affinity.clip_layers=3").eval()
    off = _model("v1", "affinity.clip_layers=3").eval()  # eval: no dropout in the feedback
    images = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(2))
    a, b = on.labeler(images, [(1,)]), off.labeler(images, [(1,)])
    assert calls == [3]
    torch.testing.assert_close(a.refined[0], b.refined[0])


def test_config_errors() -> None:
    cfg = _config()
    with pytest.raises(ConfigError, match="needs a DINO backbone"):
        SSRModel(cfg, FakeLabeler(tiny_clip(), 3), 4)
    clip, tok, dino = _backbones("v1")
    gt = _config("train.supervision=gt", "cmpa.enabled=false")
    with pytest.raises(ConfigError, match="supervision=pseudo"):
        SSRModel(gt, PseudoLabeler(clip, tok, dino, PROMPTS, gt), 4)


def test_trainer_runs_with_the_branch(tmp_path: Path) -> None:
    from ssrseg.engine.train import Trainer

    cfg = _config("train.iterations=3", "train.ckpt_every=3", "cmpa.enabled=false")
    model = _model("v2", "train.iterations=3", "train.ckpt_every=3", "cmpa.enabled=false")
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    Trainer(cfg, model, TinySegDataset(n=4), tmp_path, progress=False).fit()
    after = model.trainable_state_dict()
    moved = [k for k in after if k.startswith("decoder.dino_branch.") and "weight" in k]
    assert moved and all(not torch.equal(before[k], after[k]) for k in moved)
    assert (tmp_path / "ckpt_3" / "model.safetensors").is_file()


def test_features_fed_back_match_the_decoder_affinity() -> None:
    model = _model("v1").eval()
    images = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    captured = {}
    hook = model.labeler.branch_hook

    def spy(tokens, grid, d_out):
        fb = hook(tokens, grid, d_out)
        captured["fb"], captured["tokens"], captured["d"] = fb, tokens, d_out
        return fb

    model.labeler.branch_hook = spy
    model.labeler(images, [(0,)])
    fb = captured["fb"]
    feats = [model.labeler.dino.head(captured["d"].last[:, 1:])]
    with torch.no_grad():
        ref = branch_forward(
            model.decoder, model.decoder.dino_branch, captured["tokens"], (3, 3), feats, (3, 3)
        )
    torch.testing.assert_close(fb.prob, ref.logits.softmax(1))
    torch.testing.assert_close(fb.affinity, feature_affinity(ref.features))
    assert fb.prob.shape == (1, 4, 3, 3) and fb.affinity.shape == (1, 9, 9)


def test_toy_preset_with_the_branch_builds_from_package_weights(tmp_path: Path) -> None:
    """configs/toy.yaml + decoder.dino_branch=true: the toy CLIP and toy DINO (both patch 8)
    load by name and the branch runs without any resize (the toy-world demo's setting)."""
    from ssrseg.pseudo.labeler import build_ssr_model

    toy = Path(__file__).resolve().parents[2] / "configs" / "toy.yaml"
    cfg = load_config(toy, ["decoder.dino_branch=true", f"data.root={tmp_path}"])
    model = build_ssr_model(cfg, num_classes=len(model_classes(cfg)) + 1)
    dino = model.labeler.dino
    assert dino is not None and dino.cfg.patch_size == model.patch_size
    images = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(4))
    out = model.labeler(images, [(0,), (1, 2)])
    res = model.losses([t.detach() for t in out.clip_out.tokens], out.grid, out.labels)
    assert torch.isfinite(res["loss"])
    assert model.eval().segment(images).shape == (2, len(model_classes(cfg)) + 1, 8, 6)


def model_classes(cfg: SSRConfig) -> tuple[str, ...]:
    from ssrseg.cam.prompts import prompts_from_config

    p = cfg.prompts
    return prompts_from_config(p.dataset, p.template, data_root=cfg.data.root).names


def test_build_loads_a_dinov2_file_for_the_branch_with_the_chosen_position_resize(
    tmp_path: Path,
) -> None:
    """build_pseudo_labeler loads DINO for the branch alone (no DINO attention) and applies
    backbone.dino_pos_embed_resize."""
    from ssrseg.backbones.native import save_native
    from ssrseg.pseudo.labeler import build_ssr_model

    _, _, dino = _backbones("v2")
    save_native(tmp_path / "dinov2.safetensors", dino, "dino", dino.cfg)
    toy = Path(__file__).resolve().parents[2] / "configs" / "toy.yaml"
    cfg = load_config(
        toy,
        [
            "decoder.dino_branch=true",
            "affinity.use_dino_attention=false",
            f"backbone.dino={tmp_path / 'dinov2.safetensors'}",
            "backbone.dino_pos_embed_resize=bicubic_offset",
            f"data.root={tmp_path}",
        ],
    )
    model = build_ssr_model(cfg, num_classes=len(model_classes(cfg)) + 1)
    loaded = model.labeler.dino
    assert loaded is not None and loaded.cfg.num_registers == 4
    assert loaded.pos_embed_resize == "bicubic_offset"
    out = model.labeler(torch.rand(1, 3, 32, 40), [(0,)])
    assert out.grid == (4, 5) and model.dino_hook is not None
