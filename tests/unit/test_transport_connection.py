"""The server Connection on socketpairs with a stand-in bus: what one read does when a peer's input goes wrong."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest

from busd.bus.ports import Credentials
from busd.transport.connection import Connection, Lookups
from busd.transport.users import UserDirectory, groups_of_user
from busd.wire.message import SIGNAL, Header, build_message, parse_header
from busd.wire.sasl_server import ServerAuthenticator

GUID = "0" * 32
WAIT = 10  # seconds; a safety net against hangs, never a timing assertion


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
        self.admitted: list[tuple[str, int | None, tuple[int, ...] | None]] = []
        self.buffered: list[tuple[str, int, int]] = []  # (link, in_bytes, in_fds) as each report said

    def link_opened(self, link: Any) -> None:
        pass

    def peer_authenticated(self, link: Any, auth_uid: int | None) -> Peer:
        self.admitted.append((link.label, auth_uid, link.credentials.user_groups))
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

    def input_buffered(self, link: Any) -> None:
        self.buffered.append((link.label, link.in_bytes, link.in_fds))

    def output_flushed(self, link: Any) -> None:
        pass

    def link_closed(self, link: Any) -> None:
        self.closed.append(link)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def run_until(loop: asyncio.AbstractEventLoop, condition: Callable[[], object], what: str) -> None:
    """Run the loop until `condition()` holds (a lookup thread finished and the loop handled it)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        loop.run_until_complete(asyncio.sleep(0.005))


def connected(bus: StandInBus, label: str, lookups: Lookups | None = None,
              first: bytes = b"") -> tuple[Connection, socket.socket]:
    """A Connection that authenticated with EXTERNAL (and sent `first` after BEGIN), and the peer's end."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    conn = Connection(bus, ours, lambda creds: ServerAuthenticator(GUID, peer_uid=creds.uid), label, lookups)
    conn.data_received(b"\0AUTH EXTERNAL\r\nDATA\r\nBEGIN\r\n" + first)
    theirs.settimeout(WAIT)
    assert theirs.recv(4096).startswith(b"DATA\r\nOK ")
    return conn, theirs


def admitted(bus: StandInBus, label: str, lookups: Lookups | None = None) -> tuple[Connection, socket.socket]:
    conn, theirs = connected(bus, label, lookups)
    run_until(bus.loop, lambda: conn.peer is not None, f"{label} is admitted")
    return conn, theirs


def signal(member: str, serial: int) -> bytes:
    return build_message(SIGNAL, serial, path="/t", interface="org.example.T", member=member)


def test_an_error_while_handling_one_peer_drops_it_and_still_writes_what_others_were_sent(loop, caplog) -> None:
    bus = StandInBus(loop)
    attacker, attacker_end = admitted(bus, "attacker")
    victim, victim_end = admitted(bus, "victim")
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
    attacker, _attacker_end = admitted(bus, "attacker")
    victim, victim_end = admitted(bus, "victim")
    bus.forward_to = victim
    junk = b"X" + bytes(15)  # not an endianness byte: a protocol error
    attacker.data_received(signal("First", 1) + junk)
    assert attacker.closed and not victim.closed
    assert victim_end.recv(65536) == signal("First", 1)


def test_the_user_database_is_asked_in_a_thread_while_other_peers_are_served(loop) -> None:
    """A slow user lookup (NSS over LDAP, say) holds back only the peer it is for."""
    bus = StandInBus(loop)
    lookup_may_finish = threading.Event()
    slow = ThreadPoolExecutor(1)
    slow.submit(lookup_may_finish.wait, WAIT)  # the one lookup thread is busy: the lookup waits its turn
    slow_lookups = Lookups(users=UserDirectory(slow))
    victim, victim_end = admitted(bus, "victim")  # (the shared lookups: not slow)
    bus.forward_to = victim
    waiting, _waiting_end = connected(bus, "waiting", slow_lookups, first=signal("AfterBegin", 1))
    assert waiting.peer is None and waiting.looking_up
    # Meanwhile another peer's messages are routed and written.
    other, _other_end = admitted(bus, "other")
    other.data_received(signal("Meanwhile", 1))
    assert victim_end.recv(65536) == signal("Meanwhile", 1)
    lookup_may_finish.set()
    run_until(loop, lambda: waiting.peer is not None, "the slow lookup ends")
    assert victim_end.recv(65536) == signal("AfterBegin", 1)  # what followed BEGIN, handled after the lookup
    uid = os.getuid()
    assert bus.admitted[-2:] == [("other", uid, groups_of_user(uid)), ("waiting", uid, groups_of_user(uid))]
    assert waiting.credentials.uid == uid and waiting.credentials.user_groups == groups_of_user(uid)
    slow.shutdown()


def test_a_peer_that_leaves_during_its_lookup_is_forgotten(loop) -> None:
    bus = StandInBus(loop)
    lookup_may_finish = threading.Event()
    slow = ThreadPoolExecutor(1)
    slow.submit(lookup_may_finish.wait, WAIT)
    waiting, waiting_end = connected(bus, "waiting", Lookups(users=UserDirectory(slow)))
    waiting_end.close()
    waiting.drop("peer closed the connection")
    lookup_may_finish.set()
    slow.shutdown(wait=True)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert bus.admitted == [] and bus.closed == [waiting]


def test_connections_of_a_uid_being_looked_up_share_the_lookup(loop) -> None:
    lookup_may_finish = threading.Event()
    slow = ThreadPoolExecutor(1)
    slow.submit(lookup_may_finish.wait, WAIT)
    users = UserDirectory(slow)
    first, second = users.groups(loop, os.getuid()), users.groups(loop, os.getuid())
    assert first is second and users.cached_groups(os.getuid()) is None
    lookup_may_finish.set()
    assert loop.run_until_complete(first) == groups_of_user(os.getuid())
    assert users.cached_groups(os.getuid()) == groups_of_user(os.getuid())
    assert users.groups(loop, os.getuid()) is not first  # a new lookup once done (callers check the cache first)
    slow.shutdown()
    users.forget()
    assert users.cached_groups(os.getuid()) is None


def test_groups_of_a_uid_that_is_no_user_are_none() -> None:
    taken = {entry.pw_uid for entry in pwd.getpwall()}
    assert groups_of_user(next(uid for uid in range(40000, 50000) if uid not in taken)) == ()
    assert groups_of_user(0)[0] == 0


def test_unfinished_input_is_reported_to_the_bus_and_whole_messages_are_not(loop) -> None:
    # The bus charges a link's partial message to its user (ledger IncomingBytes): the link says when it changes.
    bus = StandInBus(loop)
    sender, _sender_end = admitted(bus, "sender")
    receiver, _receiver_end = admitted(bus, "receiver")
    bus.forward_to = receiver
    sender.data_received(signal("Whole", 1))
    assert bus.buffered == [], "a read of whole messages reports nothing (the common case costs nothing)"
    message = signal("Split", 2)
    sender.data_received(message[:20])
    assert bus.buffered == [("sender", 20, 0)]
    sender.data_received(message[20:30])
    assert bus.buffered[-1] == ("sender", 30, 0)
    sender.data_received(message[30:])
    assert bus.buffered[-1] == ("sender", 0, 0), "once whole, the charge goes back"
    count = len(bus.buffered)
    sender.data_received(signal("Whole", 3))
    assert len(bus.buffered) == count
