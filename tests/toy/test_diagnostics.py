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
    background_to_object_ratios,
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


def _tiny_vit(layers: int = 3):  # type: ignore[no-untyped-def]
    from ssrseg.backbones.vit import VisionTransformer, ViTConfig

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, width=16, layers=layers, heads=2, output_dim=None)
    return VisionTransformer(cfg).eval()


def test_grouping_rows_match_an_independent_computation() -> None:
    """Each block equals the per-block wrapper; 'last k' equals the metric on the mean of the
    last k blocks' attentions, computed here by hand; 'transition' on the transition matrix."""
    from ssrseg.rectify.affinity import transition_matrix
    from ssrseg.toy.diagnostics import attention_grouping_by_layer, attention_grouping_rows

    vit = _tiny_vit()
    images = torch.rand(3, 3, 32, 32)
    masks = torch.zeros(3, 32, 32, dtype=torch.long)
    masks[:, 8:24, 8:16] = 2
    masks[1, 0:8, 24:32] = 1
    rows = attention_grouping_rows(vit, images, masks, batch_size=2)
    assert list(rows) == [
        *(f"block {i}" for i in (1, 2, 3)),
        *(f"last {k} blocks" for k in (1, 2, 3)),
    ]
    per_block = attention_grouping_by_layer(vit, images, masks, batch_size=3)
    for i in range(3):
        assert rows[f"block {i + 1}"]["raw"] == pytest.approx(per_block[i], rel=1e-5)
    assert rows["last 1 blocks"] == pytest.approx(rows["block 3"], rel=1e-6)

    out = vit.forward_intermediates(vit.normalize(images), attn_layers=[0, 1, 2])
    labels = patch_labels(masks, out.grid)
    mean2 = (out.attentions[1] + out.attentions[2]) / 2
    # all 3 images in one batch here (the rows used batches of 2): the mean is over patches
    assert rows["last 2 blocks"]["raw"] == pytest.approx(
        float(same_label_attention_ratios(mean2, labels).mean()), rel=1e-5
    )
    assert rows["last 2 blocks"]["transition"] == pytest.approx(
        float(same_label_attention_ratios(transition_matrix(mean2), labels).mean()), rel=1e-5
    )


def test_best_last_k_picks_the_highest_and_the_smallest_on_ties() -> None:
    from ssrseg.toy.diagnostics import best_last_k

    rows = {
        "block 1": {"transition": 9.0},  # blocks are not candidates
        "last 1 blocks": {"transition": 1.2},
        "last 2 blocks": {"transition": 1.5},
        "last 3 blocks": {"transition": 1.5},
        "last 4 blocks": {"transition": float("nan")},
    }
    assert best_last_k(rows) == 2
    assert best_last_k(rows, "raw") is None


def test_backbone_grouping_names_columns_and_skips_missing() -> None:
    from ssrseg.toy.diagnostics import attention_grouping_rows, backbone_grouping, toy_scenes

    vit = _tiny_vit(2)
    table = backbone_grouping({"clip": vit, "dino": None}, n=2, seed=3)
    images, masks = toy_scenes("val", 2, 3)
    direct = attention_grouping_rows(vit, images, masks)
    assert set(table["block 2"]) == {"clip", "clip_transition"}
    assert table["last 2 blocks"]["clip"] == pytest.approx(direct["last 2 blocks"]["raw"])


def test_context_leak_reads_the_context_from_the_caption(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Hand-made dataset: one boat on water (its home), one on road; predictions spill 2 pixels
    onto background at home and none elsewhere; an image without a prediction is skipped."""
    import json

    from ssrseg.data.toy import CLASS_NAMES
    from ssrseg.toy.diagnostics import context_leak

    boat = CLASS_NAMES.index("boat")
    (tmp_path / "captions.json").write_text(
        json.dumps({"a": "a photo of a boat on water.", "b": "a photo of a boat on road."})
    )
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = boat + 1

    class Sample:
        def __init__(self, image_id: str) -> None:
            self.image_id, self.labels, self.mask = image_id, (boat,), mask

    class Data:
        root, class_names = str(tmp_path), CLASS_NAMES

        def __getitem__(self, i: int) -> Sample:
            return Sample("abc"[i])

    pred_home = mask.copy()
    pred_home[3, :2] = boat + 1  # 2 of 6 predicted pixels on background
    leak = context_leak(Data(), [0, 1, 2], {"a": pred_home, "b": mask.copy()})
    assert leak["home"] == pytest.approx(100 * 2 / 6)
    assert leak["elsewhere"] == 0.0


def test_bar_chart_without_paper_values_has_no_paper_legend() -> None:
    fig = bar_chart([("toy only", [("a", 10.0, None), ("b", 20.0, None)])])
    ax = fig.axes[0]
    assert [round(p.get_height(), 1) for p in ax.patches] == [10.0, 20.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["toy world (measured)"]


def test_background_to_object_ratios_hand_values() -> None:
    # 4 patches: labels [0, 0, 1, 1] (objects are half the patches: chance share 0.5).
    labels = torch.tensor([[0, 0, 1, 1]])
    attn = torch.tensor(
        [
            [
                [2.0, 2.0, 0.0, 0.0],  # background patch 0: nothing on objects -> 0
                [1.0, 0.0, 1.0, 2.0],  # background patch 1: 3 / 4 on objects -> 0.75 / 0.5
                [0.0, 0.0, 1.0, 1.0],  # object rows are not returned
                [1.0, 1.0, 1.0, 1.0],
            ]
        ]
    )
    assert background_to_object_ratios(attn, labels).tolist() == pytest.approx([0.0, 1.5])
    # An image without objects contributes nothing (no chance share to divide by).
    assert background_to_object_ratios(attn, torch.zeros(1, 4, dtype=torch.long)).numel() == 0
