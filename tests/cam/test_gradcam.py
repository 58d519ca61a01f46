"""Batched Grad-CAM equals the one-image, one-class-at-a-time definition of SSR_SPEC section 3."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from ssrseg.backbones.clip import CLIP
from ssrseg.cam.gradcam import class_scores, gradcam, minmax, normalise_cams, pad_labels


def reference_cam(
    clip: CLIP, image01: Tensor, classes: list[int], cls_emb: Tensor, bg: Tensor, scale: float,
    c: int, proj=None, passes: int = 2,
) -> Tensor:  # fmt: skip
    """Slow reference: one image, one class, one backward (CLIP-ES loop); min-max ``passes``
    times (CLIP-ES: per target layer, then after averaging the one layer)."""
    vis = clip.visual
    x, grid = vis.embed(vis.normalize(image01[None]))
    with torch.no_grad():
        for block in vis.blocks[:-1]:
            x, _ = block(x)
    h = vis.blocks[-1].norm1(x).detach().requires_grad_(True)
    y, _ = vis.blocks[-1].forward_from_norm1(x, h)
    emb = vis.head(y[:, 1:])
    if proj is not None:
        emb = proj(emb)
    img = F.normalize(emb.mean(dim=1), dim=-1)[0]
    texts = torch.cat([cls_emb[classes], bg])
    probs = (scale * texts @ img).softmax(dim=0)
    (g,) = torch.autograd.grad(probs[classes.index(c)], h)
    w = g[0, 1:].mean(dim=0)
    cam = torch.relu(h[0, 1:].detach() @ w).reshape(grid)
    for _ in range(passes):
        cam = cam - cam.min()
        cam = cam / (1e-7 + cam.max())
    return cam


def _embs(seed: int, c: int = 5, g: int = 3, e: int = 16) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        F.normalize(torch.randn(c, e, generator=gen), dim=-1),
        F.normalize(torch.randn(g, e, generator=gen), dim=-1),
    )


@pytest.mark.parametrize("batched", [True, False])
def test_batched_equals_per_class(clip: CLIP, batched: bool) -> None:
    cls_emb, bg = _embs(1)
    images = torch.rand(3, 3, 24, 40, generator=torch.Generator().manual_seed(2))
    labels = [(0, 3, 4), (2,), (1, 4)]
    res = gradcam(clip.visual, images, labels, cls_emb, bg, scale=10.0, batch_classes=batched)
    assert [tuple(c.shape) for c in res.cams] == [(3, 3, 5), (1, 3, 5), (2, 3, 5)]
    for i, lab in enumerate(labels):
        for k, c in enumerate(lab):
            ref = reference_cam(clip, images[i], list(lab), cls_emb, bg, 10.0, c)
            torch.testing.assert_close(res.cams[i][k], ref, atol=2e-4, rtol=1e-3)
            assert float(res.cams[i][k].max()) == pytest.approx(1.0, abs=1e-3)
            assert float(res.cams[i][k].min()) == 0.0


def test_projected_space_uses_image_proj(clip: CLIP) -> None:
    torch.manual_seed(3)
    proj = torch.nn.Linear(16, 8)
    cls_emb, bg = _embs(4, e=8)
    images = torch.rand(2, 3, 16, 24)
    labels = [(1, 2), (0,)]
    res = gradcam(clip.visual, images, labels, cls_emb, bg, scale=20.0, image_proj=proj)
    for i, lab in enumerate(labels):
        for k, c in enumerate(lab):
            ref = reference_cam(clip, images[i], list(lab), cls_emb, bg, 20.0, c, proj=proj)
            torch.testing.assert_close(res.cams[i][k], ref, atol=2e-4, rtol=1e-3)
    assert res.patch_emb.shape == (2, 6, 16)  # raw CLIP space, not projected
    assert not res.patch_emb.requires_grad
    assert all(p.grad is None for p in proj.parameters())


def test_outputs_match_plain_forward(clip: CLIP) -> None:
    cls_emb, bg = _embs(5)
    images = torch.rand(2, 3, 32, 16)
    res = gradcam(clip.visual, images, [(0,), ()], cls_emb, bg, 100.0, attn_last=2)
    ref = clip.visual.forward_intermediates(clip.visual.normalize(images), attn_layers=(1, 2))
    assert len(res.vit.tokens) == 3 and res.vit.grid == (4, 2)
    for a, b in zip(res.vit.tokens, ref.tokens, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert sorted(res.vit.attentions) == [1, 2]
    for k in (1, 2):
        torch.testing.assert_close(res.vit.attentions[k], ref.attentions[k], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.patch_emb, clip.visual(clip.visual.normalize(images)))
    assert res.cams[1].shape == (0, 4, 2)


def test_class_scores_softmax_over_own_classes_and_background() -> None:
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cls_emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    bg = torch.tensor([[0.0, -1.0]])
    ids, valid = pad_labels([(0, 2), (1,)], img.device)
    s = class_scores(img, cls_emb, bg, ids, valid, scale=1.0)
    e = torch.exp
    d0 = e(torch.tensor(1.0)) + e(torch.tensor(0.6)) + e(torch.tensor(0.0))
    torch.testing.assert_close(s[0], torch.stack([e(torch.tensor(1.0)), e(torch.tensor(0.6))]) / d0)
    d1 = e(torch.tensor(1.0)) + e(torch.tensor(-1.0))
    torch.testing.assert_close(s[1], torch.stack([e(torch.tensor(1.0)) / d1, torch.tensor(0.0)]))


def test_minmax_range_and_constant_map() -> None:
    x = torch.tensor([[[2.0, 4.0], [6.0, 10.0]]])
    torch.testing.assert_close(
        minmax(x), torch.tensor([[[0.0, 0.25], [0.5, 1.0]]]), atol=1e-6, rtol=0
    )
    assert torch.equal(minmax(torch.full((1, 2, 2), 3.0)), torch.zeros(1, 2, 2))


def test_autocast_bf16_runs_and_stays_close(clip: CLIP) -> None:
    cls_emb, bg = _embs(6)
    images = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(7))
    labels = [(0, 1), (2,)]
    ref = gradcam(clip.visual, images, labels, cls_emb, bg, 10.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = gradcam(clip.visual, images, labels, cls_emb, bg, 10.0)
    for a, b in zip(low.cams, ref.cams, strict=True):
        assert a.dtype == torch.float32
        assert float((a - b).abs().mean()) < 0.1


def test_two_minmax_passes_differ_on_a_small_range() -> None:
    """CLIP-ES min-max normalises twice; on a raw range of 1e-5 the second pass is not a
    no-op: after one pass the maximum is 1e-5 / (1e-5 + 1e-7) = 0.990099."""
    raw = torch.tensor([[[0.0, 0.5e-5], [1e-5, 0.25e-5]]])
    once = normalise_cams(raw, 1)
    twice = normalise_cams(raw, 2)
    m1 = 1e-5 / (1e-5 + 1e-7)
    torch.testing.assert_close(
        once, torch.tensor([[[0.0, 0.5 * m1], [m1, 0.25 * m1]]]), atol=1e-6, rtol=0
    )
    m2 = m1 / (m1 + 1e-7)
    torch.testing.assert_close(
        twice, torch.tensor([[[0.0, 0.5 * m2], [m2, 0.25 * m2]]]), atol=1e-6, rtol=0
    )
    assert float((twice - once).abs().max()) > 9e-3  # ~1 % of the map, not rounding
    torch.testing.assert_close(twice, minmax(minmax(raw)), atol=0, rtol=0)
    with pytest.raises(ValueError, match="minmax_passes"):
        normalise_cams(raw, 0)


def test_gradcam_minmax_passes_switch(clip: CLIP) -> None:
    """passes=2 (CLIP-ES, the default) is passes=1 normalised once more; both come from the
    same raw CAM, which the result also returns."""
    cls_emb, bg = _embs(8)
    images = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(9))
    labels = [(0, 2), (1,)]
    one = gradcam(clip.visual, images, labels, cls_emb, bg, 10.0, minmax_passes=1)
    two = gradcam(clip.visual, images, labels, cls_emb, bg, 10.0)
    for i in range(2):
        torch.testing.assert_close(two.cams[i], minmax(one.cams[i]), atol=0, rtol=0)
        torch.testing.assert_close(one.cams[i], minmax(one.raw[i]), atol=0, rtol=0)
        assert torch.equal(one.raw[i], two.raw[i])
        assert bool((two.raw[i] >= 0).all())
    # The tiny model's raw ranges are small, so the two defaults differ visibly.
    assert max(float((a - b).abs().max()) for a, b in zip(one.cams, two.cams, strict=True)) > 1e-4
    with pytest.raises(ValueError, match="minmax_passes"):
        gradcam(clip.visual, images, labels, cls_emb, bg, 10.0, minmax_passes=0)


def test_result_scores_are_the_softmax_of_own_classes(clip: CLIP) -> None:
    cls_emb, bg = _embs(10)
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(11))
    res = gradcam(clip.visual, images, [(3, 1)], cls_emb, bg, 30.0)
    img = F.normalize(clip.visual(clip.visual.normalize(images)).mean(dim=1), dim=-1)[0]
    probs = (30.0 * torch.cat([cls_emb[[3, 1]], bg]) @ img).softmax(dim=0)
    torch.testing.assert_close(res.scores[0], probs[:2], atol=1e-6, rtol=1e-5)


def reference_embedding_cam(
    clip: CLIP, image01: Tensor, classes: list[int], cls_emb: Tensor, bg: Tensor, scale: float,
    c: int, proj=None,
) -> Tensor:  # fmt: skip
    """Slow reference of ``target="patch_embeddings"``: a plain forward to the projected patch
    tokens v_p, one class's softmax score of the (projected) patch mean, its gradient w.r.t.
    v_p; channel weights = the spatial mean of that gradient; ReLU(v_p . w), min-max twice."""
    vis = clip.visual
    with torch.no_grad():
        emb = vis(vis.normalize(image01[None]))  # 1 x N x E
    v = emb.clone().requires_grad_(True)
    feats = proj(v) if proj is not None else v
    img = F.normalize(feats.mean(dim=1), dim=-1)[0]
    probs = (scale * torch.cat([cls_emb[classes], bg]) @ img).softmax(dim=0)
    (g,) = torch.autograd.grad(probs[classes.index(c)], v)
    cam = torch.relu(v[0].detach() @ g[0].mean(dim=0))
    patch = vis.cfg.patch_size
    return normalise_cams(cam.reshape(image01.shape[-2] // patch, image01.shape[-1] // patch))


@pytest.mark.parametrize("projected", [False, True])
def test_patch_embedding_target_equals_its_definition(clip: CLIP, projected: bool) -> None:
    torch.manual_seed(4)
    proj = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    e = 8 if projected else 16
    cls_emb, bg = _embs(6, e=e)
    images = torch.rand(2, 3, 16, 24)
    labels = [(1, 2), (0,)]
    image_proj = proj if projected else None
    res = gradcam(
        clip.visual, images, labels, cls_emb, bg, 20.0, image_proj=image_proj,
        target="patch_embeddings",
    )  # fmt: skip
    block = gradcam(clip.visual, images, labels, cls_emb, bg, 20.0, image_proj=image_proj)
    for i, lab in enumerate(labels):
        for k, c in enumerate(lab):
            ref = reference_embedding_cam(
                clip, images[i], list(lab), cls_emb, bg, 20.0, c, image_proj
            )
            torch.testing.assert_close(res.cams[i][k], ref, atol=2e-4, rtol=1e-3)
    # a different reading of the same scores: the block-input CAM is not the same map
    assert not torch.allclose(res.cams[0], block.cams[0], atol=1e-3)
    torch.testing.assert_close(res.patch_emb, block.patch_emb)
    with pytest.raises(ValueError, match="target must be one of"):
        gradcam(clip.visual, images, labels, cls_emb, bg, 20.0, target="ln_post")
