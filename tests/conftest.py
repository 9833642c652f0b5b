"""Shared fixtures: real bus daemons, busd and dbus-daemon, for live tests.

tests/unit holds tests that start no process (tests/unit/conftest.py enforces it); tests/live holds the
rest, and every test there carries the `live` marker, so `pytest -m "not live"` is the quick offline run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from buses import RunningBus, busd_available, start_bus

BUS_KINDS = ["busd", "dbus-daemon"]
LIVE_DIR = Path(__file__).resolve().parent / "live"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if LIVE_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.live)


def _start_or_skip(kind: str) -> RunningBus:
    if kind == "busd" and not busd_available():
        pytest.skip("the busd daemon is not built yet")
    return start_bus(kind)


@pytest.fixture(params=BUS_KINDS)
def any_bus(request) -> RunningBus:
    """A fresh bus for one test, run once on busd and once on dbus-daemon."""
    bus = _start_or_skip(request.param)
    yield bus
    bus.stop()


@pytest.fixture
def busd_bus() -> RunningBus:
    """A fresh busd for one test."""
    bus = _start_or_skip("busd")
    yield bus
    bus.stop()


@pytest.fixture
def reference_bus() -> RunningBus:
    """A fresh dbus-daemon for one test: the reference behaviour."""
    bus = start_bus("dbus-daemon")
    yield bus
    bus.stop()
