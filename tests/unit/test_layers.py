"""The layering busd is built on, read from the imports of every module (no bus needed).

busd/wire is the protocol and imports nothing else of busd; busd/bus is bus semantics
and imports only busd.wire and itself (no sockets, files or configuration); busd/transport
moves bytes with busd.wire and meets the bus only through busd.bus.ports; busd/config
and busd/launcher turn configuration into what the bus takes; busd/bridge never imports
the daemon shell; busd/daemon assembles everything; the SDK (busd_client) uses only
busd.wire of busd, and busdctl busd.wire plus busd.transport (its monitor link is a Stream). Function-level and TYPE_CHECKING imports count as much as
top-level ones, for the rooms and for import cycles (none allowed). No module is over
MAX_LINES lines.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable

import pytest

ROOT = Path(__file__).resolve().parents[2]

# busd.interfaces holds the introspection XML (the single source of truth, read at import);
# it imports nothing of busd. The bus does not import it: the daemon's assembly hands it its XML.
ROOMS = {
    "busd/wire": ("busd.wire",),
    "busd/interfaces": ("busd.interfaces",),
    "busd/bus": ("busd.wire", "busd.bus"),
    # the stream transport frames with busd.wire and knows nothing of the bus (its sides do, through the ports)
    "busd/transport": ("busd.wire", "busd.transport", "busd.bus.ports"),
    # the configuration model produces the bus's frozen Limits, and nothing else of the bus
    "busd/config": ("busd.wire", "busd.bus.limits", "busd.config"),
    "busd/launcher": ("busd.wire", "busd.bus", "busd.config", "busd.launcher"),
    # anything but the shell that assembles it
    "busd/bridge": ("busd.__version__", "busd.wire", "busd.interfaces", "busd.bus", "busd.transport",
                    "busd.config", "busd.launcher", "busd.bridge"),
    "busd/daemon": ("busd",),
    # private buses are started as processes (python -m busd), never imported
    "busd/testing": ("busd.__version__", "busd.testing"),
    "clients/busd_client": ("busd.wire",),
    # status, monitor and capture run on busd's stream transport (raw bytes, the GUID, SO_PEERCRED)
    # `policy check/dump --config-file` reads a configuration as busd does, through the launcher's one door
    "clients/busdctl": ("busd.wire", "busd.transport", "busd.launcher.policy_query"),
}

# Crossings not yet removed, each with the step of issue 12 that removes it. The test fails on any
# other crossing, and on one of these once it is gone (so the list only ever shrinks).
KNOWN_CROSSINGS: set[tuple[str, str]] = set()

# Import cycles not yet broken (each a strongly connected set of modules). The test fails on any
# other cycle, and on one of these once it is gone or changed (so the set only ever shrinks).
KNOWN_CYCLES: set[frozenset[str]] = set()

MAX_LINES = 600
# Modules over MAX_LINES being split now; the test fails on any other, and on one of these once it is short.
KNOWN_LONG: set[str] = set()

# The code whose imports are checked: busd and the two client packages.
SOURCES = ("busd", "clients/busd_client", "clients/busdctl")


def module_name(path: Path, root: Path) -> str:
    """busd/bus/core.py -> busd.bus.core; a package's __init__.py is the package; clients/ is not a package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] == "clients":
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _package_of(path: Path, root: Path) -> list[str]:
    """The package a relative import in `path` starts from (for an __init__.py, its own package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] == "clients":
        parts = parts[1:]
    return parts[:-1]


def _imports(path: Path, root: Path) -> list[tuple[int, str, list[str], bool]]:
    """(line, absolute module name, names taken from it, whether it was `from . import names`) of every
    import in a file, relative ones resolved."""
    found = []
    package = _package_of(path, root)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name, [alias.name for alias in node.names], node.module is None))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, [], False) for alias in node.names)
    return found


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative ones resolved."""
    found = []
    for line, name, names, bare in _imports(path, root):
        if names and (bare or name in ("busd", "")):
            found.extend((line, f"{name}.{alias}") for alias in names)
        else:
            found.append((line, name))
    return found


