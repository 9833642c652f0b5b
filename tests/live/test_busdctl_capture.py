"""busdctl capture writes pcapng that tshark reads back with its D-Bus dissector, on busd and dbus-daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from test_busdctl_service import (SERVICE_INTERFACE, SERVICE_NAME, SERVICE_PATH, LineReader, busctl,  # noqa: F401
                                  busdctl, busdctl_command, interrupt, shared_demo, start_watcher)

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(shutil.which("tshark") is None,
                       reason="tshark is needed to read captures back (apt-get install tshark)"),
]

MARKER_MEMBER = "CaptureDone"


def _tshark_fields(path: str, *fields: str) -> list[list[str]]:
    """One row per captured D-Bus message with the given dissector fields."""
    command = ["tshark", "-r", path, "-T", "fields", "-E", "separator=|"]
    for field in fields:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line.split("|") for line in result.stdout.splitlines()]


def _capture(address: str, *args: str, send) -> bytes:
    """Run busdctl capture while `send()` makes traffic; stop once the marker signal is captured."""
    process, _, _ = start_watcher(busdctl_command(address, "capture", *args), "Monitoring bus message stream")
    try:
        send()
        _ok(busdctl(address, "emit", "--destination", SERVICE_NAME, "/org/example/Capture", SERVICE_INTERFACE,
                    MARKER_MEMBER))
        captured = LineReader(process.stdout).read_bytes_until(MARKER_MEMBER.encode(), "the marker signal")
    finally:
        assert interrupt(process) == 0
    return captured + process.stdout.read()


def _ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def _write(data: bytes) -> str:
    handle, path = tempfile.mkstemp(suffix=".pcapng", prefix="busdctl-capture-")
    with os.fdopen(handle, "wb") as f:
        f.write(data)
    return path


def test_tshark_finds_the_captured_messages(shared_demo):
    bus, service = shared_demo

    def send() -> None:
        _ok(busctl(bus.address, "call", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE, "Describe", "a{sv}", "1",
                   "captured", "s", "yes"))
        assert busdctl(bus.address, "call", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE, "Fail").returncode == 1
        _ok(busdctl(bus.address, "emit", "/org/example/Capture", SERVICE_INTERFACE, "Changed", "s", "captured too"))

    path = _write(_capture(bus.address, send=send))
    try:
        rows = _tshark_fields(path, "dbus.message_type", "dbus.member", "dbus.path", "dbus.sender",
                              "dbus.destination", "dbus.error_name", "dbus.type.string")
        members = [row[1] for row in rows]
        assert "Describe" in members and "Changed" in members and MARKER_MEMBER in members
        describe = next(row for row in rows if row[1] == "Describe")
        assert describe[2] == SERVICE_PATH and describe[4] == SERVICE_NAME
        assert "captured" in describe[6].split(",")
        # The reply went back from the service: a method return (type 2) holding "captured=yes".
        assert any(row[0] == "2" and row[3] == service.unique_name and "captured=yes" in row[6] for row in rows)
        assert any(row[5] == "org.example.Demo.Error.Broken" for row in rows)
        changed = next(row for row in rows if row[1] == "Changed")
        assert changed[2] == "/org/example/Capture" and "captured too" in changed[6]
        verbose = subprocess.run(["tshark", "-r", path, "-V"], capture_output=True, text=True, timeout=60).stdout
        assert "Encapsulation type: D-Bus" in verbose and "Malformed" not in verbose
    finally:
        os.unlink(path)


def test_capture_of_one_service_with_a_short_snap_length(shared_demo):
    bus, _ = shared_demo

    def send() -> None:
        _ok(busdctl(bus.address, "call", SERVICE_NAME, SERVICE_PATH, SERVICE_INTERFACE, "Echo", "s", "x" * 600))
        _ok(busdctl(bus.address, "emit", "/org/example/Elsewhere", "org.example.Unrelated", "Noise"))

    path = _write(_capture(bus.address, "--size=256", SERVICE_NAME, send=send))
    try:
        rows = _tshark_fields(path, "dbus.member", "frame.len", "frame.cap_len")
        members = [row[0] for row in rows]
        assert "Echo" in members and MARKER_MEMBER in members
        assert "Noise" not in members  # neither from nor to the service
        echo = next(row for row in rows if row[0] == "Echo")
        assert int(echo[2]) == 256 < int(echo[1])  # cut to --size, with the real length kept
    finally:
        os.unlink(path)


def test_capture_refuses_a_terminal(shared_demo):
    bus, _ = shared_demo
    leader, follower = os.openpty()
    try:
        process = subprocess.run(busdctl_command(bus.address, "capture"), stdout=follower, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL, timeout=30)
    finally:
        os.close(leader)
        os.close(follower)
    assert process.returncode == 1
    assert b"Refusing to write binary capture data to a terminal" in process.stderr
