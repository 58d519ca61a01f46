"""``benchmarks/bench_pseudo_labels.py``'s ``ssr_overlapped`` leg: the next call's superpixels on a
worker thread while the labeller runs the current call; outputs as with SLIC inside."""

from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_pseudo_labels as bench
import ssrseg.pseudo.labeler as labeler_module
import ssrseg.rectify.sgc as sgc_module
from _models import make_labeler, preset


@pytest.fixture(scope="module")
def labeler() -> Any:
    torch.manual_seed(0)
    return make_labeler(preset("voc", ["par.iterations=1"]), torch.device("cpu"), tiny=True)


def test_overlapped_matches_the_labeller_and_runs_slic_ahead(
    labeler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = [
        (bench.smooth_images(1, 32, 48, seed=i, device=torch.device("cpu")), [labels])
        for i, labels in enumerate([(14, 12), (2,), (8,)])
    ]
    threads: list[str] = []
    real = sgc_module.slic_superpixels

    def recording(*args: Any) -> torch.Tensor:
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(sgc_module, "slic_superpixels", recording)
    monkeypatch.setattr(labeler_module, "slic_superpixels", recording)
    timer = bench.Timer()
    with ThreadPoolExecutor(1, thread_name_prefix="worker") as pool:
        outs = bench.overlapped(labeler, calls, pool, timer)
    assert len(threads) == 3 and all(name.startswith("worker") for name in threads)
    assert {"first_sp_wait", "sp_wait", "slic"} & set(timer) == {"first_sp_wait", "sp_wait"}
    with torch.no_grad():
        for out, (images, labels) in zip(outs, calls, strict=True):
            serial = labeler(images, labels)  # SLIC inside the labeller
            assert torch.equal(out.labels[0], serial.labels[0])
            assert torch.equal(out.scores[0], serial.scores[0])
            assert torch.equal(out.refined[0], serial.refined[0])
    with ThreadPoolExecutor(1) as pool:
        assert bench.overlapped(labeler, [], pool) == []


@pytest.mark.slow
def test_tiny_benchmark_reports_the_overlapped_leg(tmp_path: Path) -> None:
    out = tmp_path / "tiny.json"
    bench.main(["--tiny", "--threads", "1", "--repeats", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert "ssr_overlapped_vs_backbone_ssr" in report["targets"]
    assert [r["setting"].split("_")[0] for r in report["results"]] == ["voc", "batch2"]
    for r in report["results"]:
        assert r["times"]["ssr_overlapped"]["median_wall_s"] > 0
        ratios = r["ratios_median_wall"]
        for key in ("backbone_ssr", "clip_es", "clip_es_reference_network"):
            assert ratios[f"ssr_overlapped_vs_{key}"] > 0
        sections = r["sections_s_per_round"]["ssr_overlapped"]
        assert "slic" not in sections and sections["first_sp_wait"] >= 0
        fill = r["ssr_overlapped_fill_s_per_round"]
        expected = (r["times"]["ssr_overlapped"]["median_wall_s"] - fill) / r["times"][
            "backbone_ssr"
        ]["median_wall_s"]
        assert r["ssr_overlapped_without_fill_vs_backbone_ssr"] == pytest.approx(expected, abs=1e-3)
    summary = next(iter(report["summary"].values()))
    assert "ssr_overlapped_vs_backbone" in summary
