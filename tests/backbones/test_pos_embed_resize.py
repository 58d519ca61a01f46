"""backbone.pos_embed_resize: CLIP-ES's bilinear + fp16 position-table resize vs bicubic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backbone_fakes import cls_and_patch_tokens, tiny_clip_config, tiny_vision

from ssrseg.backbones.clip import CLIP
from ssrseg.backbones.tokenizer import WordTokenizer
from ssrseg.backbones.vit import (
    VisionTransformer,
    interpolate_pos_embed,
    interpolate_pos_embed_bilinear_fp16,
)
from ssrseg.config import ConfigError, load_config

FP16_OF_0_1 = 0.0999755859375  # 0.1 in fp16: 1638 / 2**14


def _hand_table() -> torch.Tensor:
    """Class position then a 2 x 2 grid, 2 channels: channel 0 = 2 * row + col, channel 1 =
    0.1 everywhere (not an fp16 number)."""
    grid = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    ch0 = torch.cat([torch.tensor([5.0]), grid.flatten()])
    return torch.stack([ch0, torch.full((5,), 0.1)], dim=1)


def test_bilinear_fp16_by_hand():
    out = interpolate_pos_embed_bilinear_fp16(_hand_table(), (4, 4), 2)
    assert out.shape == (17, 2) and out.dtype == torch.float32
    # align_corners=False, 2 -> 4: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1)
    # so along a side [a, b] -> [a, .75a + .25b, .25a + .75b, b]
    rows = torch.tensor([0.0, 0.5, 1.5, 2.0])  # 2 * row
    cols = torch.tensor([0.0, 0.25, 0.75, 1.0])
    assert torch.equal(out[1:, 0], (rows[:, None] + cols[None, :]).flatten())
    assert out[0, 0] == 5.0
    # every value rounded to fp16, the class position included
    assert (out[:, 1] == FP16_OF_0_1).all()
    bicubic = interpolate_pos_embed(_hand_table(), (4, 4), 2)
    assert bicubic[0, 1] == pytest.approx(0.1, abs=1e-9)  # bicubic keeps float32 values
    # cubic weights are not bilinear's
    assert not torch.equal(bicubic[1:, 0], out[1:, 0])


def test_bilinear_fp16_equals_interpolate_then_half():
    torch.manual_seed(0)
    table = torch.randn(1 + 14 * 14, 8) * 0.05
    out = interpolate_pos_embed_bilinear_fp16(table, (20, 28), 14)
    grid = table[1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(20, 28), mode="bilinear", align_corners=False)
    ref = torch.cat([table[:1], ref.permute(0, 2, 3, 1).reshape(-1, 8)]).half().float()
    assert torch.equal(out, ref)
    bicubic = interpolate_pos_embed(table, (20, 28), 14)
    assert (bicubic - out).abs().max() > 1e-3  # the two switches really differ
    # at the pretrained grid: the identity resize, still rounded (CLIP-ES resizes every time)
    same = interpolate_pos_embed_bilinear_fp16(table, (14, 14), 14)
    assert torch.equal(same, table.half().float()) and not torch.equal(same, table)
    assert interpolate_pos_embed(table, (14, 14), 14) is table


def test_vision_transformer_switch():
    torch.manual_seed(1)
    vit = VisionTransformer(tiny_vision()).eval()  # 32 px, patch 8: pretrained grid 4
    x = torch.randn(1, 3, 48, 40)
    assert vit.pos_embed_resize == "bicubic"  # DINO and plain loads keep bicubic
    with torch.no_grad():
        bicubic, _ = vit.embed(x)
        vit.pos_embed_resize = "bilinear_fp16"
        bilinear, grid = vit.embed(x)
        tokens = cls_and_patch_tokens(vit, x)
        pos = interpolate_pos_embed_bilinear_fp16(vit.pos_embed, (6, 5), 4)
        assert grid == (6, 5)
        assert torch.equal(bilinear, vit.ln_pre(tokens + pos))
        assert not torch.allclose(bilinear, bicubic, atol=1e-4)
        vit.pos_embed_resize = "nearest"
        with pytest.raises(ValueError, match="pos_embed_resize"):
            vit.embed(x)


def test_config_default_and_labeler_wiring(tmp_path, monkeypatch):
    assert load_config().backbone.pos_embed_resize == "bilinear_fp16"
    with pytest.raises(ConfigError, match="pos_embed_resize"):
        load_config(overrides=["backbone.pos_embed_resize=bilinear"])

    import ssrseg.pseudo.labeler as labeler_module
    from ssrseg.pseudo.labeler import build_pseudo_labeler

    cfg_model = tiny_clip_config()
    words = ["a", "clean", "origami", "cat", "dog", "sky", *(f"w{i}" for i in range(90))]
    tok = WordTokenizer(words, context_length=cfg_model.text.context_length)
    monkeypatch.setattr(labeler_module, "load_clip", lambda *a, **k: (CLIP(cfg_model).eval(), tok))
    (tmp_path / "classes.txt").write_text("cat\ndog\n[background]\nsky\n")
    common = [
        f"prompts.dataset={tmp_path / 'classes.txt'}",
        "backbone.use_dino=false",
        "affinity.use_dino_attention=false",
        "affinity.mask=none",
    ]
    for mode in ("bilinear_fp16", "bicubic"):
        cfg = load_config(overrides=[*common, f"backbone.pos_embed_resize={mode}"])
        assert build_pseudo_labeler(cfg).clip.visual.pos_embed_resize == mode
