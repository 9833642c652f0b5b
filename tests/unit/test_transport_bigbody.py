"""Large bodies are checked in a thread while that peer's input alone waits (issue 13, #11), on socketpairs.

The stand-in bus and the helpers are test_transport_connection's. Each check
waits behind a gate in the one check thread, so a test decides when it ends.
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest

from busd.bus.backpressure import BackPressure
from busd.transport.connection import LARGE_MESSAGE, Connection, Lookups
from busd.transport.stream import NEVER, Stream
from busd.wire.errors import ProtocolError
from busd.wire.message import SIGNAL, Header, build_message, parse_header
from busd.wire.sasl_server import ServerAuthenticator
from test_transport_connection import GUID, WAIT, Peer, StandInBus, run_until, signal


class RecordingBus(StandInBus):
    """A stand-in bus that records what each peer sent: (peer, member, fds)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        super().__init__(loop)
        self.received: list[tuple[str, str, list[int] | None]] = []

    def receive(self, peer: Peer, buf: bytes, h: Header, fds: list[int] | None) -> None:
        self.received.append((peer.unique_name, str(h.member), fds))

    def members(self, label: str) -> list[str]:
        return [member for who, member, _ in self.received if who == label]


class Gate:
    """The one check thread, busy until open() (the check queued behind it waits its turn)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.executor = ThreadPoolExecutor(1)
        self.executor.submit(self._event.wait, WAIT)

    def open(self) -> None:
        self._event.set()

    def lookups(self) -> Lookups:
        return Lookups(checks=self.executor)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate()
    yield gate
    gate.open()
    gate.executor.shutdown(wait=True)


def admitted(bus: RecordingBus, label: str, lookups: Lookups | None = None,
             unix_fds: bool = False) -> tuple[Connection, socket.socket]:
    """A Connection that authenticated with EXTERNAL (agreeing on fd passing if asked), and the peer's end."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    conn = Connection(bus, ours, lambda creds: ServerAuthenticator(GUID, peer_uid=creds.uid), label, lookups)
    conn.data_received(b"\0AUTH EXTERNAL\r\nDATA\r\n" + (b"NEGOTIATE_UNIX_FD\r\n" if unix_fds else b"") + b"BEGIN\r\n")
    theirs.settimeout(WAIT)
    assert theirs.recv(4096).startswith(b"DATA\r\nOK ")
    run_until(bus.loop, lambda: conn.peer is not None, f"{label} is admitted")
    assert conn.can_pass_fds == unix_fds
    return conn, theirs


def big(member: str, serial: int, unix_fds: int = 0) -> bytes:
    """A valid signal just over LARGE_MESSAGE: one string (its check reads every byte of it)."""
    return build_message(SIGNAL, serial, path="/t", interface="org.example.T", member=member,
                         signature="s", body=["a" * LARGE_MESSAGE], unix_fds=unix_fds)


def big_bytes(member: str, serial: int) -> bytes:
    """A valid signal just over LARGE_MESSAGE: one `ay`, whose check is a few steps at any size."""
    return build_message(SIGNAL, serial, path="/t", interface="org.example.T", member=member,
                         signature="ay", body=[bytes(LARGE_MESSAGE)])


def bad_big(member: str, serial: int) -> tuple[bytes, str]:
    """A signal over LARGE_MESSAGE whose one string is not UTF-8, and the reason an inline check gives."""
    message = bytearray(build_message(SIGNAL, serial, path="/t", interface="org.example.T", member=member,
                                      signature="s", body=["a" * LARGE_MESSAGE]))
    message[-2] = 0xFF
    with pytest.raises(ProtocolError) as inline:
        parse_header(bytes(message))
    return bytes(message), inline.value.reason


def settle(loop: asyncio.AbstractEventLoop, seconds: float = 0.05) -> None:
    """Let the loop run (reads, if any were allowed, would happen)."""
    loop.run_until_complete(asyncio.sleep(seconds))


def test_only_a_side_that_asks_checks_large_bodies_off_the_loop() -> None:
    assert Stream.large_message_size == NEVER  # the bridge's upstream link checks every body inline
    assert Connection.large_message_size == LARGE_MESSAGE
    assert len(big("Big", 1)) > LARGE_MESSAGE and len(bad_big("Bad", 1)[0]) > LARGE_MESSAGE


