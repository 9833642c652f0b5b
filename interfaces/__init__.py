"""Introspection XML for the interfaces busd defines or serves (the single source of truth).

This directory is the package busd.interfaces (busd/interfaces links here). Every file
is read when the package is imported: a daemon that drops privileges imports it before
the drop, and may not be able to read its own installation afterwards.
"""

from __future__ import annotations

import os


def _read_all(directory: str) -> dict[str, str]:
    """Every INTERFACE.xml of `directory` (os.path, not pathlib: a daemon's start does not import pathlib)."""
    found = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".xml"):
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                found[name.removesuffix(".xml")] = f.read()
    return found


_XML = _read_all(os.path.dirname(os.path.abspath(__file__)))


def introspection_xml(interface: str) -> str:
    """The introspection document of `interface` (interfaces/INTERFACE.xml)."""
    return _XML[interface]
