"""Worlds for the data-parallel tests: the toy CLI world and a fake VOC with real-layout random
weights, each with a real (random, untrained) SSR checkpoint that a fresh process can load, and
helpers that launch ``torchrun`` on them (tests/parallel_driver.py runs several commands in one
launch, so the ranks pay the start-up once)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from cli_fakes import write_cli_world
from reproduce_fakes import REPO, make_fake_voc, tiny_overrides, write_weights
from ssrseg.config import load_config
from ssrseg.engine.checkpoint import rng_state, save_checkpoint, state_from
from ssrseg.pseudo.labeler import build_ssr_model

DRIVER = Path(__file__).parent / "parallel_driver.py"


@dataclass(frozen=True)
class World:
    """Overrides that point a command at a dataset + backbones, and a checkpoint on them."""

    overrides: list[str]
    dataset: list[str]  # --dataset ... --root ... --split ...
    checkpoint: Path
    images: Path  # a folder of the split's images (for predict)


def _checkpoint(run: Path, config: str | None, overrides: list[str], classes: int) -> Path:
    torch.manual_seed(0)
    cfg = load_config(config, overrides)
    model = build_ssr_model(cfg, classes).eval()
    save_checkpoint(
        run, 1, model.trainable_state_dict(), {}, state_from(1, cfg, classes, [rng_state()])
    )
    return run


def toy_world(base: Path) -> World:
    """The toy CLI world (3 images of uneven sizes, 2 classes) and a checkpoint."""
    overrides = [*write_cli_world(base, fast=True), "cmpa.in_dim=16", "cmpa.hidden_dim=8"]
    overrides += ["cmpa.out_dim=8", "decoder.embed_dim=16", "decoder.num_heads=2"]
    overrides += ["decoder.num_layers=1", "infer.scales=[1.0]", "crf.iterations=2"]
    ckpt = _checkpoint(base / "run", None, overrides, 3)
    root = base / "toy"
    return World(
        overrides, ["--dataset", "toy", "--root", str(root), "--split", "train"], ckpt,
        root / "JPEGImages",
    )  # fmt: skip


def voc_world(base: Path) -> World:
    """A fake VOC2012 (real layout; train / val / test) with real-layout random CLIP ViT-B/16
    and DINO ViT-S/16 weights at tiny widths, and a 21-class checkpoint."""
    root = make_fake_voc(base / "data")
    clip, dino = write_weights(base / "weights")
    overrides = tiny_overrides(clip, dino, root)
    config = str(REPO / "configs" / "voc.yaml")
    ckpt = _checkpoint(base / "run", config, overrides, 21)
    return World(
        ["--config", config, *overrides],
        ["--dataset", "voc", "--root", str(root), "--split", "val"],
        ckpt,
        root / "JPEGImages",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    """This tree first on the path; one torch thread per rank (2 ranks share 2 cores)."""
    src = str(REPO / "src")
    tests = str(REPO / "tests")
    path = os.pathsep.join([src, tests, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def torchrun_args(nproc: int, port: int, nnodes: int = 1, node_rank: int = 0) -> list[str]:
    launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes == 1:
        return [*launch, "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}"]
    return [
        *launch,
        f"--nnodes={nnodes}",
        f"--node_rank={node_rank}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
    ]


def launch(
    commands: list[list[str]], folder: Path, nproc: int = 2, **kw: int
) -> subprocess.Popen[str]:
    """Start ``torchrun`` running ``commands`` (ssrseg argv lists) one after the other."""
    plan = folder / f".plan-{kw.get('node_rank', 0)}.json"  # a dot-file: not an output
    plan.write_text(json.dumps(commands))
    port = kw.pop("port", None) or free_port()
    argv = [*torchrun_args(nproc, port, **kw), str(DRIVER), str(plan)]
    return subprocess.Popen(
        argv, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def run_torchrun(
    commands: list[list[str]], folder: Path, nproc: int = 2, timeout: int = 600
) -> str:
    """Run ``commands`` under ``torchrun`` with ``nproc`` ranks; their output (fails the test
    on a non-zero exit)."""
    proc = launch(commands, folder, nproc)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-6000:]
    return out


def children(pid: int) -> list[int]:
    """Child processes of ``pid`` (started by any of its threads), oldest first."""
    found: list[int] = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the thread or process has just ended
            continue
    return sorted(found)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants (torchrun, its ranks, their pool workers)."""
    for kid in children(pid):
        kill_tree(kid)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
