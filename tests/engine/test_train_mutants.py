"""Trainer.train_step / Trainer.validate contracts that test_train*.py leave open (issue 26,
mutation triage; docs/mutation/engine.train.md lists what each test kills).

train_step: every batch tensor moved to the trainer's device, the background text embeddings
handed to the prototype loss, stale gradients dropped (not zeroed), the non-finite-loss message,
the GradScaler path, tau in the step's values and the K-means refresh (timing, bank, text
embeddings). validate: the CMPA CAMs switched on exactly when the training step switches them
on, unlabelled and unreadable samples skipped, images moved to the device, and the logits
upsampled with align_corners=False.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
from tests_model_fakes import FAST_TRAIN, one_thread, tiny_config, tiny_ssr_model

import ssrseg.engine.train as train_module
from ssrseg.config import SSRConfig
from ssrseg.data.base import Sample
from ssrseg.engine.train import Trainer
from ssrseg.errors import BadInputError
from ssrseg.rectify.cmpa import FeatureBank

__all__ = ["one_thread"]  # autouse fixture


def _cfg(**over: object) -> SSRConfig:
    return tiny_config(**{**FAST_TRAIN, "train__iterations": 10, **over})


def _batch(seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.rand(2, 3, 32, 32, generator=g), "labels": [(0,), (1, 2)]}


class _Recorder:
    """Stands in for a batch tensor: records the arguments of its ``.to`` calls (the trainer
    calls nothing else on a batch tensor before moving it)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.calls.append((args, kwargs))
        return self.tensor.to(*args, **kwargs)


# ---------------------------------------------------------------------------- train_step
def test_train_step_moves_every_batch_tensor_to_the_device(tmp_path: Path) -> None:
    """Images asynchronously (non_blocking: the loader pins memory), superpixels, the crop
    validity mask (pseudo labels) and the masks (gt supervision) to ``trainer.device``."""
    cfg = _cfg(cmpa__start_iter=100)
    trainer = Trainer(cfg, tiny_ssr_model(cfg, 0), [], tmp_path, progress=False)
    dev = trainer.device
    batch = _batch()
    images = _Recorder(batch["images"])
    sp = _Recorder(torch.randint(0, 5, (2, 32, 32), generator=torch.Generator().manual_seed(1)))
    valid = _Recorder(torch.ones(2, 32, 32, dtype=torch.bool))
    trainer.train_step({**batch, "images": images, "superpixels": sp, "valid": valid})
    assert images.calls == [((dev,), {"non_blocking": True})]
    assert sp.calls == [((dev,), {})] and valid.calls == [((dev,), {})]

    gt = _cfg(train__supervision="gt", cmpa__enabled="false")
    trainer = Trainer(gt, tiny_ssr_model(gt, 0), [], tmp_path / "gt", progress=False)
    masks = _Recorder(torch.zeros(2, 32, 32, dtype=torch.long))
    trainer.train_step({**batch, "masks": masks})
    assert masks.calls == [((trainer.device,), {})]


def test_background_text_embeddings_reach_the_prototype_loss(tmp_path: Path) -> None:
    cfg = _cfg(cmpa__start_iter=0, cmpa__background_term="any")
    model = tiny_ssr_model(cfg, 0)
    g = torch.Generator().manual_seed(2)
    model.labeler.bg_emb = F.normalize(
        torch.randn(2, model.labeler.class_emb.shape[1], generator=g), dim=-1
    )
    seen: list[dict[str, Any]] = []
    real = model.losses.forward

    def spy(tokens, grid, targets, proto_inputs=None):  # type: ignore[no-untyped-def]
        seen.append(dict(proto_inputs))
        return real(tokens, grid, targets, proto_inputs)

    model.losses.forward = spy  # type: ignore[method-assign]
    Trainer(cfg, model, [], tmp_path, progress=False).train_step(_batch())
    assert seen[0]["bg_emb"] is model.labeler.bg_emb


