"""Both twins of ServedStream, the per-message half of a server connection, against a recording bus.

The compiled twin is an extension type whose hooks the stream's loops call at C level; the pure one is
plain Python. Each test drives a ServedStream of either twin through its BusEntry port (a recording bus,
no daemon) over a real socketpair and checks what the bus was told: the handshake's bytes go to the side
while `auth` runs, then every framed message to receive() in order, each read between input_started()
and input_done(); unfinished input is charged and the charge released; a failure in the bus drops this
stream alone; the limits follow the bus's reloads; a full queue's dropped broadcasts are logged once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Any

import pytest

import busd.transport.served as compiled_served
from busd.wire.message import METHOD_CALL, SIGNAL, build_message
from twins import compiled_modules, twin

TWINS = [pytest.param(compiled_served, id="compiled" if compiled_modules() else "pure")]
if compiled_modules():
    TWINS.append(pytest.param(twin("busd.transport.served"), id="pure"))


@dataclass
class Limits:
    max_message_size: int = 1 << 20
    max_message_unix_fds: int = 16
    max_incoming_unix_fds: int = 64


class RecordingBus:
    """A BusEntry that writes down every call a link makes on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.limits = Limits()
        self.calls: list[tuple] = []
        self.fail_receive = False
        self.fail_flushed = False

    def schedule_flush(self, link: Any) -> None:
        self.calls.append(("schedule_flush",))

    def input_started(self) -> None:
        self.calls.append(("input_started",))

    def input_done(self) -> None:
        self.calls.append(("input_done",))

    def receive(self, peer: Any, buf: bytes, h: Any, fds: Any) -> None:
        if self.fail_receive:
            raise RuntimeError("the bus broke")
        self.calls.append(("receive", peer, h.member, bytes(buf)))

    def input_buffered(self, link: Any) -> None:
        self.calls.append(("input_buffered", link.in_bytes))

    def output_flushed(self, link: Any) -> None:
        if self.fail_flushed:
            raise RuntimeError("the bus broke after a write")
        self.calls.append(("output_flushed",))

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]


def served_stream(module: Any, bus: RecordingBus, sock: socket.socket) -> Any:
    """A ServedStream of `module`'s twin whose side records the handshake bytes and the drops."""

    class Side(module.ServedStream):
        def __init__(self) -> None:
            super().__init__(bus, "#1")
            self.handshake = bytearray()
            self.dropped: list[str] = []

        def feed_handshake(self, data: bytes) -> None:
            self.handshake += data

        def drop(self, reason: str, level: int = logging.WARNING) -> None:
            self.dropped.append(reason)
            self.shut()

    stream = Side()
    sock.setblocking(False)
    stream.attach(sock)
    return stream


def call(member: str, serial: int = 1, size: int = 0) -> bytes:
    body = ["x" * size] if size else []
    return build_message(METHOD_CALL, serial, path="/a", interface="a.b", member=member, destination=":1.1",
                         signature="s" if size else "", body=body)


@pytest.fixture
def pair():
    loop = asyncio.new_event_loop()
    ours, theirs = socket.socketpair()
    yield loop, ours, theirs
    ours.close()
    theirs.close()
    loop.close()


@pytest.mark.parametrize("module", TWINS)
def test_the_handshake_goes_to_the_side_then_messages_to_the_bus_in_order(module: Any, pair) -> None:
    loop, ours, _ = pair
    bus = RecordingBus(loop)
    stream = served_stream(module, bus, ours)
    stream.auth = object()  # the side's SASL conversation runs
    stream.data_received(b"\0AUTH EXTERNAL 30\r\n")
    assert bytes(stream.handshake) == b"\0AUTH EXTERNAL 30\r\n"
    assert bus.names() == ["input_started", "input_done"]
    stream.auth = None
    stream.peer = "the peer"
    first, second = call("One", 1), call("Two", 2)
    bus.calls.clear()
    stream.data_received(first + second)
    assert bus.calls == [("input_started",), ("receive", "the peer", "One", first),
                         ("receive", "the peer", "Two", second), ("input_done",)]
    assert stream.received[METHOD_CALL] == 2 and stream.received[SIGNAL] == 0
    assert stream.bytes_read == len(b"\0AUTH EXTERNAL 30\r\n") + len(first) + len(second)
    assert stream.dropped == []


