"""Issue 24: ``cams``, ``pseudo-labels``, ``evaluate --checkpoint`` and ``predict`` under
``torchrun`` (2 ranks; 2 "machines" on one host), with ``--shard K/N`` + ``--merge``, and after a
kill -9: the outputs equal one process's (same PNG bytes, same arrays, same metrics JSON).

The one-process references run here with the CRF in the main process (``--crf-workers 0``); the
ranks use one CRF worker process each, so the pool is checked against the serial path too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from parallel_fakes import (
    World,
    children,
    free_port,
    kill_tree,
    launch,
    run_torchrun,
    toy_world,
    voc_world,
)
from ssrseg.cli import main
from ssrseg.engine.distributed import StageContext, StageError, guard_image, rank_view
from ssrseg.engine.shard import Shard

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The ranks run with one torch thread (OMP_NUM_THREADS=1); the references here too: a
    different intra-op thread count may change float reductions (CAM values at the last bit),
    which is not what these tests compare."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def commands(w: World, out: Path, workers: str, extra: tuple[str, ...] = ()) -> list[list[str]]:
    """The four commands on ``w``, writing under ``out``."""
    crf = ["--crf-workers", workers, *extra]
    quiet = ["--no-progress", *extra]
    return [
        ["pseudo-labels", "--out", str(out / "pl"), *w.dataset, "--crf", "--eval", *quiet, *crf[:2],
         *w.overrides],
        ["cams", "--out", str(out / "cams"), *w.dataset, *quiet, *w.overrides],
        ["evaluate", "--checkpoint", str(w.checkpoint), *w.dataset, "--crf", "both", "--quiet",
         "--out", str(out / "metrics.json"), "--save-pred", str(out / "pred"), *crf],
        ["predict", str(w.images), "--checkpoint", str(w.checkpoint), "--out", str(out / "predict"),
         "--crf", *quiet, *crf[:2]],
    ]  # fmt: skip


def outputs(folder: Path) -> dict[str, object]:
    """Every output file under ``folder``: bytes, arrays for ``.npz`` (their zip headers hold
    the write time), parsed JSON for metrics; leaves out temporary dot-files."""
    found: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in Path(rel).parts):
            continue
        if path.suffix == ".npz":
            with np.load(path) as data:
                found[rel] = {k: data[k].tolist() for k in data.files}
        elif path.suffix == ".json" and path.name != "run.json":
            found[rel] = json.loads(path.read_text())
        else:
            found[rel] = path.read_bytes()
    return found


def run_all(argvs: list[list[str]]) -> None:
    for argv in argvs:
        assert main(argv) == 0, argv


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> World:
    return toy_world(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> World:
    return voc_world(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="module")
def toy_ref(toy: World, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("toy_ref")
    run_all(commands(toy, out, "0"))
    return outputs(out)


@pytest.fixture(scope="module")
def voc_ref(voc: World, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("voc_ref")
    run_all(commands(voc, out, "0"))
    return outputs(out)


def test_two_ranks_equal_one_process_toy(toy: World, toy_ref: dict, tmp_path: Path) -> None:
    text = run_torchrun(commands(toy, tmp_path, "1"), tmp_path)
    assert outputs(tmp_path) == toy_ref
    assert text.count("pseudo labels vs ground truth") == 1  # one table: the summed matrices
    assert any(k.startswith("pl/") and k.endswith(".png") for k in toy_ref)


def test_two_ranks_equal_one_process_fake_voc(voc: World, voc_ref: dict, tmp_path: Path) -> None:
    run_torchrun(commands(voc, tmp_path, "1"), tmp_path)
    assert outputs(tmp_path) == voc_ref
    metrics = voc_ref["metrics.json"]
    assert isinstance(metrics, dict) and metrics["crf"]["images"] == 2


def test_two_machines_equal_one_process(toy: World, toy_ref: dict, tmp_path: Path) -> None:
    """Two torchrun launches (--nnodes 2, --node_rank 0 / 1, one rank each) on one host."""
    plan = commands(toy, tmp_path, "1")[2:3]  # evaluate --checkpoint (scores, PNGs, CRF pool)
    port = free_port()
    procs = [launch(plan, tmp_path, 1, nnodes=2, node_rank=n, port=port) for n in (0, 1)]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-4000:]
    got = outputs(tmp_path)
    expected = {k: v for k, v in toy_ref.items() if k.startswith("pred/")}
    expected["metrics.json"] = toy_ref["metrics.json"]
    assert got == expected


def test_shards_and_merge_equal_one_process(voc: World, voc_ref: dict, tmp_path: Path) -> None:
    """--shard 0/2 and 1/2 as independent processes, then ``evaluate --merge``."""
    for k in (0, 1):
        run_all(commands(voc, tmp_path, "0", ("--shard", f"{k}/2")))
    shard_files = [tmp_path / f"metrics.shard-{k}-of-2.json" for k in (0, 1)]
    one = json.loads(shard_files[0].read_text())
    assert one["shard"]["index"] == 0 and one["crf"]["images"] < 2  # a share, not the split
    merged = tmp_path / "metrics.json"
    assert main(["evaluate", "--merge", *map(str, shard_files), "--out", str(merged)]) == 0
    for path in shard_files:
        path.unlink()
    assert outputs(tmp_path) == voc_ref
    # the union of the shards' label PNGs scores as one process's
    assert main(["evaluate", "--pred", str(tmp_path / "pl"), *voc.dataset, "--quiet"]) == 0
    with pytest.raises(SystemExit):
        main(["evaluate", "--merge"])
    assert main(["evaluate", "--merge", str(shard_files[0]), "--out", "x.json"]) == 2


@pytest.mark.parametrize("victim", ["job", "rank"])
def test_kill_and_resume_with_another_process_count(
    victim: str, toy: World, toy_ref: dict, tmp_path: Path
) -> None:
    """kill -9 of the whole 2-rank job (or of one rank: torchrun then stops the other, whose
    SIGTERM unwinds) once a file is written; rerun with 1 process: the files written before the
    kill are kept as they are, the rest equals the uninterrupted run."""
    plan = commands(toy, tmp_path, "1")[:1]  # pseudo-labels
    proc = launch(plan, tmp_path, 2)
    pl = tmp_path / "pl"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if any(pl.glob("*.png")):
            break
        time.sleep(0.02)
    if victim == "job":
        kill_tree(proc.pid)
    else:
        ranks = children(proc.pid)
        if ranks:
            kill_tree(ranks[0])
    proc.communicate(timeout=300)
    before = {p.name: p.stat().st_mtime_ns for p in pl.glob("*.png")}
    assert main(commands(toy, tmp_path, "0")[0]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in pl.glob("*.png")}
    assert all(after[name] == stamp for name, stamp in before.items())  # nothing redone
    expected = {k: v for k, v in toy_ref.items() if k.startswith("pl/")}
    assert {k: v for k, v in outputs(tmp_path).items() if k.startswith("pl/")} == expected


def test_a_failed_image_names_the_process_and_leaves_no_partial_files(
    toy: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from ssrseg.commands import pseudo_labels

    real = pseudo_labels.run_labeler

    def fail_on_img2(job, sample, prepared=None):  # type: ignore[no-untyped-def]
        if sample.image_id == "img2":
            raise RuntimeError("out of memory")
        return real(job, sample, prepared)

    monkeypatch.setattr(pseudo_labels, "run_labeler", fail_on_img2)
    # by pixel count img0 (1350 px) goes to share 0, img2 (1089) and img1 (960) to share 1
    with pytest.raises(StageError, match=r"img2 \(shard 1/2\): RuntimeError: out of memory"):
        main(commands(toy, tmp_path, "0", ("--shard", "1/2"))[0])
    pngs = sorted(p.name for p in (tmp_path / "pl").iterdir() if p.suffix == ".png")
    assert pngs == ["img1.png"]  # the one finished before; nothing partial, no temp files
    assert not [p for p in (tmp_path / "pl").iterdir() if p.name.startswith(".")]
    view = StageContext(rank_view(), Shard(3, 4), Shard(1, 2))
    with pytest.raises(StageError) as err, guard_image(view, "a.jpg"):
        raise ValueError("bad")
    assert str(err.value) == "a.jpg (shard 1/2): ValueError: bad"
    assert "failed on a.jpg (shard 1/2)" in capsys.readouterr().err
