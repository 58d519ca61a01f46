"""The committed toy weights: hashes, size, loading, and the manifest's zero-shot accuracy."""

from __future__ import annotations

import json

import pytest
import torch

from ssrseg.backbones.toy_shapes import toy_dino_config
from ssrseg.toy.common import ASSET_DIR, sha256_file, zero_shot_scores

MANIFEST = ASSET_DIR / "manifest.json"


def _manifest() -> dict:  # type: ignore[type-arg]
    return json.loads(MANIFEST.read_text())


def test_manifest_matches_files_and_size_budget() -> None:
    manifest = _manifest()
    total = 0
    for key in ("clip", "dino"):
        entry = manifest[key]
        path = ASSET_DIR / entry["file"]
        assert sha256_file(path) == entry["sha256"], f"{path} differs from its manifest entry"
        assert entry["command"].startswith(f"ssrseg toy train-{key}")
        assert entry["steps"] > 0 and entry["train_seconds"] > 0
        total += path.stat().st_size
    assert total < 20 * 2**20


def test_toy_clip_reproduces_manifest_zero_shot_on_small_sample() -> None:
    from ssrseg.backbones.weights import load_clip

    expected = _manifest()["clip"]["zero_shot_small_sample"]
    clip, tokenizer = load_clip("toy_clip")
    assert clip.cfg.vision.patch_size == 8 and clip.cfg.embed_dim == 128
    got = zero_shot_scores(clip, tokenizer, "debiased", expected["n"])  # type: ignore[arg-type]
    # Same weights, same scenes: only float summation order may flip a near tie.
    for key in ("top1", "all_first", "background"):
        assert got[key] == pytest.approx(expected[key], abs=1.5 / expected["n"]), key
    # Far above chance: a random class is one of the 1-4 tags about 15% of the time.
    assert got["top1"] > 0.3


def test_toy_dino_loads_and_runs_at_the_toy_size() -> None:
    from ssrseg.backbones.weights import load_dino

    dino = load_dino("toy_dino")
    assert dino.cfg == toy_dino_config()
    # The position table is for 96 px (12 x 12); 128 px inputs interpolate it to 16 x 16.
    out = dino.forward_intermediates(torch.rand(1, 3, 128, 128), attn_layers=(-1,))
    assert out.grid == (16, 16) and bool(torch.isfinite(out.last).all())
    attn = out.attentions[dino.cfg.layers - 1]
    assert attn.shape == (1, 256, 256)
    # Head-averaged softmax rows restricted to patches: positive, each row sums to at most 1.
    assert bool((attn > 0).all()) and bool((attn.sum(-1) <= 1 + 1e-5).all())