@pytest.mark.parametrize("module", TWINS)
def test_unfinished_input_is_charged_and_the_charge_released_when_it_completes(module: Any, pair) -> None:
    loop, ours, _ = pair
    bus = RecordingBus(loop)
    stream = served_stream(module, bus, ours)
    message = call("Big", size=1000)
    stream.data_received(message[:300])
    assert bus.calls == [("input_started",), ("input_buffered", 300), ("input_done",)]
    bus.calls.clear()
    stream.data_received(message[300:])
    # The charge is taken back by telling the bus that nothing is held any more.
    assert bus.calls == [("input_started",), ("receive", None, "Big", message), ("input_buffered", 0),
                         ("input_done",)]
    bus.calls.clear()
    stream.data_received(call("Small"))
    assert "input_buffered" not in bus.names()  # nothing held, nothing charged: no call at all


@pytest.mark.parametrize("module", TWINS)
def test_a_failure_in_the_bus_drops_this_stream_and_still_ends_the_read(module: Any, pair) -> None:
    loop, ours, _ = pair
    bus = RecordingBus(loop)
    stream = served_stream(module, bus, ours)
    bus.fail_receive = True
    stream.data_received(call("Ping"))
    assert stream.dropped == ["internal error while handling its input: RuntimeError: the bus broke"]
    assert bus.names()[-1] == "input_done"


@pytest.mark.parametrize("module", TWINS)
def test_each_write_is_reported_and_a_failure_after_it_drops_the_stream(module: Any, pair) -> None:
    loop, ours, theirs = pair
    bus = RecordingBus(loop)
    stream = served_stream(module, bus, ours)
    stream.queue_bytes(b"hello")
    stream.flush()
    assert theirs.recv(100) == b"hello"
    assert bus.names()[-1] == "output_flushed"
    bus.fail_flushed = True
    stream.queue_bytes(b"again")
    stream.flush()
    assert stream.dropped == ["internal error after writing to it: RuntimeError: the bus broke after a write"]


@pytest.mark.parametrize("module", TWINS)
def test_the_limits_are_the_bus_s_and_follow_a_reload(module: Any, pair) -> None:
    loop, ours, _ = pair
    bus = RecordingBus(loop)
    stream = served_stream(module, bus, ours)
    assert (stream.max_message_size, stream.max_message_unix_fds, stream.max_incoming_unix_fds) == (1 << 20, 16, 64)
    bus.limits = Limits(max_message_size=512, max_message_unix_fds=2, max_incoming_unix_fds=4)
    assert (stream.max_message_size, stream.max_message_unix_fds, stream.max_incoming_unix_fds) == (512, 2, 4)
    stream.data_received(call("Big", size=1000))
    assert len(stream.dropped) == 1 and stream.dropped[0].startswith("protocol error: ")
    assert "receive" not in bus.names()


@pytest.mark.parametrize("module", TWINS)
def test_dropped_broadcasts_are_logged_once_per_episode(module: Any, pair, caplog) -> None:
    loop, ours, theirs = pair
    bus = RecordingBus(loop)
    stream = served_stream(module, bus, ours)
    with caplog.at_level(logging.INFO, logger="busd.connection"):
        for _ in range(3):
            stream.note_dropped_broadcast(1000)
        assert stream.dropped_broadcasts == 3
        stream.queue_bytes(b"x")
        stream.flush()  # the queue drained: the episode ends
    assert theirs.recv(10) == b"x"
    assert [record.getMessage() for record in caplog.records] == [
        "#1 is not reading: dropping broadcasts to it while its queue is over max_outgoing_bytes=1000",
        "#1 caught up; 3 broadcasts were dropped while its queue was full"]
    assert stream.dropped_broadcasts == 0
