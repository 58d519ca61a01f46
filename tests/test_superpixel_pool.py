"""Issue 24 point 3, superpixels: SLIC in ``--superpixel-workers`` processes ahead of the main loop
(ssrseg.engine.superpixel_pool) gives the outputs of the one background thread (``0``), reaches
the pool from every command that computes superpixels, names the image a worker failed on, and
the command lines refuse a negative count."""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import slic_fakes
import ssrseg.engine.crf_pool as crf_pool
import ssrseg.engine.superpixel_pool as sp_module
import ssrseg.pseudo.labeler as labeler_module
from cli_fakes import SIZES, write_cli_world
from reproduce_fakes import REPO, make_fake_voc, tiny_overrides, write_weights
from ssrseg.cli import main
from ssrseg.commands.common import superpixel_workers
from ssrseg.commands.reproduce import relaunch_command
from ssrseg.config import load_config
from ssrseg.engine.superpixel_pool import (
    SuperpixelError,
    SuperpixelPool,
    default_superpixel_workers,
    lookahead,
)
from ssrseg.protocol import plan as rplan
from ssrseg.protocol import reproduce as rp
from ssrseg.protocol import stages as rstages
from ssrseg.pseudo.labeler import batch_superpixels


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_cli_world(tmp_path_factory.mktemp("slicpool"), fast=True)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Worker counts the superpixel pools start with; threads stand in for the processes
    (what the workers compute is checked against real processes below)."""
    counts: list[int] = []

    def threads(workers: int) -> Executor:
        counts.append(workers)
        return ThreadPoolExecutor(workers, thread_name_prefix="fake-slic-process")

    monkeypatch.setattr(sp_module, "start_workers", threads)
    return counts


# ------------------------------------------------------------------------ outputs identical


def test_pseudo_labels_and_cams_identical_for_0_1_3_workers(
    world: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real spawned workers: the PNGs byte for byte, the CAM arrays bit for bit, for W = 0 (the
    one thread), 1 and 3 (more workers than images left), and the labeller's own SLIC
    (``--no-prefetch``). This tiny world's labels do not change with the superpixels, so the
    superpixels the labeller masks with are compared too (``sgc.compactness=100``: on these
    noise images SLIC's default gives one region per image)."""
    seen: list[torch.Tensor] = []
    real_masks = labeler_module.PseudoLabeler._masks

    def recording(self: Any, images01: Any, cams: Any, superpixels: Any) -> Any:
        seen.append(superpixels.clone())
        return real_masks(self, images01, cams, superpixels)

    monkeypatch.setattr(labeler_module.PseudoLabeler, "_masks", recording)
    base = ["--split", "train", "--no-progress"]
    runs = {"serial": ["--no-prefetch"], **{w: ["--superpixel-workers", w] for w in "013"}}
    for command, suffix in (("pseudo-labels", ".png"), ("cams", ".npz")):
        got: dict[str, dict[str, bytes]] = {}
        superpixels: dict[str, list[torch.Tensor]] = {}
        for name, extra in runs.items():
            out = tmp_path / f"{command}-{name}"
            seen.clear()
            args = [command, *base, "--out", str(out), *extra, *world, "sgc.compactness=100"]
            assert main(args) == 0
            superpixels[name] = list(seen)
            if suffix == ".png":
                got[name] = {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}
            else:  # (the zip container stamps times: compare the arrays' bytes)
                got[name] = {}
                for p in sorted(out.glob("*.npz")):
                    with np.load(p) as data:
                        got[name][p.name] = data["cams"].tobytes() + data["classes"].tobytes()
        assert sorted(got["serial"]) == [f"{name}{suffix}" for name in sorted(SIZES)]
        serial = superpixels["serial"]
        assert len(serial) == 3 and all(len(torch.unique(sp)) > 1 for sp in serial)
        for name in "013":
            assert got[name] == got["serial"], f"{command} --superpixel-workers {name}"
            assert len(superpixels[name]) == 3
            for a, b in zip(superpixels[name], serial, strict=True):
                assert a.dtype == b.dtype and torch.equal(a, b)
    assert multiprocessing.active_children() == []  # every pool shut down


