"""End to end on random-weight backbones: shapes, ranges, determinism, ablation switches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from pseudo_models import PROMPTS, small_config, tiny_models

from ssrseg.cam.gradcam import gradcam
from ssrseg.config import ConfigError
from ssrseg.pseudo.labeler import PseudoLabeler
from ssrseg.rectify.affinity import refine_with_transition, transition_matrix
from ssrseg.rectify.sgc import slic_superpixels

LABELS = [(0, 2), (1,)]


@pytest.mark.parametrize("size", [(24, 40), (48, 32), (16, 56)])
def test_end_to_end_shapes_ranges_determinism(
    make_labeler: Callable[..., PseudoLabeler], size: tuple[int, int]
) -> None:
    labeler = make_labeler()
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    out = labeler(images, LABELS)
    h, w = size[0] // 8, size[1] // 8
    assert out.grid == (h, w)
    assert [tuple(c.shape) for c in out.cams] == [(2, h, w), (1, h, w)]
    assert [tuple(r.shape) for r in out.refined] == [(2, *size), (1, *size)]
    assert out.labels.shape == (2, *size) and out.labels.dtype == torch.long
    for cam, ref in zip(out.cams, out.refined, strict=True):
        assert float(cam.min()) >= 0 and float(cam.max()) <= 1
        assert float(ref.min()) >= 0 and float(ref.max()) <= 1 + 1e-6
    # Labels only name the image's own classes (+1) or background.
    assert set(out.labels[0].unique().tolist()) <= {0, 1, 3}
    assert set(out.labels[1].unique().tolist()) <= {0, 2}
    assert len(out.clip_out.tokens) == 3 and out.patch_emb.shape == (2, h * w, 16)
    assert [tuple(s.shape) for s in out.scores] == [(3, *size), (2, *size)]
    again = labeler(images, LABELS)
    assert torch.equal(out.labels, again.labels)
    for a, b in zip(out.refined, again.refined, strict=True):
        assert torch.equal(a, b)


def test_batch_equals_single_images(make_labeler: Callable[..., PseudoLabeler]) -> None:
    labeler = make_labeler()
    images = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(1))
    out = labeler(images, LABELS)
    for i in range(2):
        one = labeler(images[i : i + 1], [LABELS[i]])
        torch.testing.assert_close(one.refined[0], out.refined[i], atol=5e-4, rtol=1e-3)
        assert torch.equal(one.labels[0], out.labels[i])


def test_initial_cam_row_is_upsampled_cam(make_labeler: Callable[..., PseudoLabeler]) -> None:
    labeler = make_labeler(
        "affinity.use_clip_attention=false",
        "affinity.use_dino_attention=false",
        "par.enabled=false",
    )
    images = torch.rand(1, 3, 16, 24)
    out = labeler(images, [(1,)])
    expected = torch.nn.functional.interpolate(
        out.cams[0][None], size=(16, 24), mode="bilinear", align_corners=False
    )[0]
    torch.testing.assert_close(out.refined[0], expected)
    assert out.clip_out.attentions == {}
    bg = 1 - expected.amax(dim=0)
    assert torch.equal(out.labels[0], torch.where(expected[0] > bg, 2, 0))


def test_clip_only_row_matches_manual_refinement(
    make_labeler: Callable[..., PseudoLabeler],
) -> None:
    labeler = make_labeler("affinity.use_dino_attention=false", "affinity.mask=none")
    images = torch.rand(1, 3, 24, 24)
    out = labeler(images, [(0, 1)])
    vis = labeler.clip.visual
    scale = labeler.raw_logit_scale
    res = gradcam(vis, images, [(0, 1)], labeler.class_emb, labeler.bg_emb, scale, attn_last=2)
    attn = (res.vit.attentions[1] + res.vit.attentions[2]) / 2
    ref = refine_with_transition(transition_matrix(attn), res.cams[0][None])
    up = torch.nn.functional.interpolate(ref, size=(24, 24), mode="bilinear")[0]
    torch.testing.assert_close(out.refined[0], up, atol=1e-5, rtol=1e-4)


def test_given_superpixels_equal_computed_ones(make_labeler: Callable[..., PseudoLabeler]) -> None:
    labeler = make_labeler()
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    img = (images[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    sp = slic_superpixels(img, 12, 10.0)[None]
    a = labeler(images, [(2,)])
    b = labeler(images, [(2,)], superpixels=sp)
    assert torch.equal(a.labels, b.labels)
    with pytest.raises(ValueError, match="superpixels"):
        labeler(images, [(2,)], superpixels=sp[:, :16])


def test_slic_runs_on_the_background_thread(
    make_labeler: Callable[..., PseudoLabeler], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without given superpixels, SLIC runs on the labeller's background thread (overlapping
    the backbones) with the 8-bit images, and the result is the computed-inline one; an error
    there reaches the caller."""
    import threading

    import ssrseg.pseudo.labeler as labeler_module

    labeler = make_labeler()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    threads: list[str] = []

    def recording(img: Any, n: int, c: float) -> torch.Tensor:
        threads.append(threading.current_thread().name)
        return slic_superpixels(img, n, c)

    monkeypatch.setattr(labeler_module, "slic_superpixels", recording)
    a = labeler(images, LABELS)
    assert len(threads) == 2 and all(t.startswith("ssrseg-slic") for t in threads)
    u8 = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    sp = torch.stack([slic_superpixels(im, 12, 10.0) for im in u8])
    b = labeler(images, LABELS, superpixels=sp)
    assert torch.equal(a.labels, b.labels)
    assert all(torch.equal(x, y) for x, y in zip(a.refined, b.refined, strict=True))

    def broken(img: Any, n: int, c: float) -> torch.Tensor:
        raise RuntimeError("slic failed")

    monkeypatch.setattr(labeler_module, "slic_superpixels", broken)
    with pytest.raises(RuntimeError, match="slic failed"):
        labeler(images, LABELS)


