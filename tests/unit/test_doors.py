"""The doors between busd's rooms are declared, never hung on objects by name (no bus needed).

The bus tells the daemon, the launcher and the bridge what happens through
`BusObserver`s registered where the daemon is assembled; nothing attaches or looks
up behaviour with setattr/getattr and a literal attribute name, or assigns an
`on_*` hook onto another object. Each exception below says why it is not a hook.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILTINS = {"getattr", "setattr", "hasattr", "delattr"}

# (file, attribute): why a literal-named lookup there is not a hook.
ALLOWED = {
    ("busd/transport/served.py", "SO_PEERGROUPS"): "a socket constant that older Pythons lack (the kernel's value is the default)",
    ("busd/transport/connection.py", "reply"): "the last SASL words an exception may carry, read when the peer is dropped",
    ("busd/bus/match.py", "signature"): "MatchRule.matches() takes any header-like object; one without a "
                                        "signature compares arguments by Python type",
    ("busd/wire/marshal.py", "__iter__"): "telling a sequence from a scalar value while marshalling",
}


def literal_lookups(root: Path = ROOT) -> list[tuple[str, int, str, str]]:
    """(file, line, builtin, attribute) of each getattr/setattr/hasattr/delattr with a literal name in busd/."""
    found = []
    for path in sorted((root / "busd").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in BUILTINS \
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                    and isinstance(node.args[1].value, str):
                found.append((path.relative_to(root).as_posix(), node.lineno, node.func.id, node.args[1].value))
    return found


def hooks_assigned_on_others(root: Path = ROOT) -> list[tuple[str, int, str]]:
    """(file, line, target) of each `obj.on_x = ...` where obj is not `self`: a hook hung on another object."""
    found = []
    for path in sorted((root / "busd").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Assign, ast.AnnAssign)):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for item in (target.elts if isinstance(target, ast.Tuple) else [target]):
                    if isinstance(item, ast.Attribute) and item.attr.startswith("on_") and not (
                            isinstance(item.value, ast.Name) and item.value.id == "self"):
                        found.append((path.relative_to(root).as_posix(), node.lineno, ast.unparse(item)))
    return found


def test_no_attribute_is_looked_up_or_set_by_a_literal_name() -> None:
    found = literal_lookups()
    assert [f"{file}:{line}: {builtin}(..., {name!r})" for file, line, builtin, name in found
            if (file, name) not in ALLOWED] == []
    assert set(ALLOWED) - {(file, name) for file, _, _, name in found} == set(), "gone: drop it from ALLOWED"


def test_no_hook_is_assigned_onto_another_object() -> None:
    assert [f"{file}:{line}: {target} = ..." for file, line, target in hooks_assigned_on_others()] == []


def test_the_checks_see_what_they_forbid(tmp_path: Path) -> None:
    (tmp_path / "busd").mkdir()
    (tmp_path / "busd" / "x.py").write_text(
        "def wire(bus, hook):\n"
        "    setattr(bus, 'names_changed', hook)\n"
        "    getattr(bus, 'config_reloaded', None)\n"
        "    bus.on_reload = hook\n"
        "    self_like = bus\n"
        "    getattr(bus, hook)\n")
    assert [(line, builtin, name) for _, line, builtin, name in literal_lookups(tmp_path)] == [
        (2, "setattr", "names_changed"), (3, "getattr", "config_reloaded")]
    assert hooks_assigned_on_others(tmp_path) == [("busd/x.py", 4, "bus.on_reload")]
