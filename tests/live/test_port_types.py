"""mypy's view of busd's ports: every implementation of PeerLink (the server connection, the bridge's stand-ins,
the in-memory link of tests/unit/test_router_memory.py) is accepted where the bus wants one, and the Bus is
accepted where the transport wants a BusEntry."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_port_implementations_type_check() -> None:
    """mypy checks the same structurally: every implementation is accepted where the bus wants a PeerLink,
    and the bus where a connection wants a BusEntry."""
    if not _has_mypy():
        pytest.skip("mypy is not installed (pip install mypy)")
    snippet = textwrap.dedent("""
        from busd.bridge.mirror import Mirror, VirtualConnection
        from busd.bus.peer import Peer
        from busd.bus.router import Bus
        from busd.bus.ports import BusEntry, PeerLink
        from busd.transport.connection import Connection
        from tests.unit.test_router_memory import MemoryLink

        def links(a: Connection[Peer], b: VirtualConnection, c: Mirror, d: MemoryLink) -> list[PeerLink]:
            return [a, b, c, d]

        def entry(bus: Bus) -> BusEntry[Peer]:
            return bus
    """)
    command = [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
               "--no-incremental", "-c", snippet]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _has_mypy() -> bool:
    try:
        import mypy  # noqa: F401
    except ImportError:
        return False
    return True