def test_box_and_sgc_rows_and_no_labels(make_labeler: Callable[..., PseudoLabeler]) -> None:
    images = torch.rand(2, 3, 24, 32)
    for mask in ("box", "sgc"):
        out = make_labeler(f"affinity.mask={mask}")(images, [(), (1, 2)])
        assert out.cams[0].shape == (0, 3, 4) and out.refined[0].shape == (0, 24, 32)
        assert torch.equal(out.labels[0], torch.zeros(24, 32, dtype=torch.long))
        assert out.masks[1].shape == (2, 3, 4)
        assert set(out.masks[1].unique().tolist()) <= {0.0, 1.0}


def test_projected_space_uses_cmpa_heads(make_labeler: Callable[..., PseudoLabeler]) -> None:
    class Heads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.isa = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8))
            self.tsa = torch.nn.Linear(16, 8)

        @property
        def tau(self) -> torch.Tensor:
            return torch.tensor(0.05)

        def project_image(self, x: torch.Tensor) -> torch.Tensor:
            return self.isa(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:2], -1)

        def project_text(self, t: torch.Tensor) -> torch.Tensor:
            return self.tsa(t)

    torch.manual_seed(0)
    heads = Heads().train()
    labeler = make_labeler("cam.projected=true")
    images = torch.rand(2, 3, 16, 16)
    raw = make_labeler()(images, LABELS)
    out = labeler(images, LABELS, cmpa=heads)
    assert heads.training  # mode restored
    assert int(heads.isa[1].num_batches_tracked) == 0  # CAM pass leaves BN statistics alone
    assert not torch.allclose(out.cams[0], raw.cams[0])
    one = labeler(images[:1], LABELS[:1], cmpa=heads)  # eval-mode BN: batch-independent
    torch.testing.assert_close(one.cams[0], out.cams[0], atol=1e-5, rtol=1e-4)

    # cam.projected_target=patch_embeddings: the projected CAM is gradcam's embedding reading
    # through the (eval-mode) heads; the raw CAM ignores the option
    emb = make_labeler("cam.projected=true", "cam.projected_target=patch_embeddings")
    out_emb = emb(images, LABELS, cmpa=heads)
    heads.eval()
    with torch.no_grad():
        cls = torch.nn.functional.normalize(heads.project_text(emb.class_emb), dim=-1)
        bg = torch.nn.functional.normalize(heads.project_text(emb.bg_emb), dim=-1)
    ref = gradcam(
        emb.clip.visual, images, LABELS, cls, bg, 20.0, image_proj=heads.project_image,
        attn_last=0, target="patch_embeddings",
    )  # fmt: skip
    heads.train()
    for got, want in zip(out_emb.cams, ref.cams, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out_emb.cams[0], out.cams[0], atol=1e-3)
    raw_emb = make_labeler("cam.projected_target=patch_embeddings")(images, LABELS)
    for got, want in zip(raw_emb.cams, raw.cams, strict=True):
        torch.testing.assert_close(got, want)


