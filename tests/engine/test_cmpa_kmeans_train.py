"""Trainer with the paper's K-means prototypes (cmpa.prototypes=kmeans): refresh timing and
kill-and-resume equality (the feature bank between refreshes is checkpointed)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
from tests_model_fakes import (  # one_thread: autouse fixture
    FAST_TRAIN,
    TinySegDataset,
    kill_and_resume,
    one_thread,  # noqa: F401
    tiny_config,
    tiny_ssr_model,
)

from ssrseg.config import SSRConfig
from ssrseg.engine.train import Trainer
from ssrseg.rectify.cmpa import FeatureBank

KMEANS = {**FAST_TRAIN, "cmpa__prototypes": "kmeans", "cmpa__refresh_every": 3}


def _cfg(**over: object) -> SSRConfig:
    return tiny_config(**{**KMEANS, **over})


def test_kmeans_refreshes_on_schedule_and_banks_features(tmp_path: Path) -> None:
    cfg = _cfg(train__iterations=5, train__ckpt_every=100)
    model = tiny_ssr_model(cfg, 0)
    trainer = Trainer(cfg, model, TinySegDataset(), tmp_path, progress=False)
    assert isinstance(trainer.acc, FeatureBank)
    trainer.fit(stop_after=2)
    assert model.cmpa is not None and int(model.cmpa.refreshes) == 0
    banked = trainer.acc.features()[0].shape[0]
    assert banked >= 2  # every (image, class) pair of steps 1-2
    trainer.fit(stop_after=3)  # step 3: refresh, bank emptied
    assert int(model.cmpa.refreshes) == 1 and trainer.acc.features()[0].shape[0] == 0
    assert model.cmpa.proto_valid.any() and model.cmpa.visual_protos.abs().sum() > 0
    trainer.fit()
    assert int(model.cmpa.refreshes) == 1 and trainer.acc.features()[0].shape[0] > 0


def test_kmeans_kill_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    # checkpoint at step 4 (mid-interval: the bank holds step 4's features), refreshes at 3, 6
    cfg = _cfg(train__iterations=7, train__ckpt_every=4)
    resumed = kill_and_resume(cfg, tmp_path, stop_after=4)  # asserts 7 steps and equal states
    assert "cmpa.cluster_positive" in resumed.trainable_state_dict()
    assert resumed.cmpa is not None and int(resumed.cmpa.refreshes) == 2
