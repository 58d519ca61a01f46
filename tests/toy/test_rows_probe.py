"""``python -m ssrseg.toy.rows_probe``: Table 3 rows of candidate backbones on unscored images."""

from __future__ import annotations

import json

import numpy as np

from ssrseg.data.toy import write_toy_dataset


def test_rows_probe_scores_the_chosen_rows_on_the_chosen_images(tmp_path, capsys) -> None:
    from ssrseg.config import load_config
    from ssrseg.data import build_dataset
    from ssrseg.engine.cam_rows import TABLE3_ROWS, label_samples, row_labeler
    from ssrseg.engine.demo import default_config_path
    from ssrseg.metrics import ConfusionMatrix
    from ssrseg.pseudo.labeler import build_pseudo_labeler
    from ssrseg.toy.rows_probe import main

    root = tmp_path / "toy"
    write_toy_dataset(root, 5, "train", 0, 128)
    argv = ["--root", str(root), "--first", "3", "--n", "2", "--rows", "initial CAM"]
    assert main([*argv, "data.root=" + str(root)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["rows"]) == ["initial CAM"] and out["images"] == "train 3..4"
    assert out["clip"] == "toy_clip" and len(out["initial_cam_class_iou"]) == 11

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
