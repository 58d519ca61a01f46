"""The in-distribution val split: drawn like ``train`` (same generator and biases) from its own
stream, deterministic, disjoint from train, and adding it changes no image of another split."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from ssrseg.data.toy import (
    BACKGROUNDS,
    CLASS_NAMES,
    HOME,
    IN_DISTRIBUTION_SPLIT,
    SPLIT_CODES,
    ToySample,
    ToyWorld,
    WorldConfig,
    debiased_config,
    plan_scene,
    sample_rng,
    split_code,
    write_toy_dataset,
)

SPLIT = IN_DISTRIBUTION_SPLIT


def _digest(world: ToyWorld, indices: tuple[int, ...]) -> str:
    h = hashlib.sha256()
    for i in indices:
        s = world[i]
        h.update(s.image.tobytes())
        h.update(s.mask.tobytes())
        h.update(s.caption.encode())
    return h.hexdigest()[:16]


# sha256 of images, masks and captions 0, 1, 2 and 799 of each split at seed 0, recorded before
# the in-distribution split existed: adding it must not move any other split's stream.
EXISTING = {"train": "39668d5c21fd2ffb", "val": "af7a46d2c73a75af", "debiased": "d2d3c77ba67d91a7"}


@pytest.mark.parametrize("split", sorted(EXISTING))
def test_existing_splits_render_the_same_scenes(split: str) -> None:
    assert _digest(ToyWorld(split, seed=0), (0, 1, 2, 799)) == EXISTING[split]


def test_its_stream_is_its_own_and_its_world_is_trains() -> None:
    codes = [split_code(s) for s in ("train", "val", "debiased", "test", "corpus", SPLIT)]
    assert len(set(codes)) == len(codes)
    assert SPLIT_CODES[SPLIT] == 4 and split_code("corpus") >= 10  # hashed names start at 10
    assert ToyWorld(SPLIT, seed=0).cfg == WorldConfig() == ToyWorld("train", seed=0).cfg


def test_renders_deterministically(tmp_path: Path) -> None:
    a, b = ToyWorld(SPLIT, seed=0)[5], ToyWorld(SPLIT, seed=0)[5]
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.caption == b.caption
    ids = write_toy_dataset(tmp_path / "one", 4, SPLIT, seed=0, image_size=64)
    again = write_toy_dataset(tmp_path / "two", 4, SPLIT, seed=0, image_size=64)
    assert ids == again == [f"{SPLIT}_{i:06d}" for i in range(4)]
    for sub in ("JPEGImages", "SegmentationClass"):
        for image_id in ids:
            one = (tmp_path / "one" / sub / f"{image_id}.png").read_bytes()
            assert one == (tmp_path / "two" / sub / f"{image_id}.png").read_bytes()


def test_writing_it_leaves_the_other_splits_files_unchanged(tmp_path: Path) -> None:
    import json

    write_toy_dataset(tmp_path, 6, "train", seed=0, image_size=64)
    write_toy_dataset(tmp_path, 4, "debiased", seed=0, image_size=64)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    tags_before = json.loads((tmp_path / "tags.json").read_text())
    ids = write_toy_dataset(tmp_path, 5, SPLIT, seed=0, image_size=64)
    merged = ("tags.json", "captions.json", "world.json")
    for path, data in before.items():
        if path.name not in merged:
            assert path.read_bytes() == data, path
    tags = json.loads((tmp_path / "tags.json").read_text())
    assert {k: v for k, v in tags.items() if k not in ids} == tags_before
    assert set(ids) <= set(tags)
    info = json.loads((tmp_path / "world.json").read_text())
    assert info[SPLIT] == {"n": 5, "seed": 0, "image_size": 64, "biased": True}
    assert info["train"]["n"] == 6 and info["debiased"]["biased"] is False


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[ToySample]]:
    """The demo's first 200 train scenes and 150 in-distribution scenes (seed 0)."""
    return {
        "train": [ToyWorld("train", seed=0)[i] for i in range(200)],
        SPLIT: [ToyWorld(SPLIT, seed=0)[i] for i in range(150)],
    }


def test_disjoint_from_train(rendered: dict[str, list[ToySample]]) -> None:
    def key(s: ToySample) -> bytes:
        return hashlib.sha256(s.image.tobytes()).digest()

    train = {key(s) for s in rendered["train"]}
    held = [key(s) for s in rendered[SPLIT]]
    assert len(set(held)) == len(held) and not train & set(held)


