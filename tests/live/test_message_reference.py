"""The message rules of tests/unit/test_message.py checked against dbus-daemon: it rejects what busd rejects
(where it checks the same thing), accepts every valid message, and forwards headers as busd does."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from buses import RunningBus, start_bus
from busd.wire.errors import ProtocolError
from busd.wire.marshal import Variant, marshal_body
from busd.wire.message import (DESTINATION, METHOD_CALL, NO_REPLY_EXPECTED, SENDER, Header, build_message, frame_size,
                               parse_header, read_body)
from test_message import Case, INVALID, VALID, forwarded, header_values, le, message, raw_field


class RawPeer:
    """A connection to a bus made by hand, so that any bytes at all can be sent."""

    def __init__(self, address: str):
        path = dict(kv.split("=", 1) for kv in address.removeprefix("unix:").split(","))["path"]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(path)
        self.buf = bytearray()
        self.sock.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
        while not self.buf.endswith(b"\r\n"):
            self.buf += self.sock.recv(1)
        assert self.buf.startswith(b"OK "), self.buf
        self.buf.clear()
        self.sock.sendall(b"BEGIN\r\n")
        self.sock.sendall(build_message(METHOD_CALL, 1, path="/org/freedesktop/DBus", member="Hello",
                                        interface="org.freedesktop.DBus", destination="org.freedesktop.DBus"))
        for buf, h in self.messages():
            if h.reply_serial == 1:
                self.unique_name = read_body(buf, h)[0]
                break

    def messages(self) -> Iterator[tuple[bytes, Header]]:
        """Messages from the bus until it closes the connection."""
        while True:
            if len(self.buf) >= 16 and len(self.buf) >= frame_size(self.buf):
                size = frame_size(self.buf)
                buf = bytes(self.buf[:size])
                del self.buf[:size]
                yield buf, parse_header(buf)
                continue
            data = self.sock.recv(1 << 16)
            if not data:
                return
            self.buf += data

    def accepted(self, buf: bytes) -> bool:
        """Send `buf` then a Ping: True if the Ping is answered, False if the bus hangs up."""
        ping = build_message(METHOD_CALL, 1000, path="/", interface="org.freedesktop.DBus.Peer",
                             member="Ping", destination="org.freedesktop.DBus")
        try:
            self.sock.sendall(buf)
            self.sock.sendall(ping)
            return any(h.reply_serial == 1000 for _, h in self.messages())
        except (BrokenPipeError, ConnectionResetError):
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def shared_reference_bus() -> Iterator[RunningBus]:
    """One dbus-daemon for the many short verdict tests of this module."""
    bus = start_bus("dbus-daemon")
    yield bus
    bus.stop()


def reference_accepts(bus: RunningBus, buf: bytes) -> bool:
    peer = RawPeer(bus.address)
    try:
        return peer.accepted(buf)
    finally:
        peer.close()


@pytest.mark.live
@pytest.mark.parametrize("case", [c for c in INVALID if c.reference], ids=[c.id for c in INVALID if c.reference])
def test_dbus_daemon_also_rejects(shared_reference_bus: RunningBus, case: Case) -> None:
    assert not reference_accepts(shared_reference_bus, case.message)


@pytest.mark.live
@pytest.mark.parametrize("name, buf", VALID, ids=[name for name, _ in VALID])
def test_dbus_daemon_also_accepts(shared_reference_bus: RunningBus, name: str, buf: bytes) -> None:
    assert reference_accepts(shared_reference_bus, buf)


@pytest.mark.live
@pytest.mark.parametrize("header", [
    b"l\x01\x00\x01" + le("III", 0, 1, (1 << 26) + 1),
    b"l\x01\x00\x01" + le("III", 0xFFFFFFF0, 1, 8),
], ids=["fields-over-64-mib", "body-over-4-gib"])
def test_dbus_daemon_also_rejects_impossible_lengths_from_16_bytes(shared_reference_bus: RunningBus,
                                                                  header: bytes) -> None:
    with pytest.raises(ProtocolError):
        frame_size(header)
    assert not reference_accepts(shared_reference_bus, header)


@pytest.mark.live
def test_stamped_header_matches_what_dbus_daemon_forwards(shared_reference_bus: RunningBus) -> None:
    peer = RawPeer(shared_reference_bus.address)
    try:
        buf = message(change={DESTINATION: ("s", peer.unique_name), SENDER: ("s", ":forged.1")},
                      extra=[raw_field(42, "s", "unknown")], signature="sv",
                      body=marshal_body("sv", ["a", Variant("ai", [1, 2])]), flags=NO_REPLY_EXPECTED)
        peer.sock.sendall(buf)
        relayed = next(out for out, h in peer.messages() if h.member == "Do")
    finally:
        peer.close()
    ours = forwarded(buf, peer.unique_name)
    theirs_h, ours_h = parse_header(relayed), parse_header(ours)
    assert header_values(ours_h) == header_values(theirs_h)
    assert ours_h.sender == theirs_h.sender == peer.unique_name
    assert ours_h.unknown_spans is None and theirs_h.unknown_spans is None
    assert ours[ours_h.body_start:] == relayed[theirs_h.body_start:]
