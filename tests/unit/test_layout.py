"""The checkout and an installed busd are the same program: the same files, the same XML.

busd/interfaces is a link to the top-level interfaces/ (the XML's one home), so
`python3 -m busd` run from the repository root and a `pip install .` of it see
the same busd.interfaces package; the wheel must carry exactly the tree's files.
"""

from __future__ import annotations

import tomllib
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]


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




