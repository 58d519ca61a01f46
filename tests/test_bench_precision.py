"""``benchmarks/bench_precision.py`` (issue 27): the section-by-section errors of the labeller
under half precision, and the device leg ``bench_gpu.py`` runs (here its CPU path)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_gpu
import bench_precision

ISLANDS = ("minmax", "attention_layer_mean", "transition_matrix", "refinement", "upsample", "par")


def test_sections_inside_the_fp32_islands_do_not_move_under_autocast() -> None:
    images, _, labels = bench_precision.toy_scenes(2)
    labeler = bench_precision.toy_labeler_factory()([])
    for dtype in (torch.bfloat16, torch.float16):
        rows = bench_precision.section_errors(labeler, images, labels, dtype)
        for name in ISLANDS:
            assert rows[name]["max_abs"] == 0.0, (dtype, name, rows[name])
        assert rows["sgc_or_box_masks"]["changed_pct"] == 0.0
        assert rows["background_argmax"]["changed_pct"] == 0.0
        # the backbone itself does move: the measurement sees half precision at all
        assert rows["clip_blocks_tokens"]["max_abs"] > 0.0
        assert rows["gradcam_whole"]["max_abs"] < 0.05, rows["gradcam_whole"]


def test_device_leg_cpu_path_and_gpu_summary(tmp_path: Path) -> None:
    bench_precision.main(
        [
            "--device-leg",
            "--tiny",
            "--voc-images",
            "1",
            "--toy-images",
            "2",
            "--repeats",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    report = json.loads((tmp_path / "precision_cpu.json").read_text())
    voc = report["device_leg"]["voc_random"]
    assert set(voc) == {"fp32", "fp16", "bf16"}
    assert voc["fp32"]["pixels_changed_pct"] == 0.0
    for row in voc.values():
        assert row["images_per_s"] > 0 and row["peak_memory_mib"] > 0
        assert row["pixels_changed_pct"] < 5.0
    toy = report["device_leg"]["toy"]
    assert set(toy) == {"fp32", "fp16_weights", "bf16_config"}
    figures = bench_gpu.summary(tmp_path, torch.device("cpu"))
    assert figures["precision"]["voc_random"] == voc
