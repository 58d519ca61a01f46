"""Issue 24, points 1, 4 and 5 for ``ssrseg reproduce``: a real kill -9 of a 2-rank job (the
whole job, or one rank) in the middle of a data-parallel stage, resumed with 2 ranks or with
one process; a 2-"machine" job (two ``torchrun`` launches on one host, c10d rendezvous); a
failed image in one rank of ``seeds``. Every finished result equals one uninterrupted process's
run on the tiny fake VOC of tests/test_reproduce.py (same PNG bytes, the same metrics.json
text and report tables), and a file finished before the kill is never written again.

The ranks run tests/fault_driver.py, which holds a rank at a chosen write (so the kill lands
at a known point of a stage, not by chance) or makes one image fail there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import parallel_fakes
from parallel_fakes import children, free_port, kill_tree, torchrun_args
from reproduce_fakes import REPO, fake_voc_world
from ssrseg.atomic import is_temporary, remove_stale_temporaries
from ssrseg.cli import main
from ssrseg.config import load_config
from ssrseg.engine.distributed import DistContext, StageContext, StageError
from ssrseg.engine.export import archive_voc_results
from ssrseg.engine.shard import parse_shard
from ssrseg.protocol import cam_rows
from ssrseg.protocol import plan as rplan
from ssrseg.protocol import reproduce as rp
from ssrseg.protocol.report import measured

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).parent / "fault_driver.py"
WORK = ("seeds", "cmpa", "eval", "export")
# the report's tables and the stages whose outputs fill them
TABLES = {
    "table3_raw": ("seeds",),
    "table3_cmpa": ("cmpa",),
    "table4": ("seeds", "cmpa"),
    "segmentation": ("eval",),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return fake_voc_world(tmp_path_factory.mktemp("repro"))


@pytest.fixture(scope="module")
def ref(world: dict[str, Any]) -> Path:
    """One uninterrupted run of every stage in this process: what every test compares with."""
    out = world["base"] / "ref"
    cfg = load_config(REPO / "configs" / "voc.yaml", world["overrides"])
    plan = rplan.ReproducePlan(device="cpu", progress=False, panels=1, crf="on")
    rp.run_reproduce(cfg, out, plan)
    return out


def command(world: dict[str, Any], out: Path, stages: str) -> list[str]:
    """The ``ssrseg reproduce`` argv of the runs here: training is reused from ``ref``
    (``--gpus 1``: its record does not depend on the number of ranks)."""
    return ["reproduce", "--config", str(REPO / "configs" / "voc.yaml"), "--out", str(out),
            "--device", "cpu", "--crf", "on", "--panels", "1", "--no-progress", "--gpus", "1",
            "--stages", stages, *world["overrides"]]  # fmt: skip


def untrained_copy(ref: Path, out: Path) -> Path:
    """``ref`` without the data-parallel stages' folders (training, check kept)."""
    shutil.copytree(ref, out)
    for stage in WORK:
        shutil.rmtree(out / stage)
    return out


def start(
    argvs: list[list[str]], folder: Path, launcher: list[str], name: str = "0", **faults: str
) -> subprocess.Popen[str]:
    """``launcher`` (a torchrun command line) running tests/fault_driver.py on ``argvs``. The
    ranks get this process's torch thread count: the reference ran here, and float reductions
    may differ between thread counts (docs/reproduce.md)."""
    plan = folder / f".plan-{name}.json"
    plan.write_text(json.dumps(argvs))
    env = {**parallel_fakes.env(), "OMP_NUM_THREADS": str(torch.get_num_threads()), **faults}
    return subprocess.Popen(
        [*launcher, str(DRIVER), str(plan)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], ok: bool = True) -> str:
    out, _ = proc.communicate(timeout=600)
    assert (proc.returncode == 0) == ok, out[-6000:]
    return out


def wait_until(proc: subprocess.Popen[str], ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, "the job ended before the kill: " + finish(proc, ok=False)
        assert time.monotonic() < deadline, "the job never reached the kill point"
        time.sleep(0.05)


def pngs(folder: Path) -> list[Path]:
    """Finished PNGs (temporaries are dot-files)."""
    return sorted(p for p in folder.rglob("*.png") if not p.name.startswith("."))


def temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*") if is_temporary(p.name))


def stamps(files: list[Path]) -> dict[Path, tuple[int, int]]:
    """(mtime_ns, inode) per file: an atomic rewrite gives a new inode, a rewrite in place a
    new mtime."""
    return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in files}


def rank_pid(torchrun: int, rank: int) -> int:
    """The process of ``rank`` among torchrun's children (from the RANK it was started with)."""
    for pid in children(torchrun):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no rank {rank} under {torchrun}")


def _state(out: Path, stage: str) -> dict[str, Any]:
    return json.loads((out / stage / "stage.json").read_text())