def test_config_errors() -> None:
    clip, tok, _ = tiny_models()
    with pytest.raises(ConfigError, match="use_dino_attention"):
        PseudoLabeler(clip, tok, None, PROMPTS, small_config())
    with pytest.raises(ConfigError, match=r"affinity\.mask"):
        PseudoLabeler(
            clip,
            tok,
            None,
            PROMPTS,
            small_config("affinity.mask=boxes", "affinity.use_dino_attention=false"),
        )


def test_labeller_is_frozen_and_stays_in_eval(make_labeler: Callable[..., PseudoLabeler]) -> None:
    labeler = make_labeler()
    labeler.train()
    assert not labeler.training and not labeler.clip.training
    assert not any(p.requires_grad for p in labeler.parameters())
    assert labeler.class_emb.shape == (3, 16) and labeler.bg_emb.shape == (2, 16)
    torch.testing.assert_close(labeler.class_emb.norm(dim=1), torch.ones(3))


def test_options_cam_size_mask_target_decoder_affinity(
    make_labeler: Callable[..., PseudoLabeler],
) -> None:
    images = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(3))
    base = make_labeler()(images, [(0, 1)])
    small = make_labeler("pseudo.cam_size=20")(images, [(0, 1)])
    assert small.labels.shape == (1, 24, 40) and small.scores[0].shape == (3, 12, 20)
    assert set(small.labels.unique().tolist()) <= {0, 1, 2}
    masked_a = make_labeler("affinity.mask_target=affinity")(images, [(0, 1)])
    assert masked_a.refined[0].shape == (2, 24, 40)
    assert float(masked_a.refined[0].max()) <= 1 + 1e-6
    # An all-ones decoder affinity leaves T unchanged; a zero one blocks all propagation.
    rfm = make_labeler("affinity.decoder_affinity=true")
    ones = rfm(images, [(0, 1)], decoder_affinity=torch.ones(1, 15, 15))
    torch.testing.assert_close(ones.refined[0], base.refined[0])
    zero = rfm(images, [(0, 1)], decoder_affinity=torch.zeros(1, 15, 15))
    assert torch.equal(zero.refined[0], torch.zeros_like(zero.refined[0]))


def test_par_runs_at_reduced_size(make_labeler: Callable[..., PseudoLabeler]) -> None:
    from ssrseg.rectify.labels import with_background
    from ssrseg.rectify.par import par_refine

    images = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(4))
    labeler = make_labeler("pseudo.par_downscale=2")
    out = labeler(images, [(2,)])
    scores = with_background(out.refined[0][None], 1.0)
    low = torch.nn.functional.interpolate(scores, size=(16, 24), mode="bilinear")
    ref = par_refine(images, low, labeler.cfg.par)
    ref = torch.nn.functional.interpolate(ref, size=(32, 48), mode="bilinear")[0]
    torch.testing.assert_close(out.scores[0], ref)
    full = make_labeler("pseudo.par_downscale=1")(images, [(2,)])
    torch.testing.assert_close(
        full.scores[0], par_refine(images, scores, labeler.cfg.par)[0], atol=1e-6, rtol=1e-5
    )
