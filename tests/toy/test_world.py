"""The toy world: determinism, masks agreeing with tags and captions, bias rates, disk layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ssrseg.backbones.toy_shapes import toy_tokenizer
from ssrseg.data import toy
from ssrseg.data.toy import (
    BACKGROUNDS,
    CLASS_NAMES,
    HOME,
    ToyWorld,
    WorldConfig,
    class_given_background,
    debiased_config,
    plan_scene,
    weakened_config,
    write_toy_dataset,
)
from ssrseg.toy.common import PROMPT_TEMPLATE


def test_same_seed_same_scene_and_different_index_differs() -> None:
    a, b = ToyWorld("train", seed=3)[7], ToyWorld("train", seed=3)[7]
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert (a.caption, a.labels, a.background) == (b.caption, b.labels, b.background)
    c = ToyWorld("train", seed=3)[8]
    d = ToyWorld("train", seed=4)[7]
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.image, d.image)


@pytest.mark.parametrize("split", ["train", "debiased"])
def test_masks_agree_with_tags_and_captions(split: str) -> None:
    world = ToyWorld(split, seed=0)
    vocab = set(toy_tokenizer().words)
    for i in range(40):
        s = world[i]
        assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
        assert s.mask.shape == (128, 128) and s.mask.dtype == np.uint8
        in_mask = {int(v) - 1 for v in np.unique(s.mask) if v != 0}
        assert in_mask == set(s.labels), (i, s.caption)
        assert 1 <= len(s.labels) <= 4
        words = s.caption.rstrip(".").replace(",", "").split()
        assert set(words) <= vocab
        named = {w for w in words if w in CLASS_NAMES}
        assert named == set(s.tags)
        assert words[-1] == BACKGROUNDS[s.background]
        # Masks are exact: no ignore pixels, and every object keeps a visible part.
        assert 255 not in s.mask
        assert all((s.mask == c + 1).sum() >= 20 for c in s.labels)


def test_background_prior_gives_each_class_its_strength_exactly() -> None:
    cfg = WorldConfig()
    prior, cond = class_given_background(cfg)  # G, G x C
    joint = prior[:, None] * cond  # P(g, c)
    p_g_given_c = joint / joint.sum(axis=0, keepdims=True)
    for c, name in enumerate(CLASS_NAMES):
        home = HOME[name]
        if home is None:
            assert np.allclose(p_g_given_c[:, c], 1 / len(BACKGROUNDS))
        else:
            assert p_g_given_c[BACKGROUNDS.index(home), c] == pytest.approx(cfg.home_strength[name])
    # Every class is equally likely per slot, biased or not.
    assert np.allclose(joint.sum(axis=0), 1 / len(CLASS_NAMES))


def _p_background_given_class(cfg: WorldConfig) -> np.ndarray:
    prior, cond = class_given_background(cfg)
    joint = prior[:, None] * cond
    return joint / joint.sum(axis=0, keepdims=True)  # G x C


def test_weakened_world_interpolates_between_the_biased_and_debiased_rates() -> None:
    assert weakened_config(1.0) == WorldConfig()
    chance = 1 / len(BACKGROUNDS)
    none = _p_background_given_class(weakened_config(0.0))
    assert np.allclose(none, chance)  # the debiased split's per-slot rates
    assert np.allclose(none, _p_background_given_class(debiased_config()))
    assert weakened_config(0.0).pair_strength == 0.0
    half = weakened_config(0.5)
    p = _p_background_given_class(half)
    # boat: 0.9 -> 1/6 + 0.5 * (0.9 - 1/6) = 0.5333; tree: 0.7 -> 0.4333 (hand values)
    assert p[BACKGROUNDS.index("water"), CLASS_NAMES.index("boat")] == pytest.approx(0.53333333)
    assert p[BACKGROUNDS.index("grass"), CLASS_NAMES.index("tree")] == pytest.approx(0.43333333)
    assert half.pair_strength == pytest.approx(0.45)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="bias_scale"):
            weakened_config(bad)


def _rates(cfg: WorldConfig, n: int) -> tuple[dict[str, float], float]:
    rng = np.random.default_rng(0)
    home_hits = {name: [0, 0] for name, h in HOME.items() if h is not None}
    rider = horse_with_rider = 0
    for _ in range(n):
        bg, objects = plan_scene(cfg, rng)
        for c in set(objects):
            name = CLASS_NAMES[c]
            if name in home_hits:
                home_hits[name][0] += BACKGROUNDS[bg] == HOME[name]
                home_hits[name][1] += 1
        if CLASS_NAMES.index("rider") in objects:
            rider += 1
            horse_with_rider += CLASS_NAMES.index("horse") in objects
    return {k: h / t for k, (h, t) in home_hits.items()}, horse_with_rider / rider


# Per-image rates P(home background | class in image) measured over 20,000 planned scenes
# (docs/toy_world.md). They sit a little below the per-slot strengths: a class concentrated on
# one background often fills several slots there but is counted once per image, and horses
# brought along by riders (pair bias) land on the rider's background.
PER_IMAGE_RATES = {
    "boat": 0.883, "fish": 0.775, "plane": 0.86, "horse": 0.742, "rider": 0.77, "tree": 0.68,
    "car": 0.769, "bus": 0.759, "clock": 0.741,
}  # fmt: skip


def test_bias_rates_hold_per_image_and_vanish_in_the_debiased_split() -> None:
    cfg = WorldConfig()
    rates, pair = _rates(cfg, 3000)
    for name, rate in rates.items():
        # About 550 images per class: 3 standard deviations is about 0.05.
        assert rate == pytest.approx(PER_IMAGE_RATES[name], abs=0.05), name
        assert rate <= cfg.home_strength[name] + 0.02
    assert pair >= cfg.pair_strength - 0.03
    rates, pair = _rates(debiased_config(), 3000)
    for name, rate in rates.items():
        assert rate == pytest.approx(1 / len(BACKGROUNDS), abs=0.06), name
    assert pair < 0.4  # only chance co-occurrence


def test_rendered_bias_rate_of_boats_on_water() -> None:
    world = ToyWorld("train", seed=1)
    boat = CLASS_NAMES.index("boat")
    scenes = [world[i] for i in range(150)]
    on_water = [s.background == BACKGROUNDS.index("water") for s in scenes if boat in s.labels]
    assert len(on_water) > 15
    assert np.mean(on_water) >= 0.75


def test_write_toy_dataset_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ids = write_toy_dataset(tmp_path, 5, "train", seed=2, image_size=64)
    ids_d = write_toy_dataset(tmp_path, 3, "debiased", seed=2, image_size=64)
    assert (tmp_path / "ImageSets/Segmentation/train.txt").read_text().split() == ids
    assert (tmp_path / "ImageSets/Segmentation/debiased.txt").read_text().split() == ids_d
    assert (tmp_path / "classes.txt").read_text().split() == list(CLASS_NAMES)
    assert (tmp_path / "backgrounds.txt").read_text().split() == list(BACKGROUNDS)
    tags = json.loads((tmp_path / "tags.json").read_text())
    captions = json.loads((tmp_path / "captions.json").read_text())
    assert set(tags) == set(ids) | set(ids_d) == set(captions)
    world = ToyWorld("train", seed=2, cfg=WorldConfig(image_size=64))
    for i, image_id in enumerate(ids):
        s = world[i]
        img = np.asarray(Image.open(tmp_path / "JPEGImages" / f"{image_id}.png"))
        seg = Image.open(tmp_path / "SegmentationClass" / f"{image_id}.png")
        assert seg.mode == "P"
        assert np.array_equal(img, s.image)
        assert np.array_equal(np.asarray(seg), s.mask)
        assert tags[image_id] == s.tags and captions[image_id] == s.caption
    info = json.loads((tmp_path / "world.json").read_text())
    assert info["debiased"]["biased"] is False and info["train"]["biased"] is True


def test_tokenizer_covers_captions_and_prompts() -> None:
    tok = toy_tokenizer()
    world = ToyWorld("train", seed=5)
    captions = [world[i].caption for i in range(30)]
    names = [*CLASS_NAMES, *toy.BACKGROUND_NAMES]
    ids = tok([*captions, *(PROMPT_TEMPLATE.format(n) for n in names)])
    assert not bool((ids == tok.UNK).any())
    assert all(" " not in n for n in names)  # single words


def test_captions_name_the_background_with_the_configured_probability() -> None:
    from dataclasses import replace

    # Default (1): every caption ends "on <background>." and the stream is the one always rendered.
    train = [ToyWorld("train", 0)[i] for i in range(20)]
    assert all(s.caption.endswith(f" on {BACKGROUNDS[s.background]}.") for s in train)
    none = ToyWorld("corpus", 0, replace(WorldConfig(), background_words=0.0))
    scenes = [none[i] for i in range(20)]
    assert not any(" on " in s.caption for s in scenes)
    # Only the caption changes: the image, mask and background are those of the default world.
    default = ToyWorld("corpus", 0, WorldConfig())
    for i, s in enumerate(scenes[:5]):
        d = default[i]
        assert np.array_equal(s.image, d.image) and s.background == d.background
        assert d.caption == s.caption[:-1] + f" on {BACKGROUNDS[d.background]}."
    half = ToyWorld("corpus", 0, replace(WorldConfig(), background_words=0.5))
    named = np.mean([" on " in half[i].caption for i in range(200)])
    assert 0.38 < named < 0.62  # 200 draws of p = 0.5: 3.4 standard deviations