def assert_equals_reference(run: Path, ref: Path, stages: tuple[str, ...]) -> None:
    """``stages`` of ``run`` equal ``ref``'s: PNG bytes, metrics.json text, the stage result,
    the report's tables, the export archives' members; no temporary left anywhere."""
    for stage in stages:
        ours, theirs = pngs(run / stage), pngs(ref / stage)
        assert [p.relative_to(run) for p in ours] == [p.relative_to(ref) for p in theirs]
        for a, b in zip(ours, theirs, strict=True):
            assert a.read_bytes() == b.read_bytes(), a
        if (ref / stage / "metrics.json").is_file():  # export writes none
            metrics = (d / stage / "metrics.json" for d in (run, ref))
            assert next(metrics).read_text() == next(metrics).read_text(), stage
        state = _state(run, stage)
        assert state["status"] == "done" and state["result"] == _state(ref, stage)["result"]
    report, expected = (json.loads((d / "report.json").read_text()) for d in (run, ref))
    for key, needs in TABLES.items():
        if set(needs) <= set(stages):
            assert measured(report, key) == measured(expected, key), key
    if "export" in stages:
        for mode in ("no_crf", "crf"):
            with tarfile.open(run / "export" / mode / "results.tar.gz") as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
            ours = {p.relative_to(run / "export" / mode).as_posix(): p.read_bytes()
                    for p in pngs(run / "export" / mode)}  # fmt: skip
            assert members == ours and len(members) == 2
    assert temporaries(run) == []


def test_kill9_of_the_job_mid_eval_resumes_on_two_ranks(
    world: dict[str, Any], ref: Path, tmp_path: Path
) -> None:
    """kill -9 of torchrun, both ranks and their CRF workers while ``eval`` runs: rank 1 sits
    inside the atomic write of its image's CRF PNG (its no-CRF PNG is written), rank 0 has
    written both PNGs of its image. The same command on 2 ranks resumes eval: the three
    finished PNGs are kept as they are (not even rewritten with equal bytes), the killed
    write's temporary is removed, seeds and cmpa are reused; every output equals ``ref``."""
    run = untrained_copy(ref, tmp_path / "run")
    argv = command(world, run, ",".join(WORK))
    hold = "1:eval/pred/crf/:inside"
    proc = start([argv], tmp_path, torchrun_args(2, free_port()), SSRSEG_TEST_HOLD=hold)
    pred = run / "eval" / "pred"

    def killed_mid_write() -> bool:
        done = (len(pngs(pred / "no_crf")), len(pngs(pred / "crf")))
        return done == (2, 1) and len(temporaries(pred)) == 1

    wait_until(proc, killed_mid_write)
    kill_tree(proc.pid)
    finish(proc, ok=False)
    assert _state(run, "eval")["status"] == "running"
    [left] = temporaries(pred)
    assert left.parent == pred / "crf" and left.name.startswith(".2008_00000")
    kept = stamps(pngs(pred))
    tokens = {s: _state(run, s)["token"] for s in ("seeds", "cmpa")}

    out = finish(start([argv], tmp_path, torchrun_args(2, free_port()), name="1"))
    assert "[eval] resumed" in out and "[eval] removed 1 temporary file(s)" in out
    assert "seeds reuse" in out and "cmpa reuse" in out
    assert {s: _state(run, s)["token"] for s in tokens} == tokens
    assert stamps(list(kept)) == kept
    assert_equals_reference(run, ref, WORK)


