"""The layering busd is built on, read from the imports of every module (no bus needed).

busd/wire is the protocol and imports nothing else of busd; busd/bus is bus semantics
and imports only busd.wire and itself (no sockets, files or configuration); busd/transport
moves bytes with busd.wire and meets the bus only through busd.bus.ports; the
clients (busd_client, busdctl) use only busd.wire of busd. Function-level imports
count as much as top-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# busd.interfaces holds the introspection XML (the single source of truth, read at import);
# it imports nothing of busd. The bus does not import it: the daemon's assembly hands it its XML.
ROOMS = {
    "busd/wire": ("busd.wire",),
    "busd/bus": ("busd.wire", "busd.bus"),
    # the stream transport frames with busd.wire and knows nothing of the bus (its sides do, through the port)
    "busd/transport": ("busd.wire", "busd.transport", "busd.bus.ports"),
    "clients/busd_client": ("busd.wire",),
    "clients/busdctl": ("busd.wire",),
}

# Crossings not yet removed, each with the step of issue 12 that removes it. The test fails on any
# other crossing, and on one of these once it is gone (so the list only ever shrinks).
KNOWN_CROSSINGS: set[tuple[str, str]] = set()


def _package_of(path: Path, root: Path) -> list[str]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] == "clients":
        parts = parts[1:]
    return parts if path.name == "__init__.py" else parts[:-1]


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative ones resolved."""
    found = []
    package = _package_of(path, root)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if node.module is None or name in ("busd", ""):
                found.extend((node.lineno, f"{name}.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, name))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def crossings(room: str, allowed: tuple[str, ...], root: Path = ROOT) -> list[tuple[str, int, str]]:
    """(file, line, module) of each import of busd that `room` may not make."""
    bad = []
    for path in sorted((root / room).rglob("*.py")):
        for line, name in imported_modules(path, root):
            if (name == "busd" or name.startswith("busd.")) and not name.startswith(allowed):
                bad.append((path.relative_to(root).as_posix(), line, name))
    return bad


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
