"""The ``eval_in_distribution`` stage on its own: which checkpoints it scores, and that it
draws its split again unless it resumes its own unfinished attempt."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image

from ssrseg.data.toy import IN_DISTRIBUTION_SPLIT, ToyWorld, WorldConfig, write_toy_dataset
from ssrseg.engine.distributed import solo_view
from ssrseg.protocol import in_distribution as ind
from ssrseg.protocol.plan import WorldPlan


def _run(tmp_path: Path, seed: int, status: dict[str, str], states: dict[str, Any]) -> Any:
    out = tmp_path / "run"
    world = WorldPlan(n_train=4, n_val=2, seed=seed, image_size=64)
    return SimpleNamespace(
        cfg=SimpleNamespace(data=SimpleNamespace(root=str(tmp_path / "data"))),
        plan=SimpleNamespace(world=world, in_distribution_images=3, progress=False),
        out=out,
        status=status,
        states=states,
        folder=lambda stage: out / stage,
        view=solo_view(),  # one plain process
        main_only=lambda fn: fn(),
    )


def test_model_folders_follow_the_current_stages(tmp_path: Path) -> None:
    combined = "dino_branch+kmeans"
    var = {
        "variants": {
            "dino_branch": {"trained_as": combined, "segmentation": {"rows": {}}},
            "kmeans": {"trained_as": combined, "cmpa_cam": {}},  # no segmentation: not scored
        }
    }
    status = {"train": "reuse", "variants": "ran", "fully_supervised": "ran (resumed)"}
    run = _run(tmp_path, 0, status, {"variants": {"result": var}})
    out = tmp_path / "run"
    assert ind.model_folders(run) == {
        "ssr": out / "train",
        "dino_branch": out / "variants" / "dino_branch+kmeans" / "train",
        "fully_supervised": out / "fully_supervised" / "train",
    }
    stale = _run(tmp_path, 0, {"train": "reuse", "variants": "stale", "fully_supervised": "n/a"},
                 {"variants": {"result": var}})  # fmt: skip
    assert ind.model_folders(stale) == {"ssr": out / "train"}


def test_split_drawn_again_unless_resuming(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_toy_dataset(root, 3, IN_DISTRIBUTION_SPLIT, seed=0, image_size=64)  # an earlier seed
    first = root / "JPEGImages" / f"{IN_DISTRIBUTION_SPLIT}_000000.png"

    def image() -> np.ndarray:
        return np.asarray(Image.open(first))

    seed0 = image()
    # resuming its own attempt (same record, so same seed): the finished listing is kept
    result = ind.stage_eval_in_distribution(_run(tmp_path, 1, {}, {}), resumed=True)
    assert result == {"split": IN_DISTRIBUTION_SPLIT, "images": 3, "models": {}}
    assert np.array_equal(image(), seed0)
    # a fresh attempt (another record: here the world seed) draws the split again
    ind.stage_eval_in_distribution(_run(tmp_path, 1, {}, {}), resumed=False)
    expected = ToyWorld(IN_DISTRIBUTION_SPLIT, seed=1, cfg=WorldConfig(image_size=64))[0].image
    assert np.array_equal(image(), expected) and not np.array_equal(seed0, expected)