def test_a_large_body_is_delivered_after_its_check_in_order_with_what_came_around_it(loop, gate) -> None:
    bus = RecordingBus(loop)
    sender, sender_end = admitted(bus, "sender", gate.lookups())
    other, _other_end = admitted(bus, "other", gate.lookups())
    message = big("Big", 2)
    after = signal("After", 3)
    sender.data_received(signal("Before", 1) + message + after)
    assert bus.members("sender") == ["Before"]
    assert sender.looking_up and not sender.reading
    assert sender.in_bytes == len(message) + len(after) and sender.peak_in_bytes >= sender.in_bytes
    # A later read waits too (the socket is not read), while other peers are served.
    sender_end.sendall(signal("Later", 4))
    other.data_received(signal("Meanwhile", 1))
    settle(loop)
    assert bus.members("sender") == ["Before"] and bus.members("other") == ["Meanwhile"]
    gate.open()
    run_until(loop, lambda: len(bus.members("sender")) == 4, "the check ends and the rest is read")
    assert bus.members("sender") == ["Before", "Big", "After", "Later"]
    assert not sender.looking_up and sender.reading and sender.in_bytes == 0 and not sender.closed


def test_a_large_byte_array_is_checked_in_place_without_waiting_for_the_thread(loop, gate) -> None:
    bus = RecordingBus(loop)
    sender, _sender_end = admitted(bus, "sender", gate.lookups())  # the check thread stays busy throughout
    sender.data_received(signal("Before", 1) + big_bytes("Bytes", 2) + signal("After", 3))
    assert bus.members("sender") == ["Before", "Bytes", "After"]
    assert not sender.looking_up and sender.reading and sender.in_bytes == 0


def test_a_bad_large_byte_array_drops_the_peer_in_place(loop, gate, caplog) -> None:
    bus = RecordingBus(loop)
    sender, _sender_end = admitted(bus, "sender", gate.lookups())
    message = bytearray(big_bytes("Bytes", 2))
    h = parse_header(bytes(message))
    message[h.body_start:h.body_start + 4] = (LARGE_MESSAGE - 1).to_bytes(4, "little")  # one byte left over
    with pytest.raises(ProtocolError) as inline:
        parse_header(bytes(message))
    sender.data_received(bytes(message) + signal("After", 3))
    assert sender.closed and bus.members("sender") == []
    assert f"protocol error: {inline.value.reason}" in caplog.text


def test_two_large_bodies_in_one_read_are_checked_one_after_the_other(loop, gate) -> None:
    bus = RecordingBus(loop)
    sender, _sender_end = admitted(bus, "sender", gate.lookups())
    sender.data_received(big("One", 1) + signal("Between", 2) + big("Two", 3) + signal("Last", 4))
    assert bus.members("sender") == []
    gate.open()
    run_until(loop, lambda: len(bus.members("sender")) == 4, "both checks end")
    assert bus.members("sender") == ["One", "Between", "Two", "Last"]
    assert sender.reading and sender.in_bytes == 0


def test_a_large_body_split_across_reads_is_checked_once_whole(loop, gate) -> None:
    bus = RecordingBus(loop)
    sender, _sender_end = admitted(bus, "sender", gate.lookups())
    message = big("Big", 1) + signal("After", 2)
    for start in range(0, len(message), 100_000):
        sender.data_received(message[start:start + 100_000])
    assert sender.looking_up and bus.members("sender") == []
    gate.open()
    run_until(loop, lambda: bus.members("sender") == ["Big", "After"], "the check ends")


def test_a_bad_large_body_drops_the_peer_with_the_inline_reason(loop, gate, caplog) -> None:
    bus = RecordingBus(loop)
    sender, sender_end = admitted(bus, "sender", gate.lookups())
    message, reason = bad_big("Bad", 2)
    with caplog.at_level(logging.WARNING, logger="busd.connection"):
        sender.data_received(signal("Before", 1) + message + signal("Never", 3))
        gate.open()
        run_until(loop, lambda: sender.closed, "the check fails")
    assert bus.members("sender") == ["Before"] and bus.closed == [sender]
    [record] = [r.getMessage() for r in caplog.records if "dropping connection sender" in r.getMessage()]
    assert record.endswith(f": protocol error: {reason}")
    assert sender_end.recv(10) == b""


