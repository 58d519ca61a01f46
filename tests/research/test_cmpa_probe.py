"""Pieces of the CMPA probe on hand-made inputs (the full probe needs the toy CLIP: run
``python -m research.cmpa_probe --quick``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from research.cmpa_probe import (
    HeadRun,
    ProbeData,
    at_scale,
    background_accuracy,
    cams_miou,
    ground_truth_weights,
    home_context_leak,
    image_accuracy,
    object_background_auc,
    object_background_cosine,
    pair_accuracy,
    pairwise_auc,
    patch_separation,
    recalibrated,
    similarity_cams,
    train_heads,
    with_ground_truth_pooling,
)
from ssrseg.config import load_config
from ssrseg.data.toy import BACKGROUNDS, CLASS_NAMES, HOME
from ssrseg.rectify.cmpa import CMPA


def _cmpa() -> CMPA:
    cfg = load_config(None, ["cmpa.in_dim=4", "cmpa.hidden_dim=6", "cmpa.out_dim=3"])
    torch.manual_seed(0)
    return CMPA(cfg.cmpa, num_classes=2)


def _data() -> ProbeData:
    # 2 images of 2 patches; image 0 shows class 0 (patch embeddings along e0), image 1 class 1
    emb = torch.tensor([[[1.0, 0, 0, 0], [0.9, 0.1, 0, 0]], [[0, 1.0, 0, 0], [0, 0.8, 0.2, 0]]])
    cams = [torch.ones(1, 1, 2), torch.ones(1, 1, 2)]
    return ProbeData(
        torch.zeros(2, 3, 8, 16), torch.zeros(2, 8, 16), [(0,), (1,)], emb, cams, (1, 2)
    )


def test_raw_space_accuracies_by_hand() -> None:
    data = _data()
    text = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    assert pair_accuracy(None, data, [0, 1], text) == 100.0
    assert image_accuracy(None, data, [0, 1], text) == 100.0
    swapped = text.flip(0)
    assert pair_accuracy(None, data, [0, 1], swapped) == 0.0
    assert image_accuracy(None, data, [0, 1], swapped) == 0.0


def test_recalibrated_batchnorm_holds_the_exact_statistics() -> None:
    cmpa = _cmpa()
    data = _data()
    text = torch.randn(2, 4)
    out = recalibrated(cmpa, data, text, batch=1)
    bn = out.isa[1]
    assert isinstance(bn, nn.BatchNorm1d) and bn.running_mean is not None
    hidden = cmpa.isa[0](data.patch_emb.reshape(4, 4))  # every patch through the first Linear
    assert torch.allclose(bn.running_mean, hidden.mean(0), atol=1e-6)
    tsa_bn = out.tsa[1]
    assert isinstance(tsa_bn, nn.BatchNorm1d) and tsa_bn.running_mean is not None
    assert torch.allclose(tsa_bn.running_mean, cmpa.tsa[0](text).mean(0), atol=1e-6)
    assert not out.training and cmpa.isa[1].running_mean is not bn.running_mean  # a copy


def test_at_scale_sets_the_temperature() -> None:
    assert at_scale(_cmpa(), 15.0).tau.item() == pytest.approx(1 / 15)


def test_train_heads_frozen_tau_and_schedule() -> None:
    cfg = load_config(
        None,
        ["cmpa.in_dim=4", "cmpa.hidden_dim=6", "cmpa.out_dim=3", "train.batch_size=2",
         "train.warmup_iters=1", "cmpa.refresh_every=2"],
    )  # fmt: skip
    data = _data()
    text = torch.randn(2, 4)
    seen: list[int] = []
    cmpa, last = train_heads(
        cfg, data, HeadRun("frozen", 4, fixed_scale=10.0), text, torch.randn(1, 4),
        checkpoints=[2], on_checkpoint=lambda step, _: seen.append(step),
    )  # fmt: skip
    assert last["tau"] == pytest.approx(0.1) and seen == [2]
    assert cmpa.proto_valid.tolist() == [1, 1] and math.isfinite(last["loss"])
    neg, _ = train_heads(
        cfg, data, HeadRun("neg", 2, background_negatives=True), text, torch.randn(3, 4)
    )
    assert neg.proto_valid.sum() == 2


def test_background_accuracy_pools_where_the_cam_is_low() -> None:
    # image 0: CAM on patch 0 only, so its background feature is patch 1 (along e1): nearest
    # to background prompt 1, but its context is 0 -> miss; image 1: CAM on patch 0, background
    # feature = patch 1 = (0, 0.8, 0.2, 0): nearest to prompt 1 = its context -> hit
    data = _data()
    data.contexts = [0, 1]
    data.cams = [torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[1.0, 0.0]]])]
    data.patch_emb[0, 1] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    bg = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    assert background_accuracy(None, data, [0, 1], bg) == 50.0


def test_train_heads_with_the_background_term_and_recalibration() -> None:
    cfg = load_config(
        None,
        ["cmpa.in_dim=4", "cmpa.hidden_dim=6", "cmpa.out_dim=3", "train.batch_size=2",
         "cmpa.refresh_every=2"],
    )  # fmt: skip
    data = _data()
    data.cams = [torch.tensor([[[1.0, 0.2]]]), torch.tensor([[[0.3, 1.0]]])]
    text, bg = torch.randn(2, 4), torch.randn(3, 4)
    run = HeadRun("bg", 2, {"background_term": "raw_nearest"})
    cmpa, last = train_heads(cfg, data, run, text, bg)
    assert cmpa.cfg.background_term == "raw_nearest" and math.isfinite(last["loss"])
    # TSA trained on [classes + background prompts]: the exact statistics cover all five texts
    out = recalibrated(cmpa, data, text, bg_emb=bg)
    tsa_bn = out.tsa[1]
    assert isinstance(tsa_bn, nn.BatchNorm1d) and tsa_bn.running_mean is not None
    both = torch.cat([text, bg])
    assert torch.allclose(tsa_bn.running_mean, cmpa.tsa[0](both).mean(0), atol=1e-6)


def test_ground_truth_weights_are_patch_shares_in_label_order() -> None:
    # 4 x 4 mask on a 2 x 2 grid: class 0 fills the top-left patch, class 2 half the bottom-right
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[0, :2, :2] = 1
    mask[0, 3, 2:] = 3
    (w,) = ground_truth_weights(mask, [(2, 0)], (2, 2))
    assert w.shape == (2, 2, 2)
    assert torch.equal(w[0], torch.tensor([[0.0, 0.0], [0.0, 0.5]]))  # class 2 first
    assert torch.equal(w[1], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    data = _data()
    data.masks = torch.zeros(2, 8, 16, dtype=torch.long)
    data.masks[1, :, 8:] = 2  # class 1 on the right half = the second patch of the 1 x 2 grid
    gt = with_ground_truth_pooling(data)
    assert torch.equal(gt.cams[0], torch.zeros(1, 1, 2))
    assert torch.equal(gt.cams[1], torch.tensor([[[0.0, 1.0]]]))
    assert data.cams[1].sum() == 2  # the original is untouched


def test_home_context_leak_by_hand() -> None:
    # class 0 (boat, home water): image 0 on water predicts 3 boat pixels, 1 on background;
    # image 1 on grass predicts 4, 2 on background -> 33.3% at home, 50% elsewhere
    data = _data()
    data.labels = [(0,), (0,)]
    data.contexts = [BACKGROUNDS.index("water"), BACKGROUNDS.index("grass")]
    data.masks = torch.tensor([[[0, 1, 1, 0]], [[1, 1, 0, 0]]])
    preds = [torch.tensor([[1, 1, 1, 0]]), torch.tensor([[1, 1, 1, 1]])]
    assert CLASS_NAMES[0] == "boat" and HOME["boat"] == "water"
    assert home_context_leak(preds, data, [0, 1]) == {"leak_home": 33.3, "leak_else": 50.0}


def test_pairwise_auc_by_hand() -> None:
    # pairs: (3>1) (3>2) (2>1) (2=2) -> (1 + 1 + 1 + 0.5) / 4
    assert pairwise_auc(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 2.0])) == 0.875


def test_patch_separation_by_hand() -> None:
    # image 0 (class 0): patch 0 is the object, patch 1 background; cos to text 0: 1.0 vs 0.9/|.|
    data = _data()
    data.masks = torch.zeros(2, 8, 16, dtype=torch.long)
    data.masks[0, :, :8] = 1
    data.masks[1, :, 8:] = 2
    text = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    out = patch_separation(None, data, [0, 1], text)
    # image 0: object cos 1.0 > background 0.994 -> 1; image 1: object (0, .8, .2) cos 0.97 to
    # class 1 < background patch (0, 1, 0) cos 1 -> 0; both object patches nearest their class
    assert out == {"patch_auc": 50.0, "patch_top1": 100.0}
    assert patch_separation(None, data, [0, 1], text.flip(0))["patch_top1"] == 0.0


def test_similarity_cams_and_their_miou_by_hand() -> None:
    # image 0 (class 0): patch cosines to class 0 are 1 and 0.994, to the background prompt 0
    # and 0: softmax at scale 1 gives 0.731 > 0.730 -> min-max [1, 0]; image 1 (class 1): 1 vs
    # 0.970 to the class, 0 vs 0.243 to the background prompt -> [1, 0]
    data = _data()
    text, bg = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), torch.tensor([[0, 0, 1.0, 0]])
    cams = similarity_cams(None, data, [0, 1], text, bg, 1.0)
    assert [c.shape for c in cams] == [(1, 1, 2), (1, 1, 2)]
    assert torch.allclose(cams[0], torch.tensor([[[1.0, 0.0]]]), atol=1e-4)
    assert torch.allclose(cams[1], torch.tensor([[[1.0, 0.0]]]), atol=1e-4)
    # bilinear 1 x 2 -> 8 x 16: the CAM is above its background (1 - CAM) on columns 0..7, so
    # both images predict their class on the left half. Truth: image 0's class on the left,
    # image 1's on the right -> IoU background 64 / 192, class 0 1, class 1 0
    data.masks = torch.zeros(2, 8, 16, dtype=torch.long)
    data.masks[0, :, :8] = 1
    data.masks[1, :, 8:] = 2
    cfg = load_config(None, [])
    assert cams_miou(cams, data, [0, 1], cfg, 3) == pytest.approx(100 * (1 / 3 + 1) / 3)


def test_object_background_auc_reads_grid_maps_in_label_order() -> None:
    # image 1 shows class 1 on its right patch: a map high on the right gives AUC 100, the
    # flipped map 0; image 0 has no object patch (all background) and is skipped
    data = _data()
    data.masks = torch.zeros(2, 8, 16, dtype=torch.long)
    data.masks[1, :, 8:] = 2
    right = [torch.zeros(1, 1, 2), torch.tensor([[[0.2, 0.9]]])]
    assert object_background_auc(right, data, [0, 1]) == 100.0
    assert object_background_auc([m.flip(-1) for m in right], data, [0, 1]) == 0.0


def test_object_background_cosine_by_hand() -> None:
    # image 1: object patch (0, .8, .2, 0) vs background patch (0, 1, 0, 0): cos 0.8 / 0.8246;
    # image 0 has no object patch and is skipped
    data = _data()
    data.masks = torch.zeros(2, 8, 16, dtype=torch.long)
    data.masks[1, :, 8:] = 2
    assert object_background_cosine(data, [0, 1]) == round(0.8 / (0.68**0.5), 3)


def test_run_probe_scores_the_chosen_scenes() -> None:
    # the raw row on scenes 3..5 of a 6-scene cache equals the labeller's mIoU on those scenes
    # rendered on their own; a scored range outside the cache is refused
    from research.cmpa_probe import (
        INITIAL_CAM,
        build_labeler,
        label_and_score,
        merged,
        render,
        run_probe,
    )
    from ssrseg.protocol.demo import default_config_path

    rows = run_probe(6, 3, 2, 4, match=["no such run"], lean=True, progress=False, score_start=3)
    assert len(rows) == 1 and rows[0]["row"].startswith("raw CLIP CAM")
    cfg = merged(load_config(default_config_path(), []), INITIAL_CAM)
    images, masks, labels, _ = render("train", 3, 0, start=3)
    expected = label_and_score(build_labeler(cfg), images, masks, labels)
    assert rows[0]["miou"] == round(expected, 1)
    with pytest.raises(ValueError, match="not cached"):
        run_probe(6, 3, 2, 4, match=["no such run"], lean=True, progress=False, score_start=4)
