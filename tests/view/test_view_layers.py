"""The page's per-image maths on hand-made masks: scores, colour layers, sizes, names."""

from __future__ import annotations

import numpy as np
import pytest

from ssrseg.view import layers
from ssrseg.view.render import item_folder, layer_slug
from ssrseg.viz import palette

GT = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 0, 0]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1], [0, 0, 1, 255], [2, 0, 0, 1], [0, 2, 0, 0]], dtype=np.uint8)


def test_image_miou_by_hand() -> None:
    # valid pixels: gt != 255 and pred != 255 -> 16 - 2 (gt ignore) - 1 (pred ignore) = 13.
    # class 0: gt {(0,0),(0,1),(1,0),(1,1),(3,2),(3,3)}, pred among valid
    #   {(0,0),(1,0),(1,1),(2,1)*,(3,0)*,(3,2),(3,3)} (* gt 2): inter 5, union 6 + 2 = 8
    # class 1: gt {(0,2),(0,3),(1,2)} (+(1,3) pred 255 left out), pred {(0,1),(0,2),(0,3),(1,2)}
    #   inter 3, union 4
    # class 2: gt {(2,0),(2,1),(3,0),(3,1)}, pred {(2,0),(3,1)}: inter 2, union 4
    cells = layers.sparse_hist(PRED, GT, 3)
    expected = np.mean([5 / 8, 3 / 4, 2 / 4])
    assert layers.image_miou(cells, 3) == pytest.approx(expected)
    hist = layers.dense_hist(cells, 3)
    assert hist.sum() == 13
    assert hist[0, 0] == 5 and hist[2, 0] == 2 and hist[0, 1] == 1


def test_image_miou_without_scored_pixels_is_none() -> None:
    gt = np.full((2, 2), 255, np.uint8)
    assert layers.image_miou(layers.sparse_hist(np.zeros((2, 2), np.uint8), gt, 3), 3) is None


def test_label_rgba_background_transparent_classes_in_palette_colours() -> None:
    pal = palette("voc")
    rgba = layers.label_rgba(GT, pal)
    assert rgba.shape == (4, 4, 4)
    assert (rgba[GT == 0, 3] == 0).all()
    assert (rgba[GT == 1, :3] == pal[1]).all() and (rgba[GT == 1, 3] == 255).all()
    assert tuple(rgba[2, 2]) == (*pal[255], 255)


def test_error_rgba_marks_only_scored_wrong_pixels() -> None:
    rgba = layers.error_rgba(PRED, GT)
    wrong = {tuple(p) for p in np.argwhere(rgba[..., 3] == 255)}
    # (0,1) 0->1, (2,1) 2->0, (3,0) 2->0; (1,3) pred ignore and (2,2),(2,3) gt ignore left out
    assert wrong == {(0, 1), (2, 1), (3, 0)}
    assert tuple(rgba[0, 1]) == (255, 0, 0, 255)


def test_boundary_rgba_marks_region_edges() -> None:
    seg = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 2]])
    edge = layers.boundary_rgba(seg)[..., 3] == 255
    assert edge.tolist() == [
        [False, True, False],
        [True, True, True],
        [False, False, False],
    ]


def test_present_classes_and_fit_size() -> None:
    assert layers.present_classes(GT) == [0, 1]  # labels 1, 2 -> classes 0, 1; 0 and 255 left out
    assert layers.fit_size(100, 400, 128) == (32, 128)
    assert layers.fit_size(50, 60, 128) == (50, 60)  # never enlarged


def test_item_folder_and_slug_are_safe_and_distinct() -> None:
    a, b = item_folder("train/a b"), item_folder("train/a_b")
    assert a != b and " " not in a and a.count("/") == 2
    assert layer_slug("CAM (refined): traffic light") == "cam-refined-traffic-light"
    assert layer_slug("prediction (CRF)") == "prediction-crf"
