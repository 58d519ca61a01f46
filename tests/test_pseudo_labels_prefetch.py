"""Prefetching in ``ssrseg pseudo-labels`` / ``ssrseg cams``: the next image is read, resized and
given its SLIC superpixels on a background thread; outputs, order, resuming and the reports of
broken images are those of the serial path (``--no-prefetch``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ssrseg.pseudo.labeler as labeler_module
import ssrseg.rectify.sgc as sgc_module
from cli_fakes import SIZES, with_broken_image, write_cli_world
from ssrseg.cli import main
from ssrseg.commands.prefetch import PrefetchedDataset, Prepared, superpixels_for
from ssrseg.config import SSRConfig, load_config
from ssrseg.data.base import SkipLog, iter_valid
from ssrseg.errors import BadInputError
from ssrseg.pseudo.labeler import images_to_uint8


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_cli_world(tmp_path_factory.mktemp("prefetch"), fast=True)


@pytest.fixture
def slic_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bytes, tuple[Any, ...]]]:
    """Each SLIC call, wherever it comes from: (thread name, image bytes and shape, arguments)."""
    calls: list[tuple[str, bytes, tuple[Any, ...]]] = []
    real = sgc_module.slic_superpixels

    def recording(image: np.ndarray, *args: Any) -> torch.Tensor:
        name = threading.current_thread().name
        calls.append((name, image.tobytes(), (image.shape, image.dtype, *args)))
        return real(image, *args)

    monkeypatch.setattr(sgc_module, "slic_superpixels", recording)
    monkeypatch.setattr(labeler_module, "slic_superpixels", recording)
    return calls


def files(folder: Path, suffix: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob(f"*{suffix}"))}


def test_pseudo_labels_identical_with_and_without_prefetch(
    world: list[str],
    tmp_path: Path,
    slic_calls: list[tuple[str, bytes, tuple[Any, ...]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["pseudo-labels", "--split", "train", "--no-progress", "--eval"]
    assert main([*base, "--out", str(tmp_path / "serial"), "--no-prefetch", *world]) == 0
    serial_out = capsys.readouterr().out
    serial_calls = list(slic_calls)
    # inside the labeller call (on its own SLIC thread, overlapping the backbones), one per image
    assert all(name.startswith("ssrseg-slic") for name, *_ in serial_calls)
    assert len(serial_calls) == 3
    slic_calls.clear()
    # one background thread (--superpixel-workers 0; the process pool's workers are other
    # processes, which the recording cannot see: tests/test_superpixel_pool.py)
    thread = ["--superpixel-workers", "0"]
    assert main([*base, "--out", str(tmp_path / "pre"), *thread, *world]) == 0
    prefetch_out = capsys.readouterr().out
    # every SLIC on the worker (the labeller was given the superpixels), on the same 8-bit
    # images with the same settings, in the same order
    assert all(name.startswith("prefetch") for name, *_ in slic_calls)
    assert [c[1:] for c in slic_calls] == [c[1:] for c in serial_calls]
    assert serial_calls[0][2][2:] == (10, 10.0)  # sgc.n_segments=10 of the world
    serial, prefetched = files(tmp_path / "serial", ".png"), files(tmp_path / "pre", ".png")
    assert list(serial) == [f"{name}.png" for name in sorted(SIZES)]
    assert serial == prefetched  # byte for byte
    assert serial_out.replace("serial", "pre") == prefetch_out  # tally and metrics table

    # resuming: finished images are neither labelled nor prepared (no SLIC for them)
    (tmp_path / "pre" / "img1.png").unlink()
    slic_calls.clear()
    assert main([*base, "--out", str(tmp_path / "pre"), *thread, *world]) == 0
    assert [c[1:] for c in slic_calls] == [serial_calls[1][1:]]  # img1's only
    assert slic_calls[0][0].startswith("prefetch")
    assert "2 of 3 images already done; wrote 1" in capsys.readouterr().out
    assert files(tmp_path / "pre", ".png") == serial


def test_cams_identical_with_and_without_prefetch(world: list[str], tmp_path: Path) -> None:
    base = ["cams", "--split", "train", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "serial"), "--no-prefetch", *world]) == 0
    assert main([*base, "--out", str(tmp_path / "pre"), *world]) == 0
    serial, prefetched = tmp_path / "serial", tmp_path / "pre"
    names = sorted(p.name for p in serial.glob("*.npz"))
    assert names == sorted(p.name for p in prefetched.glob("*.npz")) and len(names) == 3
    for name in names:  # (the zip container stamps times: compare the arrays' bytes)
        with np.load(serial / name) as a, np.load(prefetched / name) as b:
            assert a["cams"].tobytes() == b["cams"].tobytes()
            assert np.array_equal(a["classes"], b["classes"])


def test_broken_image_reported_as_without_prefetch(
    world: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = with_broken_image(world, tmp_path / "bad", "img1")
    errors = []
    for extra, name in ((["--no-prefetch"], "serial"), ([], "pre")):
        out = tmp_path / name
        args = ["pseudo-labels", "--split", "train", "--out", str(out), "--no-progress", *extra]
        assert main([*args, *overrides]) == 3
        errors.append(capsys.readouterr().err)
        assert (out / "img0.png").is_file() and (out / "img2.png").is_file()
        assert not (out / "img1.png").exists()
    assert "img1" in errors[1] and "SKIPPED" in errors[1]
    assert errors[0] == errors[1]
    assert files(tmp_path / "serial", ".png") == files(tmp_path / "pre", ".png")


# ----------------------------------------------------------------------------- unit level


class FakeDataset:
    """Items are their index (as a one-pixel 'image'); listed indices are broken."""

    name, split = "fake", "train"

    def __init__(self, n: int, broken: tuple[int, ...] = ()) -> None:
        self.ids = [f"im{i}" for i in range(n)]
        self.broken = broken
        self.reads: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Any:
        self.reads.append((index, threading.current_thread().name))
        if index in self.broken:
            raise BadInputError(f"{self.ids[index]}.jpg", "cannot read", self.ids[index])
        return type("S", (), {"image_id": self.ids[index], "notes": [], "index": index})()


def prepared_index(sample: Any) -> Prepared:
    return Prepared(torch.full((1, 3, 1, 1), float(sample.index)), None)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1, thread_name_prefix="worker") as executor:
        yield executor


def test_prefetched_dataset_order_errors_and_read_ahead(pool: ThreadPoolExecutor) -> None:
    data = FakeDataset(5, broken=(2,))
    order = range(4)  # a --limit of 4
    pre = PrefetchedDataset(data, order, prepared_index, pool)  # type: ignore[arg-type]
    log = SkipLog()
    got = []
    for sample in iter_valid(pre, log, order):  # type: ignore[arg-type]
        ready = pre.prepared(sample)
        assert ready is not None and ready.images01[0, 0, 0, 0].item() == sample.index
        got.append(sample.index)
        # the next item of the order is already queued / read while this one "runs"
        pool.submit(lambda: None).result()
        assert data.reads[-1][0] == min(sample.index + 1, 3)
    assert got == [0, 1, 3]
    assert log.skipped == [("im2", "im2.jpg: cannot read")]  # reported in the caller's loop
    assert [i for i, _ in data.reads] == [0, 1, 2, 3]  # each read once, in order, none past 3
    assert all(name.startswith("worker") for _, name in data.reads)
    assert pre.prepared(object()) is None  # type: ignore[arg-type]


def test_prefetched_dataset_prepare_failure_falls_back(pool: ThreadPoolExecutor) -> None:
    def failing(sample: Any) -> Prepared | None:
        if sample.index == 1:
            raise RuntimeError("slic failed")
        return None if sample.index == 2 else prepared_index(sample)

    pre = PrefetchedDataset(FakeDataset(3), range(3), failing, pool)  # type: ignore[arg-type]
    first = pre[0]
    assert pre.prepared(first) is not None
    second = pre[1]  # its preparation raised: None, the labeller redoes it in the caller
    assert second.index == 1 and pre.prepared(second) is None
    assert pre.prepared(first) is None  # only the item last read
    assert pre.prepared(pre[2]) is None  # prepare said "done"


class StepExecutor(Executor):
    """Runs the first task at once and queues the others (never run): a worker busy on one."""

    def __init__(self) -> None:
        self.futures: list[Future[Any]] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        if not self.futures:
            future.set_result(fn(*args, **kwargs))
        self.futures.append(future)
        return future


def test_prefetched_dataset_queues_one_ahead_and_cancel_drops_it() -> None:
    data, executor = FakeDataset(3), StepExecutor()
    pre = PrefetchedDataset(data, range(3), prepared_index, executor)  # type: ignore[arg-type]
    assert pre[0].index == 0
    assert len(executor.futures) == 2  # item 1 queued, nothing further
    pre.cancel()
    assert executor.futures[1].cancelled() and [i for i, _ in data.reads] == [0]


def test_superpixels_for_follows_the_mask_and_the_labeller() -> None:
    coarse = torch.rand(2, 3, 3, 4, generator=torch.Generator().manual_seed(0))
    images = torch.nn.functional.interpolate(coarse, size=(24, 32), mode="bilinear")
    cfg: SSRConfig = load_config(None, ["sgc.n_segments=6", "sgc.compactness=5"])
    sp = superpixels_for(images, cfg)
    assert sp is not None and sp.dtype == torch.long and sp.shape == (2, 24, 32)
    for i, img in enumerate(images_to_uint8(images)):
        assert torch.equal(sp[i], sgc_module.slic_superpixels(img, 6, 5.0))
    assert not torch.equal(sp, superpixels_for(images, load_config(None, [])))  # its settings
    for mask in ("box", "none"):
        assert superpixels_for(images, load_config(None, [f"affinity.mask={mask}"])) is None
