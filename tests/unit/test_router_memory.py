"""Routing through the PeerLink port, in memory: a Bus and a few fake links, no sockets, no daemon.

As h11 tests its Connection with an in-memory pair, these tests wire MemoryLinks
straight to a Bus and check routing basics fast. The live tests (test_bus_*.py)
check the same behaviour end to end against busd and dbus-daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import pytest

from busd.bus.core import Bus
from busd.bus.limits import Limits
from busd.bus.ports import Credentials, PeerLink
from busd.wire.message import (
    ERROR, METHOD_CALL, METHOD_RETURN, NO_REPLY_EXPECTED, SIGNAL, Header, build_message, parse_header, read_body,
)
from busd.wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH



class MemoryLink:
    """A PeerLink whose peer is the test: what the bus queues waits in `outbox` until take()."""

    def __init__(self, bus: Bus, label: str):
        self.bus = bus
        self.label = label
        self.credentials = Credentials(os.getpid(), os.getuid(), os.getgid(), (os.getgid(),))
        self.can_pass_fds = False
        self.closed = False
        self.out_bytes = self.out_fds = self.peak_out_bytes = 0
        self.in_bytes = self.peak_in_bytes = 0
        self.outbox: list[bytes] = []
        self.held = False  # the bus asked us to read no more from the peer
        self.dropped_broadcasts = 0
        self.serial = 0
        self.unique_name: str | None = None
        bus.link_opened(self)
        self.peer = bus.peer_authenticated(self, os.getuid())

    # ------------------------------------------------------------ the port

    def queue(self, head: bytes, body: Any, fds: list[int] | None = None) -> None:
        message = bytes(head) + bytes(body)
        self.outbox.append(message)
        self.out_bytes += len(message)
        self.peak_out_bytes = max(self.peak_out_bytes, self.out_bytes)

    def flush(self) -> None:
        pass  # the test reads with take()

    def hold_input(self) -> None:
        self.held = True

    def release_input(self) -> None:
        self.held = False

    def registered(self) -> None:
        pass

    def note_dropped_broadcast(self, limit: int) -> None:
        self.dropped_broadcasts += 1

    def drop(self, reason: str, level: int = logging.WARNING) -> None:
        if not self.closed:
            self.closed = True
            self.bus.link_closed(self)

    # ------------------------------------------------------------ the peer's side

    def send(self, mtype: int, **fields: Any) -> int:
        """Send one message as the peer, as a transport hands over one read; returns its serial."""
        self.serial += 1
        message = build_message(mtype, self.serial, **fields)
        self.bus.input_started()
        try:
            self.bus.receive(self.peer, message, parse_header(message), None)
        finally:
            self.bus.input_done()
        return self.serial

    def call_driver(self, member: str, signature: str = "", body: list | tuple = ()) -> int:
        return self.send(METHOD_CALL, path=DRIVER_PATH, interface=DRIVER_INTERFACE, member=member,
                         destination=DRIVER_NAME, signature=signature, body=body)

    def take(self) -> list[tuple[Header, list]]:
        """Everything the bus queued for the peer since the last take(), as (header, body); the queue drains."""
        messages, self.outbox = self.outbox, []
        self.out_bytes = 0
        self.bus.output_flushed(self)
        return [(h, read_body(m, h)) for m in messages for h in [parse_header(m)]]

    def hello(self) -> str:
        serial = self.call_driver("Hello")
        (reply, body), *_ = self.take()
        assert reply.type == METHOD_RETURN and reply.reply_serial == serial
        self.unique_name = body[0]
        return self.unique_name


@pytest.fixture
def bus():
    loop = asyncio.new_event_loop()
    bus = Bus(loop, "0" * 32)
    yield bus
    bus.close()
    loop.close()


def members(messages: list[tuple[Header, list]]) -> list[tuple[int, str | None]]:
    return [(h.type, h.member) for h, _ in messages]


def test_hello_gives_a_unique_name_then_name_acquired(bus: Bus) -> None:
    link = MemoryLink(bus, "a")
    assert bus.incomplete_connections == 1
    serial = link.call_driver("Hello")
    (reply, body), (signal, signal_body) = link.take()
    assert reply.type == METHOD_RETURN and reply.reply_serial == serial and body == [":1.0"]
    assert (signal.type, signal.member, signal_body) == (SIGNAL, "NameAcquired", [":1.0"])
    assert bus.incomplete_connections == 0 and bus.peers[":1.0"] is link.peer


def test_a_call_and_its_reply(bus: Bus) -> None:
    caller, callee = MemoryLink(bus, "caller"), MemoryLink(bus, "callee")
    caller.hello(), callee.hello()
    serial = caller.send(METHOD_CALL, path="/x", interface="com.example.X", member="Ping",
                         destination=callee.unique_name, signature="s", body=["hi"])
    [(call, body)] = callee.take()
    assert (call.member, call.sender, call.serial, body) == ("Ping", caller.unique_name, serial, ["hi"])
    callee.send(METHOD_RETURN, reply_serial=call.serial, destination=caller.unique_name, signature="s", body=["ho"])
    [(reply, body)] = caller.take()
    assert (reply.type, reply.reply_serial, reply.sender, body) == (METHOD_RETURN, serial, callee.unique_name, ["ho"])
    assert bus.pending == {}


def test_a_signal_reaches_only_a_matching_rule(bus: Bus) -> None:
    emitter, listener, bystander = MemoryLink(bus, "e"), MemoryLink(bus, "l"), MemoryLink(bus, "b")
    for link in (emitter, listener, bystander):
        link.hello()
    listener.call_driver("AddMatch", "s", ["type='signal',interface='com.example.Weather'"])
    assert members(listener.take()) == [(METHOD_RETURN, None)]
    bystander.take()
    emitter.send(SIGNAL, path="/w", interface="com.example.Weather", member="Rain", signature="u", body=[3])
    [(signal, body)] = listener.take()
    assert (signal.member, signal.sender, body) == ("Rain", emitter.unique_name, [3])
    assert bystander.take() == []


def test_a_reply_nobody_asked_for_is_dropped(bus: Bus) -> None:
    sender, target = MemoryLink(bus, "s"), MemoryLink(bus, "t")
    sender.hello(), target.hello()
    sender.send(METHOD_RETURN, reply_serial=99, destination=target.unique_name)
    sender.send(ERROR, reply_serial=99, destination=target.unique_name, error_name="com.example.Error")
    assert target.take() == [] and sender.take() == []


def test_a_full_recipient_holds_its_sender_back_until_it_drains(bus: Bus) -> None:
    bus.limits = Limits(max_outgoing_bytes=64 * 1024)  # soft limit: 16 KiB, released below 8 KiB
    sender, reader = MemoryLink(bus, "fast"), MemoryLink(bus, "slow")
    sender.hello(), reader.hello()
    while not sender.held:
        sender.send(SIGNAL, path="/p", interface="com.example.Data", member="Chunk",
                    destination=reader.unique_name, flags=NO_REPLY_EXPECTED, signature="ay", body=[b"x" * 1024])
        assert reader.out_bytes < 20 * 1024, "the sender should be held back past the soft limit"
    assert reader.out_bytes > 16 * 1024  # held just past the soft limit
    assert all(h.member == "Chunk" for h, _ in reader.take())
    assert not sender.held


def test_a_recipient_leaving_releases_the_senders_it_held(bus: Bus) -> None:
    bus.limits = Limits(max_outgoing_bytes=64 * 1024)
    sender, reader = MemoryLink(bus, "fast"), MemoryLink(bus, "slow")
    sender.hello(), reader.hello()
    while not sender.held:
        sender.send(SIGNAL, path="/p", interface="com.example.Data", member="Chunk",
                    destination=reader.unique_name, signature="ay", body=[b"x" * 1024])
    reader.drop("gone")
    assert not sender.held


def test_a_peer_leaving_is_announced_and_its_callers_get_no_reply(bus: Bus) -> None:
    caller, callee = MemoryLink(bus, "caller"), MemoryLink(bus, "callee")
    caller.hello(), callee.hello()
    caller.call_driver("AddMatch", "s", ["type='signal',member='NameOwnerChanged'"])
    caller.take()
    serial = caller.send(METHOD_CALL, path="/x", interface="com.example.X", member="Slow",
                         destination=callee.unique_name)
    callee.drop("gone")
    (error, _), (signal, body) = caller.take()
    assert (error.type, error.reply_serial, error.error_name) == (ERROR, serial, "org.freedesktop.DBus.Error.NoReply")
    assert signal.member == "NameOwnerChanged" and body == [callee.unique_name, callee.unique_name, ""]
    assert callee.unique_name not in bus.peers and callee not in bus.links


def test_every_link_kind_implements_the_port(bus: Bus) -> None:
    """The memory link here, the bridge's stand-in peers and the socket Connection all carry PeerLink's members."""
    from busd.bridge import Bridge, Mirror
    from busd.bridge import BridgeSettings

    bridge = Bridge(bus, BridgeSettings(upstream="unix:path=/nonexistent"))
    assert isinstance(MemoryLink(bus, "m"), PeerLink)
    assert isinstance(bridge.home, PeerLink)
    assert isinstance(Mirror(bridge, ":1.42"), PeerLink)




