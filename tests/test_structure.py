"""Structural rules of src/rankdecay, read from the source with ``ast`` (the library is not imported).

(a) No import cycle among the package's modules, counting imports inside functions (an import
    under ``if TYPE_CHECKING:`` is for the type checker only and does not count).
(b) No function or method longer than 150 lines.
(c) The attention forward is written once: exactly one ``scaled_dot_product_attention`` call.

Each failing assertion names the offenders (module cycle, function with its length, call sites).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "rankdecay"
MAX_FUNCTION_LINES = 150


def _modules() -> dict[str, Path]:
    """Dotted module name → file, for every .py file of the package."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()
TREES = {
    name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in MODULES.items()
}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node`` (function bodies included), skipping the bodies of
    ``if TYPE_CHECKING:`` blocks (their ``else`` branch still counts)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                yield from _imports_of(sub)
            continue
        yield from _imports_of(child)


def _imports_of(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _imports(node)


def _resolve(
    module: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path] = MODULES
) -> set[str]:
    """The package modules an import statement in ``module`` loads (the deepest existing module
    for ``from X import name``: ``name`` itself if it is a submodule, else X)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
        return {_deepest(t, modules) for t in targets if t.split(".")[0] == PACKAGE} - {None}  # type: ignore[arg-type]
    if node.level:
        is_pkg = modules[module].name == "__init__.py"
        base = module.split(".")
        base = base if is_pkg else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        stem = ".".join(base + ([node.module] if node.module else []))
    else:
        stem = node.module or ""
    if stem.split(".")[0] != PACKAGE:
        return set()
    found = set()
    for alias in node.names:
        sub = f"{stem}.{alias.name}"
        found.add(sub if sub in modules else _deepest(stem, modules))
    return found - {None}  # type: ignore[arg-type]


def _deepest(dotted: str, modules: dict[str, Path]) -> str | None:
    parts = dotted.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports anywhere (module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for name, tree in TREES.items():
        targets: set[str] = set()
        for node in _imports(tree):
            targets |= _resolve(name, node)
        graph[name] = targets - {name}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _edges_within(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    members = set(comp)
    return [f"{a} → {b}" for a in comp for b in sorted(graph[a] & members)]


def test_graph_reader_sees_function_level_imports() -> None:
    """The reader itself: a function-level import counts, a TYPE_CHECKING one does not."""
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .b import X\n"
        "def f():\n    from .c import Y\n    from . import d\n"
    )
    fake = {
        name: Path(f"{name}.py" if name != "rankdecay" else "__init__.py")
        for name in ("rankdecay", "rankdecay.a", "rankdecay.b", "rankdecay.c", "rankdecay.d")
    }
    found = set().union(*(_resolve("rankdecay.a", n, fake) for n in _imports(tree)))
    assert found == {"rankdecay.c", "rankdecay.d"}
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert "rankdecay.spectra" in graph and graph["rankdecay.analyze"], "the import graph is empty"
    cycles = strongly_connected(graph)
    assert not cycles, (
        "import cycles among src/rankdecay modules (function-level imports count): "
        + "; ".join(
            "{" + ", ".join(c) + "} via " + ", ".join(_edges_within(graph, c)) for c in cycles
        )
    )


def _functions() -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    for name, tree in TREES.items():
        stack: list[tuple[str, ast.AST]] = [(name, tree)]
        while stack:
            prefix, node = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    qual = f"{prefix}.{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        yield qual, child
                    stack.append((qual, child))
                else:
                    stack.append((prefix, child))


def _length(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the ``def`` (decorators included) to the last line of the body."""
    start = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
    return (fn.end_lineno or fn.lineno) - start + 1


def test_no_function_longer_than_150_lines() -> None:
    functions = list(_functions())
    assert len(functions) > 100, "found too few functions; is the source tree where it should be?"
    long = sorted(((_length(fn), qual) for qual, fn in functions), reverse=True)
    offenders = [f"{qual} ({n} lines)" for n, qual in long if n > MAX_FUNCTION_LINES]
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines: " + ", ".join(offenders)


def test_one_scaled_dot_product_attention_call_site() -> None:
    sites = []
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                called = (
                    f.attr
                    if isinstance(f, ast.Attribute)
                    else f.id
                    if isinstance(f, ast.Name)
                    else None
                )
                if called == "scaled_dot_product_attention":
                    sites.append(f"{MODULES[name].relative_to(SRC)}:{node.lineno}")
    assert len(sites) == 1, (
        f"the attention forward must be written once: {len(sites)} scaled_dot_product_attention "
        f"call sites ({', '.join(sites) or 'none'})"
    )
