"""Trainer: schedule, data order, loss decrease, validation and kill-and-resume equality."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
from tests_model_fakes import (  # one_thread: autouse fixture
    FAST_TRAIN,
    TinySegDataset,
    kill_and_resume,
    one_thread,  # noqa: F401
    record_loss_targets,
    tiny_config,
    tiny_ssr_model,
)

from ssrseg.config import SSRConfig, load_config
from ssrseg.engine.schedule import StepBatchSampler, batch_indices, lr_factor
from ssrseg.engine.train import Trainer, amp_dtype, fit_to_patch, param_groups

FAST = {**FAST_TRAIN, "cmpa__refresh_every": 2}


def _cfg(**over: object) -> SSRConfig:
    return tiny_config(**{**FAST, **over})


def test_lr_factor_warmup_then_poly() -> None:
    assert lr_factor(0, 100, 10, 0.1, 1.0) == pytest.approx(0.1)
    assert lr_factor(5, 100, 10, 0.1, 1.0) == pytest.approx(0.55)  # WeCLIP: the ramp alone
    assert lr_factor(5, 100, 10, 0.1, 1.0, warmup_poly=True) == pytest.approx(0.95 * 0.55)
    assert lr_factor(10, 100, 10, 0.1, 1.0) == pytest.approx(0.9)
    assert lr_factor(50, 100, 10, 0.1, 2.0) == pytest.approx(0.25)
    assert lr_factor(100, 100, 10, 0.1, 1.0) == 0.0


def test_data_order_is_an_epoch_permutation_split_over_ranks() -> None:
    n, b, world = 10, 2, 2
    epoch0 = [
        i for s in range(2) for r in range(world) for i in batch_indices(s, n, b, world, r, 0)
    ]
    assert len(set(epoch0)) == 8  # 2 global batches of 4, tail of 2 dropped
    assert batch_indices(2, n, b, world, 0, 0) != batch_indices(0, n, b, world, 0, 0)
    full = list(StepBatchSampler(n, b, 0, 6, seed=3))
    resumed = list(StepBatchSampler(n, b, 4, 6, seed=3))
    assert full[4:] == resumed  # indices and augmentation seeds
    assert batch_indices(0, 1, 3, 1, 0, 0) == [0, 0, 0]  # tiny set is repeated


def test_param_groups_and_amp() -> None:
    cfg = tiny_config(train__lr=1e-3, train__decoder_lr_mult=10)
    groups = {g["name"]: g for g in param_groups(tiny_ssr_model(cfg, 0), cfg)}
    assert groups["decoder"]["base_lr"] == pytest.approx(1e-2)
    assert groups["cmpa"]["base_lr"] == pytest.approx(1e-3)
    assert groups["tau"]["weight_decay"] == 0.0 and len(groups["tau"]["params"]) == 1
    assert amp_dtype("auto", torch.device("cpu")) is None
    assert amp_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ValueError, match=r"train\.amp"):
        amp_dtype("fp8", torch.device("cpu"))


def test_training_reduces_the_loss_and_logs(tmp_path: Path) -> None:
    cfg = _cfg(
        train__iterations=30,
        train__lr=2e-3,
        train__warmup_iters=3,
        train__ckpt_every=100,
        train__log_every=10,
        cmpa__refresh_every=1000,  # the symmetric term would join mid-run and lift the total
    )
    trainer = Trainer(cfg, tiny_ssr_model(cfg, 0), TinySegDataset(), tmp_path, progress=False)
    assert trainer.fit() == 30
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert [r["step"] for r in records] == [10, 20, 30]
    assert losses[-1] < 0.8 * losses[0]
    assert (tmp_path / "ckpt_30" / "model.safetensors").is_file()
    assert (tmp_path / "config.yaml").is_file()


def test_cmpa_schedule_and_prototype_refresh(tmp_path: Path) -> None:
    cfg = _cfg(
        train__iterations=4,
        train__ckpt_every=100,
        cmpa__start_iter=1,
        cmpa__projected_cam_from=3,
        cam__projected="true",
    )
    model = tiny_ssr_model(cfg, 0)
    trainer = Trainer(cfg, model, TinySegDataset(), tmp_path, progress=False)
    trainer.fit()
    # CMPA CAMs handed to the labeller from step 3 only; L_proto from step 1
    assert model.labeler.calls == [False, False, False, True]
    assert model.cmpa is not None and model.cmpa.proto_valid.sum() > 0  # refreshed at step 2
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "proto" not in records[0] and "proto" in records[1]


def test_validation_reports_both_mious(tmp_path: Path) -> None:
    cfg = _cfg(train__iterations=2, train__val_every=2, train__ckpt_every=100)
    data = TinySegDataset(n=3)
    trainer = Trainer(cfg, tiny_ssr_model(cfg, 0), data, tmp_path, val_set=data, progress=False)
    trainer.fit()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = next(r for r in records if "val_miou" in r)
    assert 0.0 <= val["val_miou"] <= 1.0 and 0.0 <= val["pseudo_miou"] <= 1.0


def test_kill_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    # dropout on, prototypes refreshed every 2 steps: everything must be restored exactly
    cfg = _cfg(train__iterations=6, train__ckpt_every=3)
    kill_and_resume(cfg, tmp_path, stop_after=3)  # asserts 6 steps and equal states
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_with_another_schedule_is_refused(tmp_path: Path) -> None:
    cfg = _cfg(train__iterations=2, train__ckpt_every=2)
    Trainer(cfg, tiny_ssr_model(cfg, 0), TinySegDataset(), tmp_path, progress=False).fit()
    other = _cfg(train__iterations=4, train__ckpt_every=2)
    trainer = Trainer(other, tiny_ssr_model(other, 0), TinySegDataset(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="config differs"):
        trainer.fit(resume=tmp_path)


def test_crop_padding_is_ignored_in_pseudo_labels(tmp_path: Path) -> None:
    # images rescaled to half the crop: 3/4 of every crop is padding
    cfg = _cfg(train__iterations=1, train__ckpt_every=100, data__scale_range="[0.5, 0.5]")
    model = tiny_ssr_model(cfg, 0)
    seen = record_loss_targets(model)
    Trainer(cfg, model, TinySegDataset(), tmp_path, progress=False).fit()
    ignored = (seen[0] == 255).float().mean().item()
    assert ignored == pytest.approx(0.75)


def test_gt_supervision_trains_on_masks_without_the_labeller(tmp_path: Path) -> None:
    cfg = _cfg(
        train__iterations=2, train__ckpt_every=100, train__supervision="gt", cmpa__enabled="false"
    )
    model = tiny_ssr_model(cfg, 0)
    Trainer(cfg, model, TinySegDataset(), tmp_path, progress=False).fit()
    assert model.labeler.calls == []
    with pytest.raises(ValueError, match=r"cmpa\.enabled=false"):
        bad = _cfg(train__supervision="gt")
        Trainer(bad, tiny_ssr_model(bad, 0), TinySegDataset(), tmp_path, progress=False)


def test_presets_define_the_papers_schedules() -> None:
    root = Path(__file__).parents[2] / "configs"
    voc = load_config(root / "voc.yaml")
    coco = load_config(root / "coco.yaml")
    assert (voc.train.iterations, coco.train.iterations) == (30000, 80000)
    assert (voc.affinity.box_threshold, coco.affinity.box_threshold) == (0.4, 0.7)
    assert (voc.prompts.dataset, coco.prompts.dataset) == ("voc", "coco")
    assert (voc.data.dataset, coco.data.dataset) == ("voc", "coco")
    assert voc.train.batch_size == coco.train.batch_size == 4
    assert voc.cmpa.tau_init == 0.05 and voc.cmpa.refresh_every == 5000
    assert voc.cam.projected and voc.cmpa.projected_cam_from == 5000


def test_missing_tensorboard_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    cfg = _cfg(train__iterations=1, train__tensorboard="true")
    trainer = Trainer(cfg, tiny_ssr_model(cfg, 0), TinySegDataset(), tmp_path, progress=False)
    with pytest.raises(RuntimeError, match="pip install tensorboard"):
        trainer.fit()


def test_fit_to_patch_resizes_to_multiples() -> None:
    assert fit_to_patch(torch.rand(1, 3, 37, 30), 8).shape[-2:] == (40, 32)
    x = torch.rand(1, 3, 16, 24)
    assert fit_to_patch(x, 8) is x
