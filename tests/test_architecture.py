"""The layer rule of docs/architecture.md, read from the source: every ``import`` of every module
under src/ssrseg (function-local ones included) points to the same layer or one below it, no
modules import each other in a circle, and an import inside a function says why.

The checker works on a plain ``{module: {(imported module, line, local, reason)}}`` table, so the
tests at the bottom can hand it a synthetic upward import, circle or unexplained local import and
see it fail (it cannot pass by reading nothing).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# The layers, top to bottom: a module may import from its own layer and the layers below it.
# Keys are the first name under ``ssrseg`` (a subpackage or a top-level module).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "commands"),
    ("view",),
    ("protocol",),
    ("engine",),
    ("toy",),
    ("pseudo",),
    ("model",),
    ("rectify", "cam"),
    ("data", "backbones"),
    ("config", "metrics", "viz", "atomic", "errors", "runrecord", "pickles", "precision", ""),
)

# A function-local ``from ssrseg ...`` import must say why it is not at the top of the module in
# a comment starting with this marker: on the import's own lines or the line above it (``# lazy:
# pydensecrf is an optional extra``), or, for a module whose every local import has the same
# reason (the command layer: ``ssrseg --help`` imports every command module, so the library and
# torch load only when a command runs), once at the start of a line of the module itself.
LAZY_MARKER = "# lazy:"


@dataclass(frozen=True)
class Import:
    target: str  # the imported module, e.g. "ssrseg.data.base"
    line: int
    local: bool  # inside a function
    reason: bool  # carries LAZY_MARKER


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``["a.b", "a"]``: importing a module runs its packages' ``__init__``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def read_imports(src: Path = SRC) -> dict[str, set[Import]]:
    """``{module: imports of ssrseg modules}`` of every module under ``src/ssrseg``, with the
    packages an import runs (``from ssrseg.data.base import x`` also imports ``ssrseg.data``)
    and the submodules a ``from package import name`` may name."""
    files = {module_name(p, src): p for p in sorted((src / "ssrseg").rglob("*.py"))}
    table: dict[str, set[Import]] = {}
    for name, path in files.items():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        tree = ast.parse(text)
        is_pkg = path.name == "__init__.py"
        local_ids = {
            id(node)
            for fn in ast.walk(tree)
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(fn)
        }
        module_reason = any(line.startswith(LAZY_MARKER) for line in lines)
        found: set[Import] = set()
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join([*pkg, base] if base else pkg)
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            span = lines[max(node.lineno - 2, 0) : node.end_lineno]
            reason = module_reason or any(LAZY_MARKER in s for s in span)
            local = id(node) in local_ids
            for target in targets:
                if target.split(".")[0] != "ssrseg":
                    continue
                for mod in [target, *_ancestors(target)]:
                    if mod in files and mod != name and mod not in _ancestors(name):
                        found.add(Import(mod, node.lineno, local, reason))
        table[name] = found
    return table


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of ``ssrseg.<key>...`` (0 = top)."""
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else ""
    for i, layer in enumerate(LAYERS):
        if key in layer:
            return i
    raise AssertionError(f"{module}: its package {key!r} has no layer in LAYERS; add it there")


def offences(
    table: Mapping[str, Iterable[Import]],
    bad: Callable[[str, Import], bool],
    why: Callable[[str, Import], str],
) -> list[str]:
    """One line per import of ``table`` that is ``bad``: where, what, and ``why``."""
    return sorted(
        f"{mod}:{imp.line} imports {imp.target} {why(mod, imp)}"
        for mod, imports in table.items()
        for imp in imports
        if bad(mod, imp)
    )


def upward_imports(table: Mapping[str, Iterable[Import]]) -> list[str]:
    return offences(
        table,
        lambda mod, imp: layer_of(imp.target) < layer_of(mod),
        lambda mod, imp: f"(layer {LAYERS[layer_of(imp.target)]} is above {LAYERS[layer_of(mod)]})",
    )


def circles(table: Mapping[str, Iterable[Import]]) -> list[list[str]]:
    """Groups of two or more modules that import each other (strongly connected components)."""
    graph = {m: sorted({i.target for i in imps}) for m, imps in table.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the package has ~100 modules, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def unexplained_local_imports(table: Mapping[str, Iterable[Import]]) -> list[str]:
    return offences(
        table,
        lambda mod, imp: imp.local and not imp.reason,
        lambda mod, imp: (
            f"inside a function without a '{LAZY_MARKER} <why>' comment "
            "(move it to the top of the module)"
        ),
    )


# ----------------------------------------------------------------------------------------------


def test_the_source_is_read() -> None:
    table = read_imports()
    assert len(table) > 50
    assert "ssrseg.pseudo.labeler" in {i.target for i in table["ssrseg.protocol.stages"]}


def test_no_import_points_up_a_layer() -> None:
    assert upward_imports(read_imports()) == []


def test_no_import_circles() -> None:
    assert circles(read_imports()) == []


def test_function_local_imports_say_why() -> None:
    assert unexplained_local_imports(read_imports()) == []


def test_checker_fails_on_a_synthetic_upward_import() -> None:
    table = read_imports()
    table["ssrseg.model.ssr"] = {
        *table["ssrseg.model.ssr"],
        Import("ssrseg.pseudo.labeler", 1, False, False),
    }
    assert upward_imports(table) == [
        "ssrseg.model.ssr:1 imports ssrseg.pseudo.labeler (layer ('pseudo',) is above ('model',))"
    ]


def test_checker_fails_on_a_synthetic_circle() -> None:
    table = read_imports()
    # same layer both ways: not an upward import, but a circle
    table["ssrseg.data.tags"] = {
        *table["ssrseg.data.tags"],
        Import("ssrseg.data.base", 1, False, False),
    }
    assert upward_imports(table) == []
    assert circles(table) == [["ssrseg.data.base", "ssrseg.data.tags"]]


def test_checker_fails_on_an_unexplained_local_import() -> None:
    table = {"ssrseg.engine.train": {Import("ssrseg.metrics", 7, True, False)}}
    assert len(unexplained_local_imports(table)) == 1
    table = {"ssrseg.engine.train": {Import("ssrseg.metrics", 7, True, True)}}
    assert unexplained_local_imports(table) == []


def test_reader_sees_local_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "ssrseg"
    (pkg / "model").mkdir(parents=True)
    (pkg / "pseudo").mkdir()
    for f in ("__init__.py", "model/__init__.py", "pseudo/__init__.py", "pseudo/labeler.py"):
        (pkg / f).write_text("")
    (pkg / "model" / "ssr.py").write_text(
        "def build():\n    from ..pseudo.labeler import x  # lazy: test\n    return x\n"
    )
    table = read_imports(tmp_path)
    assert Import("ssrseg.pseudo.labeler", 2, True, True) in table["ssrseg.model.ssr"]
    assert upward_imports(table)[0].startswith("ssrseg.model.ssr:2 imports ssrseg.pseudo")
