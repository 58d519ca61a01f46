"""Atomic file and folder writes with the permissions a plain ``open()`` / ``mkdir()`` gives.

Outputs are written to a temporary name in the destination folder and renamed into place, so a
killed job never leaves a half-written file under the final name. ``tempfile.mkstemp`` creates
files 0600 and ``mkdtemp`` folders 0700 (private, as temporary files should be); renamed into
place those modes would stay, so every helper here resets them to ``0666 & ~umask`` (files) and
``0777 & ~umask`` (folders): 0644 / 0755 under the usual umask 022.

Every atomic write in the package goes through :func:`atomic_path` or :func:`atomic_dir`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_copy_file",
    "atomic_dir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "current_umask",
    "default_mode",
    "is_temporary",
    "read_json_object",
    "remove_stale_temporaries",
]

# The names the helpers below give their temporaries: ``.<name>.<8 random characters from
# tempfile's alphabet><suffix>`` (files, and folders with the suffix ``.tmp``) and
# ``.<name>.old`` (the folder :func:`atomic_dir` replaces). Only a process killed mid-write
# (kill -9, power loss) leaves one behind; every other exit removes it.
_TEMPORARY = re.compile(r"^\..+\.(?:[a-z0-9_]{8}(?:\.[^./]+)?|old)$")


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(folder: bool = False) -> int:
    """Mode a plain create would give: ``0666 & ~umask`` for files, ``0777 & ~umask`` folders."""
    return (0o777 if folder else 0o666) & ~current_umask()


def _reraise_naming(exc: OSError, dest: Path) -> None:
    """Raise ``exc`` again with the destination as its file name when it has none (a full disk
    while a library writes to an open handle says ``[Errno 28]`` without a file); returns
    when ``exc`` already names one."""
    if exc.filename is None and exc.errno is not None:
        named = type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), str(dest))
        raise named from exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success give it normal permissions and rename
    it to ``path``; on any error remove it. The suffix defaults to ``path``'s own (writers such
    as PIL pick the format from it)."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=dest.parent, prefix=f".{dest.name}.", suffix=(dest.suffix if suffix is None else suffix)
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, default_mode())
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        _reraise_naming(exc, dest)
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` to fill; on success give it normal permissions
    and put it in place of ``path`` (an existing ``path`` is replaced only then); on error
    remove it."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        yield tmp
        for item in tmp.rglob("*"):  # writers such as safetensors create files 0600
            os.chmod(item, default_mode(folder=item.is_dir()))
        os.chmod(tmp, default_mode(folder=True))
        if dest.exists():
            old = dest.parent / f".{dest.name}.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old)
        else:
            os.replace(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _reraise_naming(exc, dest)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, suffix=".tmp") as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy_file(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Copy the contents of ``src`` to ``dest`` atomically (``dest`` gets normal permissions)."""
    with atomic_path(dest, suffix=".tmp") as tmp:
        shutil.copyfile(src, tmp)


def is_temporary(name: str) -> bool:
    """Is ``name`` the name of a temporary file or folder made by the helpers here?"""
    return _TEMPORARY.match(name) is not None


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries a killed process left anywhere under ``folder``; returns them.

    Call it only while no process writes under ``folder`` (a resumed stage, before its
    processes start): a live writer's temporary would be removed under it."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = sorted(p for p in root.rglob(".*") if is_temporary(p.name))
    removed = []
    for path in found:
        if not path.exists() and not path.is_symlink():  # inside a folder removed already
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path)
    return removed


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object stored at ``path`` (a record or manifest written by the helpers above).

    Raises ``ValueError`` whose message names the file and the problem (unreadable, not JSON,
    not an object), for the caller to re-raise as its own one-line error."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
