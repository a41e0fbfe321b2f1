"""The rules of the house, checked on the import graph (drawn in docs/concepts.md).

- ``models`` imports nothing of the client or the server: it is the wire schema of both.
- The async core never imports ``sync``: the blocking layer sits on top of it.
- The server imports only ``models`` of the client side (and the package's version).
- Nothing imports ``cli``, and the CLI uses only public modules (no ``_private`` one).
- No import circle on the client side (module-level imports, ``TYPE_CHECKING`` ones
  included; an import inside a function is a deliberate lazy load and is left out).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "vi_flow"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    if node.module is None:  # "from . import a, b": each name is a module or an attribute
        return [f"{base}.{alias.name}" for alias in node.names]
    return [base]


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    module = _module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = _top_level(tree) if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found |= set(_resolve(module, path.name == "__init__.py", node))
    return {name for name in found if name == "vi_flow" or name.startswith("vi_flow.")}


def _top_level(tree: ast.Module) -> list[ast.AST]:
    """Imports outside functions: the module body, ``if TYPE_CHECKING``, ``try`` blocks."""
    out: list[ast.AST] = []
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        out.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return out


def _graph(*, top_level_only: bool) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for target in _imports(path, top_level_only=top_level_only):
            while target not in modules and "." in target:  # "pkg.mod.Name" -> "pkg.mod"
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


ALL = _graph(top_level_only=False)
TOP = _graph(top_level_only=True)


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _breaking(rule: str, allowed: object) -> list[str]:
    return sorted(
        f"{source} -> {target}"
        for source, targets in ALL.items()
        for target in targets
        if RULES[rule][0](source) and not allowed(source, target)  # type: ignore[operator]
    )


CLIENT_CORE = ("vi_flow._client", "vi_flow._http", "vi_flow._sse", "vi_flow._pagination",
               "vi_flow._config", "vi_flow._errors", "vi_flow._forward", "vi_flow.local",
               "vi_flow.resources", "vi_flow.execution", "vi_flow.compute")  # fmt: skip

RULES = {
    "models import nothing of the client or the server": (
        lambda m: _in(m, "vi_flow.models"),
        lambda m, t: _in(t, "vi_flow.models"),
    ),
    "the async core never imports sync": (
        lambda m: _in(m, *CLIENT_CORE),
        lambda m, t: not _in(t, "vi_flow.sync", "vi_flow.cli"),
    ),
    "the server imports only models of the client side": (
        lambda m: _in(m, "vi_flow.server"),
        lambda m, t: _in(t, "vi_flow.server", "vi_flow.models") or t == "vi_flow",
    ),
    "the CLI uses only public modules": (
        lambda m: _in(m, "vi_flow.cli"),
        lambda m, t: (
            _in(t, "vi_flow.cli") or not any(part.startswith("_") for part in t.split("."))
        ),
    ),
    "nothing imports cli": (
        lambda m: not _in(m, "vi_flow.cli"),
        lambda m, t: not _in(t, "vi_flow.cli"),
    ),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_import_rule(rule: str) -> None:
    assert _breaking(rule, RULES[rule][1]) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_on_the_client_side() -> None:
    client = {m: {t for t in ts if not _in(t, "vi_flow.server", "vi_flow.cli") and t != "vi_flow"}
              for m, ts in TOP.items() if not _in(m, "vi_flow.server", "vi_flow.cli") and m != "vi_flow"}  # fmt: skip
    assert _cycles(client) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
