"""``python -m research.rows_probe``: Table 3 rows of candidate backbones on unscored images."""

from __future__ import annotations

import json

import numpy as np

from ssrseg.data.toy import write_toy_dataset


def test_rows_probe_scores_the_chosen_rows_on_the_chosen_images(tmp_path, capsys) -> None:
    from research.rows_probe import main
    from ssrseg.config import load_config
    from ssrseg.data import build_dataset
    from ssrseg.metrics import ConfusionMatrix
    from ssrseg.protocol.cam_rows import TABLE3_ROWS, label_samples, row_labeler
    from ssrseg.protocol.demo import default_config_path
    from ssrseg.pseudo.labeler import build_pseudo_labeler

    root = tmp_path / "toy"
    write_toy_dataset(root, 5, "train", 0, 128)
    argv = ["data.root=" + str(root), "--root", str(root), "--first", "3", "--n", "2"]
    # A trailing override is an override, not a row name.
    assert main([*argv, "--rows", "initial CAM", "cam.logit_scale=15"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["rows"]) == ["initial CAM"] and out["images"] == "train 3..4"
    assert out["clip"] == "toy_clip" and len(out["initial_cam_class_iou"]) == 11
    assert out["overrides"] == ["data.root=" + str(root), "cam.logit_scale=15"]

    # The same row scored by hand: the labeller's argmax labels of images 3 and 4 against their
    # rendered masks.
    cfg = load_config(default_config_path(), ["data.root=" + str(root)])
    labeler = row_labeler(build_pseudo_labeler(cfg), cfg, dict(TABLE3_ROWS)["initial CAM"])
    data = build_dataset("toy", root, "train")
    conf = ConfusionMatrix(11)
    for i in (3, 4):
        s = data[i]
        ((labels, _, _),) = label_samples(labeler, [s], None, 1024)
        assert s.mask is not None
        conf.update(labels, s.mask)
    expected = conf.compute()
    assert out["rows"]["initial CAM"]["miou"] == round(100 * float(expected["miou"]), 2)
    assert np.isfinite(out["rows"]["initial CAM"]["precision"])


def test_cam_figure_shows_each_single_class_image_under_each_clip(tmp_path, capsys) -> None:
    from PIL import Image

    from research.rows_probe import main
    from ssrseg.data import build_dataset

    root = tmp_path / "toy"
    write_toy_dataset(root, 12, "train", 0, 128)
    data = build_dataset("toy", root, "train")
    single = [i for i in range(12) if len(data[i].labels) == 1]
    name = data.class_names[data[single[0]].labels[0]]
    expected = [i for i in single if data[i].labels == data[single[0]].labels]
    png = tmp_path / "cam.png"
    argv = ["data.root=" + str(root), "--root", str(root), "--first", "0", "--n", "12"]
    argv += ["--cam-figure", str(png), "--cam-class", name, "--compare", "toy_clip"]
    assert main(argv) == 0
    assert f"train images {expected}" in capsys.readouterr().out
    width, height = Image.open(png).size
    # One row per image (title strip 14 px + 128 px), four 128 px tiles with 4 px gaps.
    assert (width, height) == (4 * 128 + 3 * 4, len(expected) * (14 + 128))


def test_mask_shares_by_hand() -> None:
    from research.rows_probe import mask_shares

    # 4 x 4 truth on a 2 x 2 grid: class 0 (home water) fills the top-left patch and half the
    # top-right one; class 1 (no home) is skipped. The mask keeps both top patches and the
    # bottom-left one: weight 3, on background 0 + 0.5 + 1 = 1.5, on the object 1 + 0.5 = 1.5
    # of the object's 1.5 patches.
    gt = np.zeros((4, 4), dtype=np.uint8)
    gt[:2, :2] = 1
    gt[:2, 2] = 1
    gt[2:, 2:] = 2
    mask = np.array([[[1.0, 1.0], [1.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    homes = {0: "water", 1: None}
    out = mask_shares(mask, gt, [0, 1], "water", homes)
    assert out["home"].tolist() == [1.5, 3.0, 1.5, 1.5] and out["elsewhere"].sum() == 0
    away = mask_shares(mask, gt, [0, 1], "grass", homes)
    assert away["elsewhere"].tolist() == [1.5, 3.0, 1.5, 1.5] and away["home"].sum() == 0


def test_mask_share_table_runs_the_masked_rows(tmp_path, capsys) -> None:
    from research.rows_probe import main

    root = tmp_path / "toy"
    write_toy_dataset(root, 4, "train", 0, 128)
    argv = ["data.root=" + str(root), "--root", str(root), "--first", "0", "--n", "4"]
    assert main([*argv, "--mask-shares"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == "train 0..3"
    for row in ("+ DINO attention (box mask)", "+ SGC mask"):
        for place in ("home", "elsewhere"):
            shares = out[row][place]
            assert 0.0 <= shares["background"] <= 100.0 and 0.0 <= shares["object_kept"] <= 100.0
