"""Words for refused pickles: what a file held that made ssrseg refuse it, and the safe way on.

Weights and optimizer states are read with ``torch.load(weights_only=True)`` or a tensor-only
unpickler, which refuse any pickle that names a Python global other than tensors and plain
containers (loading such a file could run code from it). torch's own message then suggests
``weights_only=False``, which is exactly what must not be done with an untrusted file; these
helpers say instead what was found and how to go on safely.
"""

from __future__ import annotations

import re

_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")
_REFUSING = re.compile(r"refusing to load\s+([\w.]+)")


def refused_global(exc: BaseException) -> str | None:
    """The Python global a refused pickle names (``builtins.print``), if the error says."""
    text = str(exc)
    match = _GLOBAL.search(text) or _REFUSING.search(text)
    return match.group(1) if match else None


def found_phrase(exc: BaseException) -> str:
    """``"a reference to the Python object 'print'"`` or a general phrase."""
    name = refused_global(exc)
    if name:
        return f"a reference to the Python object '{name}'"
    return "Python objects other than tensors and plain containers"


def refusal_message(path: object, exc: BaseException, safe_way: str) -> str:
    """One message: the file, what it holds, why it is refused, and ``safe_way``."""
    return (
        f"{path}: refused to load: the file holds {found_phrase(exc)}, and unpickling it "
        f"could run code from the file. {safe_way}"
    )
