"""busd._extensions: which modules are compiled, and when their pure-Python twins run instead."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from busd import _extensions

ROOT = Path(__file__).resolve().parents[2]


def test_setup_compiles_exactly_the_modules_the_switch_knows() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text())
    listed = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "COMPILED")
    assert tuple(listed) == _extensions.COMPILED
    for name in listed:
        assert (ROOT / (name.replace(".", "/") + ".py")).exists(), name


def test_the_body_checker_stays_python() -> None:
    # It runs in a thread for large bodies; compiled code would keep the GIL from the loop for seconds.
    assert "busd.wire.checker" not in _extensions.COMPILED


def test_the_switch_names_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_extensions.SWITCH, "1")
    assert _extensions._why_pure() == "BUSD_NO_EXTENSIONS=1"


def test_a_source_changed_after_its_build_runs_as_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(_extensions.SWITCH, raising=False)
    monkeypatch.setattr(_extensions, "_PACKAGE_ROOT", str(tmp_path))
    for name in _extensions.COMPILED:
        base = tmp_path / name.replace(".", "/")
        base.parent.mkdir(parents=True, exist_ok=True)
        base.with_suffix(".py").write_text("")
        base.with_suffix(".c").write_text("")
        os.utime(base.with_suffix(".py"), (1000, 1000))
        os.utime(base.with_suffix(".c"), (2000, 2000))
    assert _extensions._why_pure() is None  # built after the last edit
    edited = tmp_path / (_extensions.COMPILED[1].replace(".", "/") + ".pxd")
    edited.write_text("")
    os.utime(edited, (3000, 3000))
    assert _extensions._why_pure() == f"{_extensions.COMPILED[1]} changed after it was compiled (rebuild: pip install -e .)"


def test_an_installed_package_without_generated_sources_is_trusted(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.delenv(_extensions.SWITCH, raising=False)
    monkeypatch.setattr(_extensions, "_PACKAGE_ROOT", str(tmp_path))
    assert _extensions._why_pure() is None


def test_the_mode_says_what_runs() -> None:
    mode = _extensions.mode()
    compiled = [name for name in _extensions.COMPILED if _extensions.is_compiled(name)]
    if len(compiled) == len(_extensions.COMPILED):
        assert mode == "compiled"
    elif not compiled:
        assert mode.startswith("pure Python (")
    else:
        assert mode.startswith("partly compiled (")
