"""The installed tree: a wheel holds exactly the tree's files, and `busd --introspect` works from anywhere."""

from __future__ import annotations

import pytest
import os
import shutil
import subprocess
import sys
import zipfile
from test_layout import REPO, package_directories

from busd._extensions import COMPILED


DRIVER_XML = REPO / "interfaces" / "org.freedesktop.DBus.xml"
# What building the compiled hot path leaves in a checkout (setup.py): Cython's C, the built modules
GENERATED = {".c", ".so"}


def tree_files() -> dict[str, bytes]:
    """What a wheel should hold: every file of every shipped package directory, by its path in the wheel,
    with the files of its data directories (a subdirectory that is no package: busdctl/web_static)."""
    files = {}
    for package, directory in package_directories().items():
        for path in directory.iterdir():
            if path.is_file() and path.suffix not in GENERATED:
                files["/".join([*package.split("."), path.name])] = path.read_bytes()
            elif path.is_dir() and path.name != "__pycache__" and not path.name.startswith(".") \
                    and not (path / "__init__.py").exists():
                for data in path.rglob("*"):
                    if data.is_file() and "__pycache__" not in data.parts:
                        relative = data.relative_to(directory).parts
                        files["/".join([*package.split("."), *relative])] = data.read_bytes()
    return files


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
        ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "tests", "benchmarks",
        *(f"*{suffix}" for suffix in GENERATED)))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
                             str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    wheel_path, = (tmp_path / "dist").glob("busd-*.whl")
    with zipfile.ZipFile(wheel_path) as wheel:
        shipped = {name: wheel.read(name) for name in wheel.namelist() if ".dist-info/" not in name}
    expected = tree_files()
    sources = {name: data for name, data in shipped.items() if not name.endswith(".so")}
    assert sorted(sources) == sorted(expected)
    assert [name for name in expected if sources[name] != expected[name]] == []
    # and the compiled twin of every module of the per-message path (this machine has a C compiler),
    # unless BUSD_NO_EXTENSIONS=1 asks for none (.ci/run's pure-Python pass)
    built = sorted(name.split(".")[0] for name in shipped if name.endswith(".so"))
    if os.environ.get("BUSD_NO_EXTENSIONS"):
        assert built == [], result.stderr
    else:
        assert shutil.which("cc") or shutil.which("gcc"), "the compiled path needs a C compiler here"
        assert built == sorted(module.replace(".", "/") for module in COMPILED), result.stderr
