"""Toy diagnostics: attention grouping on hand-made maps, the paper-comparison chart, and the
home-context leak table on hand-made predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssrseg.toy.diagnostics import (
    PAPER_TABLE3,
    PAPER_TABLE4,
    bar_chart,
    context_leak_table,
    patch_labels,
    same_label_attention,
    same_label_attention_ratios,
    table_rows,
)


def test_patch_labels_majority_and_ignore() -> None:
    # 4x4 mask, 2x2 grid of 2x2 patches
    mask = torch.tensor(
        [
            [1, 1, 0, 0],
            [1, 0, 0, 0],
            [2, 2, 255, 255],
            [0, 2, 255, 3],
        ]
    )[None]
    # patch (0,0): three 1s -> 1; (0,1): 0; (1,0): three 2s -> 2; (1,1): 3 (ignored pixels
    # do not vote)
    assert patch_labels(mask, (2, 2)).tolist() == [[1, 0, 2, 3]]
    all_ignored = torch.full((1, 2, 2), 255)
    assert patch_labels(all_ignored, (1, 1)).tolist() == [[255]]
    with pytest.raises(ValueError, match="multiple"):
        patch_labels(mask, (3, 3))


def test_uniform_attention_scores_one() -> None:
    labels = torch.tensor([[0, 0, 1, 1, 1, 2, 0, 0]])
    attn = torch.full((1, 8, 8), 1 / 8)
    ratios = same_label_attention_ratios(attn, labels)
    assert ratios.shape == (4,) and torch.allclose(ratios, torch.ones(4))


def test_hand_made_attention_ratios() -> None:
    # 4 patches, labels (0, 1, 1, 2). Query 1 sends 0.5 to itself, 0.25 to patch 2, 0.25 to
    # background: same share 0.75, chance 2/4 -> 1.5. Query 2 sends everything to patch 0
    # (background): 0. Query 3 (label 2, alone) sends 0.5 to itself: 0.5 / (1/4) = 2.
    attn = torch.tensor(
        [
            [
                [1.0, 0.0, 0.0, 0.0],
                [0.25, 0.5, 0.25, 0.0],
                [1.0, 0.0, 0.0, 0.0],
                [0.25, 0.25, 0.0, 0.5],
            ]
        ]
    )
    labels = torch.tensor([[0, 1, 1, 2]])
    assert same_label_attention_ratios(attn, labels).tolist() == pytest.approx([1.5, 0.0, 2.0])
    assert same_label_attention(attn, labels) == pytest.approx(3.5 / 3)
    # rows are renormalised over patches (attention left on the class token does not count)
    assert same_label_attention(attn * 0.5, labels) == pytest.approx(3.5 / 3)
    assert math.isnan(same_label_attention(attn, torch.zeros(1, 4, dtype=torch.long)))


def test_perfect_grouping_reaches_the_inverse_share() -> None:
    # object of 2 patches among 8, each object patch attends only to its object: ratio 8 / 2
    labels = torch.tensor([[0, 0, 0, 3, 3, 0, 0, 0]])
    same = (labels[0][:, None] == labels[0][None, :]).float()
    attn = (same / same.sum(1, keepdim=True))[None]
    assert same_label_attention(attn, labels) == pytest.approx(4.0)


def test_bar_chart_draws_measured_and_paper_bars(tmp_path) -> None:  # type: ignore[no-untyped-def]
    t3 = table_rows({"initial CAM": 33.3, "+ CLIP attention (box mask)": 34.4}, PAPER_TABLE3)
    t4 = table_rows({"raw CLIP CAM": 33.3, "CMPA CAM": 18.0, "toy only": 5.0}, PAPER_TABLE4)
    assert t4[-1] == ("toy only", 5.0, None)
    path = tmp_path / "fig" / "tables.png"
    fig = bar_chart([("Table 3", t3), ("Table 4", t4)], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    heights = [[round(p.get_height(), 1) for p in ax.patches] for ax in fig.axes]
    assert heights[0] == [33.3, 34.4, 63.3, 74.6]
    assert heights[1] == [33.3, 18.0, 5.0, 58.6, 63.3]


def test_context_leak_table_hand_example() -> None:
    homes = {0: "water", 1: None}
    mask = np.array([[0, 1], [0, 2]])
    pred = np.array([[1, 1], [1, 2]])  # class 0 predicted on 3 pixels, 2 of them background
    items = [
        (pred, mask, [0, 1], "water"),  # home: 2 / 3; class 1 has no home (skipped)
        (pred, mask, [0], "sand"),  # elsewhere: 2 / 3
        (np.zeros((2, 2), int), mask, [0], "sand"),  # nothing predicted: adds 0 / 0
    ]
    table = context_leak_table(items, homes)
    assert table["home"] == pytest.approx(200 / 3) and table["elsewhere"] == pytest.approx(200 / 3)
    assert math.isnan(context_leak_table([], homes)["home"])