def test_a_peer_held_by_back_pressure_stays_held_after_its_check(loop, gate) -> None:
    bus = RecordingBus(loop)
    sender, sender_end = admitted(bus, "sender", gate.lookups())
    backpressure, full_recipient = BackPressure(), object()
    sender.data_received(big("Big", 1) + signal("After", 2))
    backpressure.hold(sender, full_recipient)  # type: ignore[arg-type]
    sender_end.sendall(signal("Later", 3))
    gate.open()
    run_until(loop, lambda: bus.members("sender") == ["Big", "After"], "the check ends")
    settle(loop)
    assert bus.members("sender") == ["Big", "After"] and not sender.reading, "back-pressure still holds it"
    backpressure.release(full_recipient)  # type: ignore[arg-type]
    run_until(loop, lambda: bus.members("sender") == ["Big", "After", "Later"], "back-pressure lets go")


def test_a_peer_whose_check_runs_stays_held_when_back_pressure_lets_go(loop, gate) -> None:
    bus = RecordingBus(loop)
    sender, sender_end = admitted(bus, "sender", gate.lookups())
    backpressure, full_recipient = BackPressure(), object()
    backpressure.hold(sender, full_recipient)  # type: ignore[arg-type]
    sender.data_received(big("Big", 1))  # (what one read brought is handed over, held or not)
    backpressure.release(full_recipient)  # type: ignore[arg-type]
    assert not sender.reading, "the check still holds it"
    sender_end.sendall(signal("Later", 2))
    settle(loop)
    assert bus.members("sender") == []
    gate.open()
    run_until(loop, lambda: bus.members("sender") == ["Big", "Later"], "the check ends")


def _send_with_fd(sock: socket.socket, message: bytes, fd: int) -> threading.Thread:
    """Send `message` with `fd` from a thread (a socketpair holds less than a large message)."""
    def send() -> None:
        sent = sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        sock.sendall(message[sent:])
    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_fds_of_a_checked_message_are_delivered_with_it(loop, gate) -> None:
    bus = RecordingBus(loop)
    sender, sender_end = admitted(bus, "sender", gate.lookups(), unix_fds=True)
    read_end, write_end = os.pipe()
    thread = _send_with_fd(sender_end, big("Big", 1, unix_fds=1), write_end)
    run_until(loop, lambda: sender.looking_up, "the message is read and its check starts")
    thread.join(WAIT)
    os.close(write_end)
    gate.open()
    run_until(loop, lambda: bus.members("sender") == ["Big"], "the check ends")
    [(_, _, fds)] = bus.received
    assert fds is not None and len(fds) == 1
    os.write(fds[0], b"x")  # the fd that was sent
    assert os.read(read_end, 1) == b"x"
    os.close(fds[0])
    os.close(read_end)


def test_a_peer_dropped_during_its_check_gets_nothing_delivered_and_its_fds_closed(loop, gate) -> None:
    bus = RecordingBus(loop)
    sender, sender_end = admitted(bus, "sender", gate.lookups(), unix_fds=True)
    read_end, write_end = os.pipe()
    thread = _send_with_fd(sender_end, big("Big", 1, unix_fds=1), write_end)
    run_until(loop, lambda: sender.looking_up, "the message is read and its check starts")
    thread.join(WAIT)
    os.close(write_end)
    sender.drop("peer closed the connection", level=logging.DEBUG)
    os.set_blocking(read_end, False)  # (BlockingIOError while a writer is left)
    assert os.read(read_end, 1) == b"", "the fd the message carried is closed: the pipe has no writer left"
    gate.open()
    gate.executor.shutdown(wait=True)
    settle(loop)
    assert bus.received == [] and bus.closed == [sender]
    os.close(read_end)


def test_closing_lookups_ends_a_check_waiting_in_its_thread(loop, gate) -> None:
    bus = RecordingBus(loop)
    lookups = gate.lookups()
    sender, _sender_end = admitted(bus, "sender", lookups)
    sender.data_received(big("Big", 1))
    lookups.close()  # (the daemon stops: the queued check is cancelled)
    gate.open()
    run_until(loop, lambda: sender.closed, "the cancelled check drops the peer")
    assert bus.received == []