def test_pool_superpixels_equal_the_labellers() -> None:
    """Unit level, real processes: a batch through the pool equals ``batch_superpixels``."""
    coarse = torch.rand(3, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    images = torch.nn.functional.interpolate(coarse, size=(24, 40), mode="bilinear")
    cfg = load_config(None, ["sgc.n_segments=7", "sgc.compactness=4"])
    with SuperpixelPool(2) as pool:
        got = pool.submit(["a", "b", "c"], images, cfg).result()
    expected = batch_superpixels(images, cfg)
    assert got.dtype == expected.dtype == torch.long and got.device == images.device
    assert torch.equal(got, expected)
    assert len(torch.unique(expected[0])) > 1  # real superpixels, not one region


# ---------------------------------------------------------------------------------- wiring


def test_the_option_reaches_the_pool_in_pseudo_labels_and_cams(
    world: list[str], tmp_path: Path, started: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["--split", "train", "--no-progress", *world]
    assert main(["pseudo-labels", "--out", str(tmp_path / "a"), "--superpixel-workers", "3",
                 *base]) == 0  # fmt: skip
    assert started == [3]
    assert main(["cams", "--out", str(tmp_path / "b"), "--superpixel-workers", "2", *base]) == 0
    assert started == [3, 2]
    # default: this process's cores (the CRF pool does not run here)
    monkeypatch.setattr(crf_pool, "available_cores", lambda: 5)
    assert main(["cams", "--out", str(tmp_path / "c"), *base]) == 0
    assert started == [3, 2, 5]
    # 0: the one background thread; no SGC mask or nothing left to label: no pool started
    assert main(["cams", "--out", str(tmp_path / "d"), "--superpixel-workers", "0", *base]) == 0
    assert main(["cams", "--out", str(tmp_path / "e"), *base, "affinity.mask=box"]) == 0
    assert main(["cams", "--out", str(tmp_path / "c"), *base]) == 0  # all done already
    assert started == [3, 2, 5]


@pytest.mark.parametrize(
    ("cores", "ranks", "crf", "expected"),
    [
        (16, 1, False, 16),  # every core of the rank
        (16, 2, False, 8),  # split between the ranks on this machine, like the CRF workers
        (16, 1, True, 2),  # beside the CRF pool: an eighth
        (4, 1, True, 1),  # at least one
        (1, 4, False, 1),
    ],
)
def test_default_worker_count(
    cores: int, ranks: int, crf: bool, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(crf_pool, "available_cores", lambda: cores)
    assert default_superpixel_workers(ranks, with_crf=crf) == expected
    args = argparse.Namespace(superpixel_workers=None, crf=crf)
    assert superpixel_workers(args, ranks) == expected
    assert superpixel_workers(argparse.Namespace(superpixel_workers=0, crf=crf), ranks) == 0


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("slicpool-voc")
    make_fake_voc(base / "data")
    clip, dino = write_weights(base)
    return {"base": base, "overrides": tiny_overrides(clip, dino, base / "data")}


def test_reproduce_seeds_identical_and_wired(voc: dict[str, Any], started: list[int]) -> None:
    """The seeds stage (its SGC rows) on a fake VOC in the real layout: the same label PNGs and
    row metrics with the pool (``--superpixel-workers 2``) as with the labeller's thread (0)."""
    cfg = load_config(REPO / "configs" / "voc.yaml", voc["overrides"])
    runs = {}
    for workers in (0, 2):
        out = voc["base"] / f"run-{workers}"
        plan = rplan.ReproducePlan(
            device="cpu", progress=False, crf="off", stages=("seeds",), superpixel_workers=workers
        )
        rp.run_reproduce(cfg, out, plan)
        labels = {p.name: p.read_bytes() for p in sorted((out / "seeds" / "labels").glob("*"))}
        rows = json.loads((out / "seeds" / "metrics.json").read_text())
        runs[workers] = (labels, rows)
    # one pool for all rows of the stage, started at the first SGC row, with the chosen count
    assert started == [2]
    assert len(runs[0][0]) == 3 and runs[0][0] == runs[2][0]
    assert "+ SGC mask" in runs[0][1] and runs[0][1] == runs[2][1]


def test_reproduce_option_reaches_the_plan_and_the_stages(
    voc: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    plans: list[rplan.ReproducePlan] = []
    monkeypatch.setattr(rp, "run_reproduce", lambda cfg, out, plan: plans.append(plan))
    config = str(REPO / "configs" / "voc.yaml")
    args = ["reproduce", "--config", config, "--out", str(voc["base"] / "unused"),
            "--superpixel-workers", "3", *voc["overrides"]]  # fmt: skip
    assert main(args) == 0
    assert plans[-1].superpixel_workers == 3
    namespace = argparse.Namespace(
        **{k: None for k in ("config", "root", "out", "gpus", "device", "stages", "redo", "crf",
                             "seed_split", "seed_images", "val_images", "panels", "crf_workers")},
        superpixel_workers=4, no_progress=False, overrides=[],
    )  # fmt: skip
    cmd = relaunch_command(namespace)  # --gpus N starts the command again with it
    assert cmd[cmd.index("--superpixel-workers") + 1] == "4"

    # the stages read it (None: the rank's cores)
    view = SimpleNamespace(dist=SimpleNamespace(local_world_size=2))
    monkeypatch.setattr(crf_pool, "available_cores", lambda: 6)
    run = SimpleNamespace(plan=rplan.ReproducePlan(superpixel_workers=5), view=view)
    assert rstages.superpixel_workers_of(run) == 5  # type: ignore[arg-type]
    run = SimpleNamespace(plan=rplan.ReproducePlan(), view=view)
    assert rstages.superpixel_workers_of(run) == 3  # type: ignore[arg-type]


def test_cmpa_stage_passes_the_count_to_its_rows(
    voc: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``stage_cmpa`` scores its rows with the run's superpixel workers (its model is faked:
    training is not what this checks)."""
    cfg = load_config(REPO / "configs" / "voc.yaml", voc["overrides"])
    seen: dict[str, Any] = {}

    def score_rows(*args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        return {}

    model = SimpleNamespace(cmpa=torch.nn.Identity(), labeler=object())
    monkeypatch.setattr(rstages, "load_model", lambda folder, device: (model, None))
    monkeypatch.setattr(rstages, "score_rows", score_rows)
    plan = rplan.ReproducePlan(device="cpu", progress=False, superpixel_workers=7)
    run = SimpleNamespace(
        cfg=cfg, plan=plan, device=torch.device("cpu"), view=None, is_main=False,
        folder=lambda name: tmp_path / name,
    )  # fmt: skip
    rstages.stage_cmpa(run, False)  # type: ignore[arg-type]
    assert seen["superpixel_workers"] == 7


# ---------------------------------------------------------------------------------- errors


def test_a_worker_error_names_the_image_and_stops_the_pool() -> None:
    """A real worker process fails (SLIC with 0 segments divides by zero): the error comes
    back in the caller, naming the image."""
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cfg = load_config(None, [])
    broken = dataclasses.replace(cfg, sgc=dataclasses.replace(cfg.sgc, n_segments=0))
    with SuperpixelPool(1) as pool:
        fine = pool.submit(["ok"], images[:1], cfg)
        bad = pool.submit(["2007_000123", "other"], images, broken)
        assert fine.result().shape == (1, 16, 16)
        with pytest.raises(SuperpixelError, match="SLIC superpixels of 2007_000123") as err:
            bad.result()
    assert err.value.image_key == "2007_000123"
    assert isinstance(err.value.__cause__, ZeroDivisionError)
    assert multiprocessing.active_children() == []
    with pytest.raises(ValueError, match="keys for"):
        SuperpixelPool(1).submit(["one"], images, cfg)
    with pytest.raises(ValueError, match=">= 1"):
        SuperpixelPool(0)


def test_a_worker_error_in_pseudo_labels_names_the_image(
    world: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real worker processes running a SLIC that fails on img1: the command stops with an error
    naming img1, the images before it are written, no worker is left running."""
    monkeypatch.setattr(sp_module, "slic_labels", slic_fakes.slic_failing_on_width_24)
    out = tmp_path / "out"
    args = ["pseudo-labels", "--split", "train", "--no-progress", "--out", str(out)]
    with pytest.raises(SuperpixelError, match="SLIC superpixels of img1: ValueError"):
        main([*args, "--superpixel-workers", "2", *world])
    assert (out / "img0.png").is_file() and not (out / "img1.png").exists()
    assert multiprocessing.active_children() == []


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("command", ["pseudo-labels", "cams", "reproduce"])
def test_a_negative_count_is_refused_naming_the_option(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--config", "c.yaml", "--out", "o", "--superpixel-workers", "-1"])
    assert exit_.value.code == 2
    assert "argument --superpixel-workers: must be >= 0, got -1" in capsys.readouterr().err


def test_no_prefetch_and_a_worker_count_are_refused_together(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["cams", "--out", "o", "--no-prefetch", "--superpixel-workers", "2"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# -------------------------------------------------------------------------------- look-ahead


def test_lookahead_is_bounded_and_in_order() -> None:
    read: list[int] = []

    def items() -> Any:
        for i in range(6):
            read.append(i)
            yield i

    handed = []
    for item, started_value in lookahead(items(), lambda i: i * 10, depth=2):
        assert started_value == item * 10
        # started up to 2 items past the one handed out, never further
        assert max(read) == min(item + 2, 5)
        handed.append(item)
    assert handed == list(range(6))


def test_ctrl_c_shuts_the_pool_down(
    world: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the second image is labelled (real workers busy with the images ahead):
    exit 130, the first image kept, no worker process left running."""
    import ssrseg.commands.pseudo_labels as pl

    real = pl.run_labeler
    calls: list[str] = []

    def interrupted(job: Any, sample: Any, prepared: Any = None) -> Any:
        calls.append(sample.image_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job, sample, prepared)

    monkeypatch.setattr(pl, "run_labeler", interrupted)
    out = tmp_path / "out"
    args = ["pseudo-labels", "--split", "train", "--no-progress", "--out", str(out)]
    assert main([*args, "--superpixel-workers", "2", *world]) == 130
    assert calls == ["img0", "img1"] and (out / "img0.png").is_file()
    assert not (out / "img1.png").exists()
    assert multiprocessing.active_children() == []