def test_stale_gradients_are_dropped_not_zeroed(tmp_path: Path) -> None:
    """Before cmpa.start_iter CMPA is outside the loss: gradients left on it (the labeller's
    Grad-CAM) are set to None, so AdamW skips it (a zeroed gradient would still apply weight
    decay and move it)."""
    cfg = _cfg(cmpa__start_iter=100)
    model = tiny_ssr_model(cfg, 0)
    assert model.cmpa is not None
    trainer = Trainer(cfg, model, [], tmp_path, progress=False)
    before = [p.detach().clone() for p in model.cmpa.parameters()]
    for p in model.cmpa.parameters():
        p.grad = torch.ones_like(p)
    trainer.train_step(_batch())
    assert all(p.grad is None for p in model.cmpa.parameters())
    for p, b in zip(model.cmpa.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)


def test_non_finite_loss_names_the_step_and_the_value(tmp_path: Path) -> None:
    cfg = _cfg(cmpa__enabled="false")
    trainer = Trainer(cfg, tiny_ssr_model(cfg, 0), [], tmp_path, progress=False)
    trainer.losses = lambda *a, **k: {"loss": torch.tensor(float("nan"))}  # type: ignore[assignment]
    with pytest.raises(FloatingPointError, match=r"^step 0: loss is nan \("):
        trainer.train_step(_batch())


def test_grad_scaler_path_gives_the_plain_update(tmp_path: Path) -> None:
    """The fp16 path scales the loss and unscales the gradients before the optimiser step: with
    a power-of-two scale and no overflow the weights move exactly as without a scaler."""
    cfg = _cfg(cmpa__enabled="false")
    start = tiny_ssr_model(cfg, 0).trainable_state_dict()
    states = []
    for scaled in (False, True):
        model = tiny_ssr_model(cfg, 0)
        trainer = Trainer(cfg, model, [], tmp_path / str(scaled), progress=False)
        if scaled:
            trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        torch.manual_seed(3)  # the decoder's dropout draws
        trainer.train_step(_batch())
        states.append({k: v.clone() for k, v in model.trainable_state_dict().items()})
    plain, scaled_state = states
    assert any(not torch.equal(plain[k], start[k]) for k in plain)
    for k in plain:
        torch.testing.assert_close(scaled_state[k], plain[k])


def test_step_values_report_tau(tmp_path: Path) -> None:
    cfg = _cfg(cmpa__start_iter=100)
    model = tiny_ssr_model(cfg, 0)
    values = Trainer(cfg, model, [], tmp_path, progress=False).train_step(_batch())
    assert model.cmpa is not None
    assert values["tau"] == pytest.approx(float(model.cmpa.tau.detach()))


def test_kmeans_refresh_timing_bank_and_text_embeddings(tmp_path: Path) -> None:
    """cmpa.prototypes=kmeans, refresh every 2 steps: one refresh, after step 2, with the
    trainer's bank (the two steps' features) and the labeller's class text embeddings."""
    cfg = _cfg(cmpa__prototypes="kmeans", cmpa__refresh_every=2, cmpa__start_iter=0)
    model = tiny_ssr_model(cfg, 0)
    assert model.cmpa is not None
    trainer = Trainer(cfg, model, [], tmp_path, progress=False)
    assert isinstance(trainer.acc, FeatureBank)
    calls: list[tuple[int, Any, torch.Tensor, int]] = []
    real = model.cmpa.refresh

    def spy(acc, text_emb=None):  # type: ignore[no-untyped-def]
        calls.append((trainer.step, acc, text_emb, acc.total))
        return real(acc, text_emb)

    model.cmpa.refresh = spy  # type: ignore[method-assign]
    totals = []
    for s in range(3):
        trainer.train_step(_batch(s))
        totals.append(trainer.acc.total)
    assert len(calls) == 1
    step, acc, text_emb, total = calls[0]
    assert step == 2 and acc is trainer.acc
    # the bank held both steps' features at the refresh, and was emptied after it
    assert total > totals[0] > 0 and totals[1] == 0
    torch.testing.assert_close(text_emb, torch.as_tensor(model.labeler.class_emb))


# ------------------------------------------------------------------------------ validate
def _sample(i: int, labels: tuple[int, ...], mask: np.ndarray) -> Sample:
    image = np.full((mask.shape[0], mask.shape[1], 3), 90 + 10 * i, dtype=np.uint8)
    return Sample(f"im{i}", image, labels, mask, f"mem://{i}")