def test_kill9_of_one_rank_mid_seeds_resumes_in_one_process(
    world: dict[str, Any], ref: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 of rank 0 alone in the pseudo-label row of ``seeds`` (its first label PNG
    written; rows before it finished): torchrun stops rank 1 and the job fails. The same
    command in one process resumes: the finished rows' files and the PNG are kept as they are,
    and seeds equals ``ref``."""
    run = untrained_copy(ref, tmp_path / "run")
    argv = command(world, run, "seeds")
    hold = "0:seeds/labels/:after"
    proc = start([argv], tmp_path, torchrun_args(2, free_port()), SSRSEG_TEST_HOLD=hold)
    labels = run / "seeds" / "labels"
    wait_until(proc, lambda: len(pngs(labels)) == 1)
    victim, other = rank_pid(proc.pid, 0), rank_pid(proc.pid, 1)
    os.kill(victim, signal.SIGKILL)
    finish(proc, ok=False)
    assert not Path(f"/proc/{other}").exists()  # torchrun stopped (and reaped) rank 1
    rows = sorted((run / "seeds" / "rows").glob("*.json"))
    assert len(rows) == 4  # Table 3's rows before "+ PAR (pseudo labels)"
    kept = stamps([*rows, *pngs(labels)])
    assert [p.name for p in pngs(labels)] == ["2007_000001.png"]

    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "[seeds] resumed" in text and text.count(": reused ") == 4
    assert stamps(list(kept)) == kept
    assert_equals_reference(run, ref, ("seeds",))


def test_two_machines_equal_one_process(world: dict[str, Any], ref: Path, tmp_path: Path) -> None:
    """Two torchrun launches on one host, one rank each (``--nnodes 2 --node_rank 0 / 1``,
    c10d rendezvous on 127.0.0.1) writing one run folder: every stage equals ``ref``."""
    run = untrained_copy(ref, tmp_path / "run")
    port = free_port()
    head = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
            "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}"]  # fmt: skip
    # the CRF in each rank's own process: the pool is what the kill test runs
    argv = [*command(world, run, ",".join(WORK)), "--crf-workers", "0"]
    procs = [start([argv], tmp_path, [*head, "--node_rank", str(k)], str(k)) for k in (0, 1)]
    outs = [finish(p) for p in procs]
    assert sum("2 processes" in out for out in outs) == 1  # the main rank's stage list
    assert_equals_reference(run, ref, WORK)


def test_failed_seeds_image_names_the_rank_and_leaves_no_partial_file(
    world: dict[str, Any], ref: Path, tmp_path: Path
) -> None:
    """An error in rank 0's labeller call for 2007_000002 in the pseudo-label row (the label
    PNG of 2007_000001 is written): the job fails with one line naming the rank and the image;
    no PNG of the failed image, no temporary anywhere in the run folder."""
    run = untrained_copy(ref, tmp_path / "run")
    fault = "0:2007_000002"
    proc = start([command(world, run, "seeds")], tmp_path, torchrun_args(2, free_port()),
                 SSRSEG_TEST_FAIL=fault)  # fmt: skip
    out = finish(proc, ok=False)
    named = [line for line in out.splitlines() if line.startswith("ssrseg: failed on")]
    assert named == ["ssrseg: failed on 2007_000002 (rank 0/2): RuntimeError: injected failure"]
    assert [p.name for p in pngs(run / "seeds" / "labels")] == ["2007_000001.png"]
    assert [p for p in run.rglob(".*")] == []
    assert _state(run, "seeds")["status"] == "running"


def test_labeller_error_names_the_process_and_image(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """seeds and cmpa score through ``score_labeler``: its errors name the share and the image
    (the fake VOC's images are not at the working size: one image per labeller call)."""

    def boom(labeler: Any, call: Any, cmpa: Any = None, superpixels: Any = None) -> Any:
        raise RuntimeError("boom")

    def one_call_each(labeler: Any, samples: Any, long_side: int = 0) -> Any:
        return [cam_rows.Call([s], torch.zeros(1), None) for s in samples]

    class Labeller:
        patch_size = 16

    monkeypatch.setattr(cam_rows, "labeler_calls", one_call_each)
    monkeypatch.setattr(cam_rows, "run_call", boom)
    cfg = load_config(REPO / "configs" / "voc.yaml", world["overrides"])
    dataset = rplan.open_dataset(cfg, "train", labels=True)
    view = StageContext(DistContext(), parse_shard("1/2"), parse_shard("1/2"))
    with pytest.raises(StageError, match=r"^2007_000002 \(shard 1/2\): RuntimeError: boom$"):
        cam_rows.score_labeler(Labeller(), dataset, [1, 2], 16, progress=False, view=view)


def test_stale_temporaries_are_removed_and_never_archived(tmp_path: Path) -> None:
    """What a kill -9 leaves (atomic_path's file temporary, atomic_dir's folder temporary and
    its swap backup) is recognised by name and removed; other files, dot-files included, are
    kept; the VOC test archive leaves temporaries out."""
    export = tmp_path / "export"
    root = export / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    root.mkdir(parents=True)
    (root / "2009_000001.png").write_bytes(b"png")
    (root / ".keep").write_bytes(b"")
    # the temporaries as atomic_path / atomic_dir create them (mkstemp / mkdtemp, same names)
    fd, png = tempfile.mkstemp(dir=root, prefix=".2009_000002.png.", suffix=".png")
    os.close(fd)
    ckpt = Path(tempfile.mkdtemp(dir=export, prefix=".ckpt_2.", suffix=".tmp"))
    (ckpt / "model.safetensors").write_bytes(b"")
    backup = export / ".ckpt_1.old"
    backup.mkdir()
    assert not any(map(is_temporary, [".keep", ".plan-0.json", "a.png.abcdefgh.png"]))
    with tarfile.open(archive_voc_results(export)) as tar:
        assert sorted(m.name for m in tar if m.isfile()) == [
            "results/VOC2012/Segmentation/comp6_test_cls/.keep",
            "results/VOC2012/Segmentation/comp6_test_cls/2009_000001.png",
        ]
    removed = remove_stale_temporaries(export)
    assert sorted(removed) == sorted([Path(png), ckpt, backup])
    assert not any(p.exists() for p in removed)
    assert sorted(p.name for p in root.iterdir()) == [".keep", "2009_000001.png"]
    assert (export / "results.tar.gz").is_file()
