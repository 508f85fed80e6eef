"""The dependency rule (docs/architecture.md, "Code layout: one-way layers"), checked over the import graph.

- ``services.core``, the shared core, imports nothing of the scheduler, the
  event service, the CLI or the minion;
- ``services.scheduler``, ``services.events`` and ``minion`` import only the
  core (plus ``vigil.v1``, third-party and stdlib), never each other, never
  the CLI;
- ``services.cli`` is on top and may import anything;
- the generated ``vigil.v1`` is a leaf: it imports none of our packages;
- no import cycle between our modules.

The graph is read from the source with :mod:`ast`, nothing is imported: every
``import`` statement counts wherever it stands (module level, inside a
function, under ``if TYPE_CHECKING:``), and so does an ``importlib.import_module``
or ``__import__`` call whose argument is a literal string.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Where each top-level package of ours lives.
SOURCES = {"services": ROOT / "services", "minion": ROOT / "minion", "vigil": ROOT / "protos/vigil"}

#: Layer of a module: the longest prefix in this table wins.
LAYERS = {
    "services": "core",  # the namespace's own __init__: imported by everything below it
    "services.core": "core",
    "services.scheduler": "scheduler",
    "services.events": "events",
    "services.cli": "cli",
    "minion": "minion",
    "vigil": "proto",
}

#: Which layers of ours each layer may import (third-party and stdlib are always allowed).
ALLOWED = {
    "proto": {"proto"},
    "core": {"core", "proto"},
    "scheduler": {"scheduler", "core", "proto"},
    "events": {"events", "core", "proto"},
    "minion": {"minion", "core", "proto"},
    "cli": {"cli", "scheduler", "events", "minion", "core", "proto"},
}


@dataclass(frozen=True)
class Import:
    """One import of a module of ours by a module of ours."""

    source: str  # importing module
    target: str  # imported module
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.source} -> {self.target}"


def module_name(top: str, path: Path) -> str:
    """Dotted name of the module in ``path`` (a package's ``__init__.py`` names the package)."""
    parts = [top, *path.relative_to(SOURCES[top]).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of ours: dotted name → file."""
    found: dict[str, Path] = {}
    for top, base in SOURCES.items():
        for path in sorted(base.rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[module_name(top, path)] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours that importing ``name`` loads: ``name`` itself, or the closest
    enclosing module (``from pkg import attr`` names ``pkg``); ``None`` when it is not ours."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported_names(module: str, path: Path, node: ast.AST) -> Iterator[str]:
    """Absolute dotted names an AST node imports (``from a import b`` yields ``a.b``, which
    :func:`_resolve` maps back to ``a`` when ``b`` is an attribute, not a submodule)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            # Relative to the importing module's package (a package's __init__ is its own package).
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            base_parts = package.split(".")
            base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join([*base_parts, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        for alias in node.names:
            yield base if alias.name == "*" else f"{base}.{alias.name}"
    elif isinstance(node, ast.Call) and node.args:
        func = node.func
        called = (
            func.attr
            if isinstance(func, ast.Attribute)
            else func.id
            if isinstance(func, ast.Name)
            else ""
        )
        arg = node.args[0]
        if (
            called in ("import_module", "__import__")
            and isinstance(arg, ast.Constant)
            and isinstance(arg.value, str)
        ):
            yield arg.value


@cache
def unparsable() -> tuple[str, ...]:
    """Files of ours that are not valid Python (``file:line: message``); their imports are
    unknown, so the graph misses them and :func:`test_the_graph_is_not_trivial` fails."""
    return tuple(_parse_all()[1])


@cache
def _parse_all() -> tuple[dict[str, ast.Module], list[str]]:
    trees: dict[str, ast.Module] = {}
    errors: list[str] = []
    for module, path in modules().items():
        try:
            trees[module] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as exc:
            errors.append(f"{path.relative_to(ROOT)}:{exc.lineno}: {exc.msg}")
    return trees, errors


@cache
def imports() -> tuple[Import, ...]:
    """Every import between modules of ours, in file and line order."""
    known = modules()
    found: list[Import] = []
    for module, tree in _parse_all()[0].items():
        path = known[module]
        for node in ast.walk(tree):
            for name in _imported_names(module, path, node):
                target = _resolve(name, known)
                if target is not None and target != module:
                    found.append(Import(module, target, path, getattr(node, "lineno", 0)))
    return tuple(sorted(set(found), key=lambda i: (str(i.path), i.line, i.target)))


def layer(module: str) -> str:
    """The layer a module of ours belongs to."""
    prefix = module
    while prefix:
        if prefix in LAYERS:
            return LAYERS[prefix]
        prefix = prefix.rpartition(".")[0]
    raise AssertionError(f"{module}: in no layer; add its package to LAYERS")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: each strongly connected component of more than one module
    (Tarjan's algorithm, iterative), as a sorted list of its modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def test_the_graph_is_not_trivial() -> None:
    """The rule below cannot pass by finding nothing: every package is there, with imports."""
    found = modules()
    assert len(found) > 50, sorted(found)
    for package in ("services.core", "services.scheduler", "services.events", "services.cli"):
        assert package in found, package
    assert {"minion", "vigil.v1"} <= set(found)
    assert not unparsable(), "cannot read the imports of:\n" + "\n".join(unparsable())
    edges = imports()
    assert len(edges) > 100, len(edges)
    layers_importing = {layer(i.source) for i in edges}
    assert {"scheduler", "events", "minion", "cli"} <= layers_importing, layers_importing
    # relative imports, function-level and TYPE_CHECKING imports are seen too
    assert any(i.source == "services.cli.main" and layer(i.target) == "scheduler" for i in edges)


def test_layers_import_one_way_only() -> None:
    """Every import of ours goes from a layer to one it may use (see ``ALLOWED``)."""
    bad = [i for i in imports() if layer(i.target) not in ALLOWED[layer(i.source)]]
    assert not bad, (
        f"{len(bad)} imports against the layers "
        "(core ← scheduler | events | minion ← cli; vigil.v1 a leaf):\n"
        + "\n".join(f"  {i}  [{layer(i.source)} -> {layer(i.target)}]" for i in bad)
    )


def test_no_import_cycles() -> None:
    """No module of ours reaches itself through imports (TYPE_CHECKING ones included)."""
    edges: dict[str, set[str]] = {m: set() for m in modules()}
    for i in imports():
        edges[i.source].add(i.target)
    found = cycles(edges)
    lines = []
    for component in found:
        members = set(component)
        lines.append(f"  cycle of {len(component)} modules: {', '.join(component)}")
        lines += [f"    {i}" for i in imports() if i.source in members and i.target in members]
    assert not found, f"{len(found)} import cycles:\n" + "\n".join(lines)


def test_cycle_finder() -> None:
    """The cycle finder itself, on a small graph: two cycles, a self-contained chain, a leaf."""
    edges = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},
        "d": set(),
        "e": {"f"},
        "f": {"e", "d"},
        "g": {"a"},
    }
    assert cycles(edges) == [["a", "b", "c"], ["e", "f"]]
    assert cycles({"x": {"y"}, "y": set()}) == []
