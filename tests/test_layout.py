"""The checkout and an installed busd are the same program: the same files, the same XML.

busd/interfaces is a link to the top-level interfaces/ (the XML's one home), so
`python3 -m busd` run from the repository root and a `pip install .` of it see
the same busd.interfaces package; the wheel must carry exactly the tree's files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DRIVER_XML = REPO / "interfaces" / "org.freedesktop.DBus.xml"


def package_directories() -> dict[str, Path]:
    """Each package pyproject.toml ships, and the directory its files come from in the checkout."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = setuptools.get("package-dir", {})
    directories = {}
    for package in setuptools["packages"]:
        top, _, rest = package.partition(".")
        base = REPO / mapped[top] if top in mapped else REPO / top
        directories[package] = base.joinpath(*rest.split(".")) if rest else base
    return directories


def tree_files() -> dict[str, bytes]:
    """What a wheel should hold: every file of every shipped package directory, by its path in the wheel."""
    files = {}
    for package, directory in package_directories().items():
        for path in directory.iterdir():
            if path.is_file():
                files["/".join([*package.split("."), path.name])] = path.read_bytes()
    return files


def test_every_package_of_the_tree_is_shipped():
    # A package missing from pyproject.toml works in a checkout and an editable install
    # but is absent from a wheel: a regular install then fails to import it.
    shipped = {directory.resolve() for directory in package_directories().values()}
    roots = [REPO / "busd", *{directory for name, directory in package_directories().items() if "." not in name}]
    in_tree = {init.parent.resolve() for root in roots for init in root.rglob("__init__.py")
               if "__pycache__" not in init.parts}
    assert sorted(map(str, in_tree - shipped)) == []


def test_busd_interfaces_is_the_top_level_interfaces_directory():
    import busd.interfaces
    assert Path(busd.interfaces.__file__).resolve().parent == REPO / "interfaces"
    assert package_directories()["busd.interfaces"].resolve() == REPO / "interfaces"


@pytest.mark.parametrize("where", ["repository root", "elsewhere"])
def test_introspect_prints_the_tree_xml_from_anywhere(where, tmp_path):
    # From the root `-m busd` finds ./busd; elsewhere, the installed package (regular or editable).
    cwd = REPO if where == "repository root" else tmp_path
    result = subprocess.run([sys.executable, "-m", "busd", "--introspect"], cwd=cwd, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == DRIVER_XML.read_text()


def test_the_wheel_holds_exactly_the_tree_files(tmp_path):
    source = tmp_path / "source"
    # A copy, so building leaves no build/ or egg-info in the checkout.
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "tests", "benchmarks"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
                             str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    wheel_path, = (tmp_path / "dist").glob("busd-*.whl")
    with zipfile.ZipFile(wheel_path) as wheel:
        shipped = {name: wheel.read(name) for name in wheel.namelist() if ".dist-info/" not in name}
    expected = tree_files()
    assert sorted(shipped) == sorted(expected)
    assert [name for name in expected if shipped[name] != expected[name]] == []
