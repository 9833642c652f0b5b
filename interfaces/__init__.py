"""Introspection XML for the interfaces busd defines or serves (the single source of truth).

This directory is the package busd.interfaces (busd/interfaces links here). Every file
is read when the package is imported: a daemon that drops privileges imports it before
the drop, and may not be able to read its own installation afterwards.
"""

from __future__ import annotations

from pathlib import Path

_XML = {path.name.removesuffix(".xml"): path.read_text(encoding="utf-8")
        for path in sorted(Path(__file__).parent.glob("*.xml"))}


def introspection_xml(interface: str) -> str:
    """The introspection document of `interface` (interfaces/INTERFACE.xml)."""
    return _XML[interface]
