"""PAR's compiled kernels (``ssrseg.rectify.par_native``): compiler search, cache key and
folders, the build's fallbacks and error messages (with a fake compiler: no real build), the
on/off switch, the thread / chunk policy and the arguments handed to the kernels
(mutation-testing follow-up, see ``docs/mutation/rectify.par_native.md``)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import stat
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from ssrseg.config import PARConfig
from ssrseg.rectify import par_native
from ssrseg.rectify.par import neighbour_offsets, par_weights

FLAGS_NATIVE = "-O3 -march=native -fPIC -shared -pthread"
FLAGS_PLAIN = "-O3 -fPIC -shared -pthread"

# A stand-in for cc: logs its arguments, then by $FAKECC_MODE writes the -o file and exits 0
# ("ok"), refuses -march=native, or writes the file but fails ("fail", stderr $FAKECC_ERR).
FAKE_CC = """#!/bin/sh
echo "$@" >> "$FAKECC_LOG"
out=""; prev=""
for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done
case "$FAKECC_MODE" in
  refuse) case " $* " in *" -march=native "*) echo "unknown -march" >&2; exit 1;; esac;;
  fail) : > "$out"; printf '%s' "$FAKECC_ERR" >&2; exit 1;;
esac
: > "$out"
"""


def _executable(path: Path, text: str = "#!/bin/sh\n") -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def fake_cc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A fake compiler, an empty cache ($SSRSEG_CACHE two folders deep: mkdir needs parents)
    and an empty temporary folder; returns (compiler, log file)."""
    log = tmp_path / "cc.log"
    monkeypatch.setenv("FAKECC_LOG", str(log))
    monkeypatch.setenv("FAKECC_MODE", "ok")
    monkeypatch.setenv("SSRSEG_CACHE", str(tmp_path / "home" / "cache"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return str(_executable(tmp_path / "fakecc", FAKE_CC)), log


def test_threads_and_chunk_policy() -> None:
    tc = par_native._threads_and_chunk
    assert tc(1000, 1000, 4) == (4, 31)  # 8 chunks per thread: 1000 // 32
    assert tc(1000, 100, 4) == (1, 125)  # 1e5 < 2e5 units of work: one thread, 8 chunks
    assert tc(1000, 200, 4) == (4, 31)  # exactly 2e5 is worth the threads
    assert tc(4, 100_000, 4) == (4, 1)  # fewer rows than chunks: one row per chunk
    n, chunk = tc(100, 10_000, 1)
    assert (n, chunk) == (1, 12) and isinstance(chunk, int)
    assert tc(1000, 1000, 0) == (1, 125)  # 0 threads means 1
    torch_n = torch.get_num_threads()
    assert tc(1000, 1000, None) == (torch_n, max(1, 1000 // (8 * torch_n)))
    assert tc(1000, 1000, torch_n + 2)[0] == torch_n + 2  # an explicit count wins


def test_compiler_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert par_native._compiler() is None
    for name in ("clang", "gcc", "cc"):  # each one found alone, then preferred to the last
        _executable(tmp_path / name)
        assert par_native._compiler() == str(tmp_path / name)
    monkeypatch.setenv("CC", "clang")
    assert par_native._compiler() == str(tmp_path / "clang")


def test_cpu_signature_reads_the_first_cpu_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor : 0\nmodel name : A\nflags : f1\nbogomips : 1\n"
        "processor : 1\nFeatures : g1\nmodel name : B\nflags : f2\n"
    )
    real_path = par_native.Path
    monkeypatch.setattr(
        par_native, "Path", lambda p: info if p == "/proc/cpuinfo" else real_path(p)
    )
    monkeypatch.setattr(par_native.platform, "machine", lambda: "m")
    monkeypatch.setattr(par_native.platform, "processor", lambda: "p")
    # machine, processor, then the first 4 model / flags / Features lines (one CPU's worth)
    expected = "m\np\nmodel name : A\nflags : f1\nFeatures : g1\nmodel name : B"
    assert par_native._cpu_signature() == expected


def test_kernel_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSRSEG_CACHE", str(tmp_path / "c"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "t"))
    user = os.getuid() if hasattr(os, "getuid") else "user"
    assert par_native._kernel_dirs() == [
        tmp_path / "c" / "kernels",
        tmp_path / "t" / f"ssrseg-kernels-{user}",
    ]
    monkeypatch.delattr(os, "getuid", raising=False)  # Windows: no user id
    assert par_native._kernel_dirs()[1] == tmp_path / "t" / "ssrseg-kernels-user"


def test_build_into_the_cache_atomically(fake_cc: tuple[str, Path], tmp_path: Path) -> None:
    cc, log = fake_cc
    target = par_native._build(cc)
    key = hashlib.sha256(
        "\0".join(
            [par_native._SOURCE, cc, *FLAGS_NATIVE.split(), par_native._cpu_signature()]
        ).encode()
    ).hexdigest()[:16]
    assert target == tmp_path / "home" / "cache" / "kernels" / f"par_kernels_{key}.so"
    assert target.is_file()
    args = log.read_text().split()
    # compiled in a temporary folder inside the target folder (os.replace is then atomic)
    out = Path(args[args.index("-o") + 1])
    assert out.parent.parent == target.parent and out.name == target.name
    assert args[:5] == FLAGS_NATIVE.split() and args[-1] == "-lm"
    # a second build finds the library, with no compiler run
    assert par_native._build(cc) == target
    assert len(log.read_text().splitlines()) == 1
    # an existing folder without the library: built there again
    target.unlink()
    assert par_native._build(cc) == target
    assert len(log.read_text().splitlines()) == 2


def test_build_macos_suffix(fake_cc: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert par_native._build(fake_cc[0]).suffix == ".dylib"


def test_build_falls_back_to_plain_flags(
    fake_cc: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cc, log = fake_cc
    monkeypatch.setenv("FAKECC_MODE", "refuse")
    target = par_native._build(cc)
    assert target.is_file() and target.parent.name == "kernels"
    runs = log.read_text().splitlines()
    assert len(runs) == 2 and runs[1].startswith(FLAGS_PLAIN + " ")


def test_build_failure_message(fake_cc: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    cc, _ = fake_cc
    monkeypatch.setenv("FAKECC_MODE", "fail")  # writes its output file but exits 1
    monkeypatch.setenv("FAKECC_ERR", "  boom\n")
    with pytest.raises(RuntimeError) as err:
        par_native._build(cc)
    assert str(err.value) == f"{FLAGS_NATIVE}: boom; {FLAGS_PLAIN}: boom"
    # long compiler output: its last 500 characters
    monkeypatch.setenv("FAKECC_ERR", "a" * 100 + "b" * 500)
    with pytest.raises(RuntimeError) as err:
        par_native._build(cc)
    assert str(err.value) == f"{FLAGS_NATIVE}: {'b' * 500}; {FLAGS_PLAIN}: {'b' * 500}"


def test_build_with_no_writable_folder(fake_cc: tuple[str, Path], tmp_path: Path) -> None:
    (tmp_path / "home").write_text("a file where a folder should be")
    tempfile.tempdir = str(tmp_path / "home" / "tmp")  # restored by the fixture's monkeypatch
    with pytest.raises(RuntimeError, match=r"home/cache/kernels: .*; .*home/tmp/ssrseg-kernels"):
        par_native._build(fake_cc[0])


def test_build_gives_a_hung_compiler_two_minutes(
    fake_cc: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    real_run = par_native.subprocess.run

    def run(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(par_native.subprocess, "run", run)
    par_native._build(fake_cc[0])
    assert calls == [{"capture_output": True, "text": True, "timeout": 120}]


@pytest.mark.parametrize("value", ["0", " False ", "NO", "Off"])
def test_switch_values_disable_the_kernels(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(par_native.ENV_SWITCH, value)
    assert par_native.load() is None


def test_failed_load_warns_at_the_caller_and_keeps_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(par_native.ENV_SWITCH, raising=False)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    par_native.reset()
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            par_weights(torch.rand(1, 3, 4, 4, dtype=torch.float64), PARConfig(dilations=(1,)))
        assert len(rec) == 1 and rec[0].category is RuntimeWarning
        # stacklevel: reported at PAR's caller, not inside this module (the exact frame is not
        # checked: mutmut's trampolines add frames between the caller and load())
        assert rec[0].filename != par_native.__file__
        assert str(rec[0].message) == (
            "PAR: compiled CPU kernels unavailable, using the torch form (no C compiler found "
            f"(set CC or install gcc)); set {par_native.ENV_SWITCH}=0 to silence this"
        )
        assert par_native._state["error"] == "no C compiler found (set CC or install gcc)"
    finally:
        par_native.reset()


needs_compiler = pytest.mark.skipif(par_native._compiler() is None, reason="no C compiler")


class _Recorder:
    """Wraps the kernel library: records the arguments of each call, or fails with 1."""

    def __init__(self, lib: ctypes.CDLL, fail: bool = False) -> None:
        self.lib, self.fail = lib, fail
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> int:
            self.calls.append(args)
            return 1 if self.fail else int(getattr(self.lib, name)(*args))

        return call


@needs_compiler
def test_kernel_arguments() -> None:
    lib = par_native.load()
    assert lib is not None
    gen = torch.Generator().manual_seed(20)
    offsets = neighbour_offsets((1, 2))
    images = torch.rand(2, 3, 5, 6, generator=gen)
    rec = _Recorder(lib)
    w = par_native.weights(rec, images, offsets, 1e-8, 0.3, torch.zeros(16), 1.5, threads=3)  # type: ignore[arg-type]
    _, _, is_double, *dims, m, dy, dx, eps, t, _, norm, n, chunk = rec.calls[0]
    assert (is_double, dims, m, list(dy), list(dx)) == (
        0,
        [2, 3, 5, 6, 2],
        16,
        [o[0] for o in offsets],
        [o[1] for o in offsets],
    )
    # 10 rows x (3 * 16 * 3 * 6) work is below the thread threshold: 1 thread, 10 // 8 rows
    assert (eps, t, norm, n, chunk) == (1e-8, 0.3, 1.5, 1, 1)
    # weights work per row is 3 * M * C * W = 144 W over 2 H rows: 20 x 40 (230400 units)
    # is worth 3 threads, 20 x 30 (172800) is not
    pos = torch.zeros(16)
    for width, n_chunk in [(40, (3, 40 // 24)), (30, (1, 40 // 8))]:
        img = torch.rand(2, 3, 20, width, generator=gen)
        par_native.weights(rec, img, offsets, 1e-8, 0.3, pos, None, threads=3)  # type: ignore[arg-type]
        assert rec.calls.pop()[-2:] == n_chunk
    scores = torch.rand(2, 4, 5, 6, generator=gen, dtype=torch.float64)
    par_native.propagate(rec, scores, w.double(), offsets, 3, threads=3)  # type: ignore[arg-type]
    *_, is_double, b, k, h, wd, pad, m, _, _, its, n, chunk = rec.calls[1]
    assert (is_double, b, k, h, wd, pad, m, its, n, chunk) == (1, 2, 4, 5, 6, 2, 16, 3, 1, 1)
    # 2 x 40 rows of 16 * 4 * 10 * 5 = 3200 units: 256000 in all, just worth 3 threads
    big = torch.rand(2, 4, 40, 10, generator=gen)
    ww = torch.rand(2, 16, 40, 10, generator=gen)
    par_native.propagate(rec, big, ww, offsets, 5, threads=3)  # type: ignore[arg-type]
    assert rec.calls[2][-2:] == (3, 80 // 24)


@needs_compiler
def test_kernel_failure_is_a_memory_error() -> None:
    lib = par_native.load()
    assert lib is not None
    rec = _Recorder(lib, fail=True)
    offsets = neighbour_offsets((1,))
    x = torch.rand(1, 3, 4, 4)
    with pytest.raises(MemoryError, match=r"^PAR kernel: out of memory$"):
        par_native.weights(rec, x, offsets, 1e-8, 0.3, torch.zeros(8), None)  # type: ignore[arg-type]
    with pytest.raises(MemoryError, match=r"^PAR kernel: out of memory$"):
        par_native.propagate(rec, x, torch.rand(1, 8, 4, 4), offsets, 2)  # type: ignore[arg-type]
    # the position term is converted to the images' dtype before the kernel reads it
    pos = torch.rand(8, generator=torch.Generator().manual_seed(21))
    w32 = par_native.weights(lib, x, offsets, 1e-8, 0.3, pos, None)
    assert torch.equal(par_native.weights(lib, x, offsets, 1e-8, 0.3, pos.double(), None), w32)
    with pytest.raises(ValueError, match=r"position term has shape \(7,\), expected \(8,\)"):
        par_native.weights(lib, x, offsets, 1e-8, 0.3, torch.zeros(7), None)
