"""busdctl top on a live bus: in a real terminal (tmux) it shows the connections, follows a new one, re-sorts on
`>` and quits on `q`; `--once --json` gives scripts the same snapshot, on busd and on dbus-daemon."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from buses import start_bus

pytestmark = pytest.mark.live

TIMEOUT = 30
# A client that owns NAME until its stdin closes.
OWNER = """
import asyncio, sys
from dbus_next.aio import MessageBus
async def main():
    bus = await MessageBus(bus_address=sys.argv[1]).connect()
    await bus.request_name(sys.argv[2])
    print("owned", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""


# The kernel's name of a process this Python starts (python3; python in a virtual environment)
PYTHON_NAME = os.path.basename(sys.executable)[:15]


def own(address: str, name: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", OWNER, address, name], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "owned"
    return process


def release(process: subprocess.Popen) -> None:
    process.stdin.close()
    process.wait(TIMEOUT)


class Tmux:
    """A tmux server of the test's own, running one command in a 200x50 window."""

    def __init__(self, command: str):
        self.socket = f"busd-top-{os.getpid()}"
        self.run("new-session", "-d", "-s", "top", "-x", "200", "-y", "50", command)

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              timeout=TIMEOUT, check=True).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top")

    def wait_for(self, text: str) -> str:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared on the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=TIMEOUT)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is the terminal (apt: tmux)")
def test_top_in_a_terminal_shows_follows_sorts_and_quits() -> None:
    bus = start_bus("busd")
    first = own(bus.address, "org.example.TopFirst")
    second = None
    tmux = None
    with tempfile.TemporaryDirectory(prefix="busd-top-") as tmp:
        status = os.path.join(tmp, "status")
        try:
            busdctl = f"{sys.executable} -m busdctl"
            # (pytest exports COLUMNS, which curses would take over the terminal's real width)
            tmux = Tmux(f"env -u COLUMNS -u LINES TERM=xterm {busdctl} top --address={bus.address}; "
                        f"echo $? > {status}")
            screen = tmux.wait_for("org.example.TopFirst")
            assert "CONNECTION" in screen and "MSG/S IN▼" in screen and PYTHON_NAME in screen
            second = own(bus.address, "org.example.TopSecond")
            tmux.wait_for("org.example.TopSecond")  # refreshed on its own
            tmux.run("send-keys", "-t", "top", ">")
            tmux.wait_for("MSG/S OUT▼")
            release(first)
            deadline = time.monotonic() + TIMEOUT
            while "org.example.TopFirst" in tmux.screen() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "org.example.TopFirst" not in tmux.screen()  # gone from the bus, gone from the screen
            tmux.run("send-keys", "-t", "top", "q")
            while not os.path.exists(status) and time.monotonic() < deadline + TIMEOUT:
                time.sleep(0.1)
            with open(status) as f:
                assert f.read().strip() == "0"
        finally:
            if tmux is not None:
                tmux.close()
            for process in (first, second):
                if process is not None and process.poll() is None:
                    release(process)
            bus.stop()


def _start(kind: str):
    if kind == "dbus-broker":  # benchmarks/broker.py runs it without systemd (root only)
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "benchmarks"))
        from broker import start_broker, unavailable_reason
        reason = unavailable_reason()
        if reason:
            pytest.skip(reason)
        return start_broker()
    if shutil.which("dbus-daemon") is None and kind == "dbus-daemon":
        pytest.skip("dbus-daemon is not installed")
    return start_bus(kind)


@pytest.mark.parametrize("kind", ["busd", "dbus-daemon", "dbus-broker"])
def test_once_json_is_a_snapshot_with_rates(kind: str) -> None:
    bus = _start(kind)
    owner = own(bus.address, "org.example.TopOnce")
    try:
        result = subprocess.run([sys.executable, "-m", "busdctl", "top", "--once", "--json=short",
                                 f"--address={bus.address}"], capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        rows = {row["connection"]: row for row in data["connections"]}
        [row] = [row for row in rows.values() if row["names"] == ["org.example.TopOnce"]]
        assert row["pid"] == owner.pid and row["process"] == PYTHON_NAME and row["match_rules"] is not None
        assert data["stats_supported"] is True
        ours = max(rows.values(), key=lambda r: int(r["connection"].rsplit(".", 1)[-1]))  # busdctl's own
        if kind == "busd":
            assert data["bus"]["ActiveConnections"] == len(rows)
            # busdctl itself made its two snapshots' calls on the bus in between: its rate is above zero
            assert ours["messages_in_per_s"] > 0 and ours["messages_out_per_s"] > 0
            assert row["ledger"]["Names"][0] >= 1 and row["quota_line"] is not None
            assert str(os.getuid()) in data["users"]
        elif kind == "dbus-daemon":
            assert data["bus"]["ActiveConnections"] == len(rows)
            assert ours["messages_in_per_s"] is None and row["ledger"] is None  # no totals, no ledger
        else:  # dbus-broker: its GetStats accounting, per peer and per user
            assert ours["messages_in_per_s"] is None and row["queued_out_bytes"] is not None
            assert set(data["users"][str(os.getuid())]) >= {"Bytes", "Fds", "Matches", "Objects"}
    finally:
        release(owner)
        bus.stop()
