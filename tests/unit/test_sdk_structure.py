"""The SDK's structure, read from its source (no bus needed).

busd_client's modules talk through declared doors: the private router
(`_router.Router`, which composes `_replies.PendingCalls` and
`_signals.SignalRoutes`) and each module's public names.  No module reads another
object's `_private` members, and the modules import each other without a
cycle (function-level and TYPE_CHECKING imports count too: a cycle dodged is
still a cycle).  busdctl is held to the same rule on private members.
"""

from __future__ import annotations

import ast
from pathlib import Path

from test_layers import ROOT, imported_modules

CLIENTS = ROOT / "clients"
SDK = CLIENTS / "busd_client"

# Private members that may be read on an object other than self/cls, each with why.
ALLOWED_PRIVATE_ACCESS = {
    # The write guard must replace the writer's socket: dbus-next/dbus-fast treat EAGAIN as a lost
    # connection (python-dbus-next #153) and offer no public way to change that.
    ("busd_client/_backend.py", "_writer"),
}

# A NamedTuple's _fields, _asdict, _replace and _make are its documented public API.
NAMEDTUPLE_API = frozenset({"_fields", "_asdict", "_replace", "_make"})


def _is_private(name: str) -> bool:
    return (name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
            and name not in NAMEDTUPLE_API)


class _ReachInFinder(ast.NodeVisitor):
    """Collects `x._name` (and getattr/setattr/hasattr(x, "_name")) where x is not the object itself:
    `self`, `cls`, `super()`, or the class being defined, named inside its own body."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []
        self.classes: list[str] = []

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.classes.append(node.name)
        self.generic_visit(node)
        self.classes.pop()

    def _is_itself(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id in ("self", "cls") or node.id in self.classes
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "super")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _is_private(node.attr) and not self._is_itself(node.value):
            self.found.append((node.lineno, node.attr))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str) and _is_private(node.args[1].value)
                and not self._is_itself(node.args[0])):
            self.found.append((node.lineno, node.args[1].value))
        self.generic_visit(node)


def private_reach_ins(path: Path) -> list[tuple[int, str]]:
    """(line, attribute) of every read of another object's private member in a file."""
    finder = _ReachInFinder()
    finder.visit(ast.parse(path.read_text(encoding="utf-8")))
    return sorted(finder.found)


def test_no_module_reads_another_objects_private_members() -> None:
    found, used = [], set()
    for path in sorted(CLIENTS.rglob("*.py")):
        where = path.relative_to(CLIENTS).as_posix()
        for line, attribute in private_reach_ins(path):
            if (where, attribute) in ALLOWED_PRIVATE_ACCESS:
                used.add((where, attribute))
            else:
                found.append(f"{where}:{line}: ._{attribute.lstrip('_')}")
    assert found == []
    assert ALLOWED_PRIVATE_ACCESS - used == set(), "no longer needed: drop it from ALLOWED_PRIVATE_ACCESS"


def test_the_checker_sees_reach_ins(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("class A:\n"
                      "    def f(self, bus):\n"
                      "        self._ok = A._table, super()._f(), bus._codec\n"
                      "        return getattr(bus, '_spawn'), bus.__class__, bus._fields\n")
    assert private_reach_ins(sample) == [(3, "_codec"), (4, "_spawn")]


def import_graph(package: Path, root: Path = CLIENTS) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (anywhere in the file: function-level and
    TYPE_CHECKING imports count)."""
    prefix = package.name
    graph: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        module = f"{prefix}.{path.stem}" if path.stem != "__init__" else prefix
        targets = set()
        for _, name in imported_modules(path, root):
            if name.startswith(prefix + "."):
                parts = name.split(".")
                # "from . import x" resolves to package.x; "from .a import b" to package.a
                targets.add(".".join(parts[:2]))
        graph[module] = targets - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_busd_client_modules_import_without_cycles() -> None:
    graph = import_graph(SDK)
    # __init__ re-exports everything; it is the top, not part of any cycle.
    graph.pop("busd_client", None)
    assert find_cycle(graph) is None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_sees_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    """A cycle dodged with a late or a typing-only import is still a cycle."""
    package = tmp_path / "clients" / "sdk"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def later():\n    from .c import thing\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n")
    graph = import_graph(package, tmp_path)
    assert graph["sdk.b"] == {"sdk.c"} and graph["sdk.c"] == {"sdk.a"}
    assert find_cycle(graph) == ["sdk.a", "sdk.b", "sdk.c", "sdk.a"]


def test_proxy_service_names_and_blocking_sit_on_the_router_not_the_facade() -> None:
    graph = import_graph(SDK)
    for module in ("proxy", "service", "object_tree", "names", "_slots"):
        assert "busd_client.bus" not in graph[f"busd_client.{module}"], module
        assert "busd_client._router" in graph[f"busd_client.{module}"], module
    assert "busd_client.bus" not in graph["busd_client._router"]


def test_the_router_composes_reply_waiting_and_signal_routing() -> None:
    """Replies and signal routes are the router's parts: they know it only through a declared door."""
    graph = import_graph(SDK)
    assert {"busd_client._replies", "busd_client._signals"} <= graph["busd_client._router"]
    for part in ("_replies", "_signals"):
        assert not graph[f"busd_client.{part}"] & {"busd_client._router", "busd_client.bus"}, part


def test_no_sdk_module_is_over_600_lines() -> None:
    lengths = {path.relative_to(CLIENTS).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
               for path in sorted(CLIENTS.rglob("*.py"))}
    assert {where: n for where, n in lengths.items() if n > 600} == {}