class _Data:
    """Items in order; an item given as None raises BadInputError (an unreadable file)."""

    def __init__(self, items: list[Sample | None]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        item = self.items[i]
        if item is None:
            raise BadInputError(f"mem://{i}", "unreadable")
        return item


def test_validation_uses_cmpa_cams_exactly_when_training_does(tmp_path: Path) -> None:
    """The labeller gets CMPA in validation iff step >= cmpa.start_iter and step >=
    cmpa.projected_cam_from (train_step's rule); an unlabelled image is skipped, not the end of
    the split, and an unreadable one is skipped too."""
    mask = np.zeros((16, 16), dtype=np.uint8)
    data = _Data([None, _sample(0, (), mask), _sample(1, (0,), mask), _sample(2, (1,), mask)])
    cfg = _cfg(cmpa__start_iter=2, cmpa__projected_cam_from=3)
    model = tiny_ssr_model(cfg, 0)
    trainer = Trainer(cfg, model, data, tmp_path, progress=False)
    same = dataclasses.replace(cfg, cmpa=dataclasses.replace(cfg.cmpa, start_iter=3))
    seen = []
    for config, step in ((cfg, 2), (cfg, 3), (same, 3)):
        trainer.cfg, trainer.step = config, step
        model.labeler.calls.clear()
        assert "pseudo_miou" in trainer.validate()
        seen.append(list(model.labeler.calls))
    assert seen == [[False, False], [True, True], [True, True]]


def test_validation_moves_images_to_the_device_and_skips_unreadable_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mask = np.zeros((16, 16), dtype=np.uint8)
    data = _Data([None, _sample(1, (0,), mask)])
    cfg = _cfg(cmpa__enabled="false")
    trainer = Trainer(cfg, tiny_ssr_model(cfg, 0), data, tmp_path, val_set=data, progress=False)
    devices = []
    real = train_module._to_images01

    def spy(image, device):  # type: ignore[no-untyped-def]
        devices.append(device)
        return real(image, device)

    monkeypatch.setattr(train_module, "_to_images01", spy)
    scores = trainer.validate()
    assert set(scores) == {"val_miou", "pseudo_miou"}
    assert devices == [trainer.device, trainer.device]


def test_validation_upsamples_logits_without_align_corners(tmp_path: Path) -> None:
    """Logits 1 x 3 (class 1 minus class 0: -0.5, -0.5, +0.5) upsampled to 8 x 12: with
    align_corners=False the sign changes at source x = 1.5, i.e. output x = 7.5, so columns
    8..11 are class 1 (align_corners=True would put it at 8.25: columns 9..11). A mask with
    class 1 on columns 8..11 then scores an mIoU of exactly 1."""
    cfg = _cfg(cmpa__enabled="false", train__val_images=1)
    model = tiny_ssr_model(cfg, 0)
    logits = torch.full((1, 4, 1, 3), -10.0)
    logits[0, 0, 0] = 0.5
    logits[0, 1, 0] = torch.tensor([0.0, 0.0, 1.0])
    model.segment = lambda images01: logits  # type: ignore[method-assign]
    mask = np.zeros((8, 12), dtype=np.uint8)
    mask[:, 8:] = 1  # mask values are logit channels (0 background)
    val = _Data([_sample(0, (0,), mask)])
    trainer = Trainer(cfg, model, _Data([]), tmp_path, val_set=val, progress=False)
    assert trainer.validate()["val_miou"] == 1.0


def test_class_mean_refresh_sums_the_prototype_statistics_over_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cmpa.prototypes=class_mean: before the refresh the trainer all-reduces the accumulator's
    sums and counts (in place; a no-op in one process, so the spy records what it is given)."""
    cfg = _cfg(cmpa__refresh_every=1, cmpa__start_iter=0)
    trainer = Trainer(cfg, tiny_ssr_model(cfg, 0), [], tmp_path, progress=False)
    reduced: list[torch.Tensor] = []
    real = train_module.all_reduce_sum_

    def spy(tensor, ctx):  # type: ignore[no-untyped-def]
        reduced.append(tensor)
        return real(tensor, ctx)

    monkeypatch.setattr(train_module, "all_reduce_sum_", spy)
    trainer.train_step(_batch())
    acc = trainer.acc
    assert acc is not None and not isinstance(acc, FeatureBank)
    assert len(reduced) == 2 and reduced[0] is acc.sum and reduced[1] is acc.count