def _plan_rates(cfg: WorldConfig, split: str, n: int) -> dict[str, tuple[float, int]]:
    """Per-image rates of the scene plans of images 0..n-1 of ``split`` (the scene's own
    generator: the plan is its first draws), each with the number of images it is a share of:
    backgrounds, classes, object counts, each class on its home context, horse given rider."""
    bg_count = np.zeros(len(BACKGROUNDS))
    cls_count = np.zeros(len(CLASS_NAMES))
    n_objects = np.zeros(8)
    home = {c: [0, 0] for c, name in enumerate(CLASS_NAMES) if HOME[name] is not None}
    rider, horse = CLASS_NAMES.index("rider"), CLASS_NAMES.index("horse")
    riders = pairs = 0
    for i in range(n):
        bg, objects = plan_scene(cfg, sample_rng(0, split, i))
        bg_count[bg] += 1
        n_objects[len(objects)] += 1
        for c in set(objects):
            cls_count[c] += 1
            if c in home:
                home[c][0] += BACKGROUNDS[bg] == HOME[CLASS_NAMES[c]]
                home[c][1] += 1
        if rider in objects:
            riders += 1
            pairs += horse in objects
    out = {f"background {BACKGROUNDS[g]}": (bg_count[g] / n, n) for g in range(len(BACKGROUNDS))}
    out.update({f"class {CLASS_NAMES[c]}": (cls_count[c] / n, n) for c in range(len(CLASS_NAMES))})
    out.update({f"{k} objects": (n_objects[k] / n, n) for k in range(1, 5)})
    out.update({f"{CLASS_NAMES[c]} at home": (h / t, t) for c, (h, t) in home.items()})
    out["horse | rider"] = (pairs / riders, riders)
    return out


def test_scene_statistics_match_train() -> None:
    n = 5000
    train = _plan_rates(WorldConfig(), "train", n)
    held = _plan_rates(WorldConfig(), SPLIT, n)
    debiased = _plan_rates(debiased_config(), "debiased", n)
    assert held.keys() == train.keys()
    for name, (rate, count) in held.items():
        # Two independent samples: the difference of two rates p has the standard deviation
        # sqrt(p (1 - p) (1 / n1 + 1 / n2)); 4 of them (at least 0.01) bound it. The home
        # rates are shares of the ~750 images showing the class: about 0.08.
        p, count_t = train[name]
        tol = max(0.01, 4 * np.sqrt(p * (1 - p) * (1 / count + 1 / count_t)))
        assert rate == pytest.approx(p, abs=tol), name
        if "home" in name or "|" in name:  # the biases the debiased split breaks, far apart
            assert rate - debiased[name][0] > 0.4, name


def test_rendered_statistics_match_train(rendered: dict[str, list[ToySample]]) -> None:
    def stats(scenes: list[ToySample]) -> tuple[float, np.ndarray, float]:
        foreground = float(np.mean([(s.mask > 0).mean() for s in scenes]))
        colour = np.mean([s.image.reshape(-1, 3).mean(axis=0) for s in scenes], axis=0)
        tags = float(np.mean([len(s.labels) for s in scenes]))
        return foreground, colour, tags

    fg_t, col_t, tags_t = stats(rendered["train"])
    fg_h, col_h, tags_h = stats(rendered[SPLIT])
    # foreground share ~0.13 (per-image sd ~0.08: the means' difference has sd ~0.009)
    assert fg_h == pytest.approx(fg_t, abs=0.035)
    assert 0.08 < fg_h < 0.2
    assert np.abs(col_h - col_t).max() < 10.0  # channel means, 0..255 (sd of the difference ~3)
    assert tags_h == pytest.approx(tags_t, abs=0.25)


def test_training_on_it_is_refused(tmp_path: Path) -> None:
    from ssrseg.config import ConfigError, load_config
    from ssrseg.engine.train import run_training

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "configs" / "toy.yaml", [f"data.root={tmp_path}",
                                                       f"data.train_split={SPLIT}"])  # fmt: skip
    with pytest.raises(ConfigError, match=f"data.train_split={SPLIT}: .* only ever scored"):
        run_training(cfg, None, tmp_path / "run")  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()