def _within(name: str, prefixes: Iterable[str]) -> bool:
    """`name` is one of `prefixes` or inside one (busd.bus.ports is within busd.bus; busd.busy is not)."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def crossings(room: str, allowed: tuple[str, ...], root: Path = ROOT) -> list[tuple[str, int, str]]:
    """(file, line, module) of each import of busd that `room` may not make."""
    bad = []
    for path in sorted((root / room).rglob("*.py")):
        for line, name in imported_modules(path, root):
            if _within(name, ("busd",)) and not _within(name, allowed):
                bad.append((path.relative_to(root).as_posix(), line, name))
    return bad


def import_graph(root: Path = ROOT, sources: tuple[str, ...] = SOURCES) -> dict[str, set[str]]:
    """Each module of `sources` -> the modules of `sources` it imports, anywhere in the file.

    An import names the most specific module it loads: `from busd.bus import core` is busd.bus.core
    (a submodule), `from busd.bus.core import Bus` is busd.bus.core, `from busd import __version__` is busd.
    """
    files = {module_name(path, root): path for source in sources
             for path in sorted((root / source).rglob("*.py")) if "__pycache__" not in path.parts}

    def loaded(name: str) -> str:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for _line, name, names, _bare in _imports(path, root):
            submodules = [f"{name}.{alias}" for alias in names if f"{name}.{alias}" in files]
            if len(submodules) < len(names) or not names:
                targets.add(loaded(name))  # a name from the module itself (its __init__ for a package)
            targets.update(submodules)
        graph[module] = targets - {"", module}
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The import cycles of `graph`: its strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    # Iterative, so a long import chain cannot hit the recursion limit: (module, its remaining targets).
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = lowlink[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = lowlink[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                elif target in on_stack:
                    lowlink[module] = min(lowlink[module], index[target])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                lowlink[parent] = min(lowlink[parent], lowlink[module])
            if lowlink[module] == index[module]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == module:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


def long_modules(root: Path = ROOT, limit: int = MAX_LINES) -> dict[str, int]:
    """Each .py file under busd/ and clients/ over `limit` lines, with its length."""
    found = {}
    for top in ("busd", "clients"):
        for path in sorted((root / top).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > limit:
                found[path.relative_to(root).as_posix()] = lines
    return found


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_each_room_imports_only_what_it_may(room: str) -> None:
    found = crossings(room, ROOMS[room])
    assert [f"{file}:{line}: imports {name}" for file, line, name in found
            if (file, name) not in KNOWN_CROSSINGS] == []
    known_here = {(file, name) for file, name in KNOWN_CROSSINGS if file.startswith(room + "/")}
    assert known_here - {(file, name) for file, _, name in found} == set(), "gone: drop it from KNOWN_CROSSINGS"


def test_the_check_sees_relative_and_function_level_imports(tmp_path) -> None:
    """A check that found nothing because it could not see would pass for the wrong reason."""
    bus = tmp_path / "busd" / "bus"
    bus.mkdir(parents=True)
    (bus / "__init__.py").write_text("")
    (bus / "bad.py").write_text("from ..config import model\n\ndef later():\n    from busd.daemon import Daemon\n"
                                "from . import match\nfrom ..wire import names\n")
    assert crossings("busd/bus", ROOMS["busd/bus"], tmp_path) == [
        ("busd/bus/bad.py", 1, "busd.config"),
        ("busd/bus/bad.py", 4, "busd.daemon"),
    ]


def test_every_package_of_busd_is_a_room() -> None:
    """A new package must say what it may import before it can import anything."""
    packages = {init.parent.relative_to(ROOT).as_posix() for init in (ROOT / "busd").rglob("__init__.py")
                if "__pycache__" not in init.parts and init.parent != ROOT / "busd"}
    assert sorted(package for package in packages if not _within(package.replace("/", "."),
                                                                 [room.replace("/", ".") for room in ROOMS])) == []


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert sorted(sorted(cycle) for cycle in found - KNOWN_CYCLES) == [], "new import cycle"
    assert sorted(sorted(cycle) for cycle in KNOWN_CYCLES - found) == [], "gone or changed: update KNOWN_CYCLES"


def test_the_cycle_check_finds_a_planted_cycle(tmp_path: Path) -> None:
    """Cycles through a TYPE_CHECKING import, a function-level one and `from package import submodule`."""
    files = {
        "busd/__init__.py": "",
        "busd/a/__init__.py": "",
        "busd/a/one.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .two import Two\n",
        "busd/a/two.py": "def later():\n    from busd.b import three\n",
        "busd/b/__init__.py": "",
        "busd/b/three.py": "from ..a import one\nfrom .. import __version__\n",
        "busd/b/four.py": "from . import three\n",
        "clients/busdctl/__init__.py": "",
        "clients/busdctl/cli.py": "from . import shell\n",
        "clients/busdctl/shell.py": "from busdctl.cli import main\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, ("busd", "clients/busdctl"))
    assert graph["busd.b.three"] == {"busd.a.one", "busd"}
    assert cycles(graph) == {frozenset({"busd.a.one", "busd.a.two", "busd.b.three"}),
                             frozenset({"busdctl.cli", "busdctl.shell"})}


def test_no_module_is_too_long() -> None:
    found = long_modules()
    assert [f"{file}: {lines} lines" for file, lines in sorted(found.items()) if file not in KNOWN_LONG] == []
    assert sorted(KNOWN_LONG - set(found)) == [], f"now at most {MAX_LINES} lines: drop it from KNOWN_LONG"


def test_the_length_check_counts_lines(tmp_path: Path) -> None:
    (tmp_path / "busd").mkdir()
    (tmp_path / "busd" / "long.py").write_text("x = 1\n" * 601)
    (tmp_path / "busd" / "short.py").write_text("x = 1\n" * 600)
    assert long_modules(tmp_path) == {"busd/long.py": 601}
