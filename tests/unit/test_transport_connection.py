"""The server Connection on socketpairs with a stand-in bus: what one read does when a peer's input goes wrong."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from busd.bus.ports import Credentials
from busd.transport.connection import Connection
from busd.wire.message import SIGNAL, Header, build_message, parse_header
from busd.wire.sasl_server import ServerAuthenticator

GUID = "0" * 32


class Peer:
    def __init__(self, name: str):
        self.unique_name = name


class Limits:
    max_message_size = 1 << 27
    max_message_unix_fds = 16
    max_incoming_unix_fds = 64


class StandInBus:
    """A BusEntry that copies every message to `forward_to`, and raises on a signal named Boom."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.limits = Limits()
        self.forward_to: Connection | None = None
        self.reading = False
        self.to_flush: list[Any] = []
        self.closed: list[Any] = []
        self.reads = 0

    def link_opened(self, link: Any) -> None:
        pass

    def peer_authenticated(self, link: Any, auth_uid: int | None) -> Peer:
        return Peer(link.label)

    def receive(self, peer: Peer, buf: bytes, h: Header, fds: list[int] | None) -> None:
        if h.member == "Boom":
            raise RuntimeError("a bug in the bus")
        assert self.forward_to is not None
        self.forward_to.queue(buf, b"")

    def input_started(self) -> None:
        self.reading = True

    def input_done(self) -> None:
        self.reading = False
        self.reads += 1
        queue, self.to_flush = self.to_flush, []
        for link in queue:
            link.flush()

    def schedule_flush(self, link: Any) -> None:
        assert self.reading, "a test link queues only while a read is handed over"
        self.to_flush.append(link)

    def output_flushed(self, link: Any) -> None:
        pass

    def link_closed(self, link: Any) -> None:
        self.closed.append(link)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def connected(bus: StandInBus, label: str) -> tuple[Connection, socket.socket]:
    """A Connection past authentication, and the peer's end of its socket."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    conn = Connection(bus, ours, lambda creds: ServerAuthenticator(GUID, peer_uid=creds.uid), label)
    conn.data_received(b"\0AUTH EXTERNAL\r\nDATA\r\nBEGIN\r\n")
    theirs.settimeout(5)
    assert theirs.recv(4096).startswith(b"DATA\r\nOK ")
    assert conn.peer is not None
    return conn, theirs


def signal(member: str, serial: int) -> bytes:
    return build_message(SIGNAL, serial, path="/t", interface="org.example.T", member=member)


def test_an_error_while_handling_one_peer_drops_it_and_still_writes_what_others_were_sent(loop, caplog) -> None:
    bus = StandInBus(loop)
    attacker, attacker_end = connected(bus, "attacker")
    victim, victim_end = connected(bus, "victim")
    bus.forward_to = victim
    one_read = signal("First", 1) + signal("Second", 2) + signal("Boom", 3) + signal("Never", 4)
    with caplog.at_level(logging.ERROR, logger="busd.connection"):
        attacker.data_received(one_read)  # raises nothing: the error is the attacker's alone
    assert attacker.closed and bus.closed == [attacker]
    assert not bus.reading, "input_done ran"
    received = victim_end.recv(65536)
    assert received == signal("First", 1) + signal("Second", 2)
    [record] = [r for r in caplog.records if "attacker" in r.getMessage()]
    assert "RuntimeError: a bug in the bus" in record.getMessage()
    assert attacker_end.recv(10) == b""  # the bus closed the attacker's connection
    assert not victim.closed


def test_a_protocol_error_in_the_same_read_drops_the_sender_after_routing_what_came_before(loop) -> None:
    bus = StandInBus(loop)
    attacker, _attacker_end = connected(bus, "attacker")
    victim, victim_end = connected(bus, "victim")
    bus.forward_to = victim
    junk = b"X" + bytes(15)  # not an endianness byte: a protocol error
    attacker.data_received(signal("First", 1) + junk)
    assert attacker.closed and not victim.closed
    assert victim_end.recv(65536) == signal("First", 1)
