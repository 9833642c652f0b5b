"""The test buses clean up after themselves: no directory or socket is left behind, whatever happens.

tests/buses.py (the suite's buses) and busd.testing.pytest_plugin (busd_session, for
other projects' tests) each start a daemon in a fresh temporary directory; it
must go when the bus stops, when the daemon cannot start, when it crashed, and
when the test process is interrupted.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from buses import start_bus
from busclient import BUS_KINDS, TIMEOUT, wait_exit
from busd.testing.pytest_plugin import private_session
from busd.testing.run_session import BusStartError

TESTS_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """An empty directory the test buses make their directories in (tempfile's own setting, not a mock)."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_a_bus_that_cannot_start_leaves_nothing(kind, private_tmp):
    with pytest.raises(RuntimeError, match="without printing its address"):
        start_bus(kind, config_text="<busconfig><listen>unix:path={socket}</listen><no-such-element/></busconfig>")
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_a_crashed_bus_leaves_nothing(kind, private_tmp):
    bus = start_bus(kind)
    bus.process.kill()  # no chance to remove its socket file
    bus.process.wait()
    assert (Path(bus.workdir) / "bus").exists()
    bus.stop()
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_an_interrupted_test_process_leaves_nothing(kind, private_tmp):
    script = (f"import sys, tempfile; sys.path.insert(0, {str(TESTS_DIR)!r}); tempfile.tempdir = {str(private_tmp)!r}\n"
              "from buses import start_bus\n"
              f"bus = start_bus({kind!r})\n"
              "print(bus.process.pid, flush=True)\n"
              "raise KeyboardInterrupt\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT * 4)
    assert "KeyboardInterrupt" in result.stderr
    wait_exit(int(result.stdout))
    assert list(private_tmp.iterdir()) == []


def test_busd_session_leaves_nothing(private_tmp):
    with private_session() as session:
        session.bus.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetId")
        pid = session.private.process.pid
    wait_exit(pid)
    assert list(private_tmp.iterdir()) == []
    with pytest.raises(BusStartError):
        with private_session(extra_config="<no-such-element/>"):
            pass
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_busd_removes_its_socket_file_when_stopped_by_a_signal(signum, private_tmp):
    bus = start_bus("busd")
    socket_path = Path(bus.workdir) / "bus"
    assert socket_path.exists()
    bus.process.send_signal(signum)
    assert bus.process.wait(TIMEOUT) == 0
    assert not socket_path.exists()
    bus.stop()
