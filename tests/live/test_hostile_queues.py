"""Hostile-peer attacks on outgoing queues (issue 13: #2, #4), on busd and dbus-daemon.

The harness is test_hostile.py's (system policy, a root bystander calling GetId
that must be answered within LIVENESS, an attacker forked as uid nobody); the
attack functions below are what the attacker's child runs. Limits are made
small with <limit>s so each attack fills them in seconds.

- #2: broadcast signals carrying 16 fds each, to the attacker's own subscribers
  that never read. Every fd queued toward a peer counts against
  max_outgoing_unix_fds (and its user's quota): the daemon's fds stay bounded,
  and no error escapes the broadcast path (the emitter keeps being answered).
- #4: Introspect calls whose replies are never read, and a monitor that stops
  reading: the bus's replies and monitor copies count against
  max_outgoing_bytes like any message (dropped past it, with a log line).
- #1 after Hello: complete connections, each holding part of a large message.
  Per connection that is bounded by max_message_size; busd's ledger bounds
  what one uid's connections hold together (IncomingBytes), and drops the
  connection that passes the quota.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from busclient import BUS_KINDS, RawClient, WaitTimeout
from busd.wire.message import METHOD_CALL, SIGNAL, build_message
import hostile_peer
from busd.transport.stream import READ_SIZE
from hostile_peer import DEADLINE, Channel
from test_hostile import NOBODY, Bystander, Usage, attack, growth, pytestmark, system_bus  # noqa: F401

DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
HOSTILE = "org.example.Hostile"
OUT_FDS = 64  # max_outgoing_unix_fds (dbus-daemon's system default, said explicitly)
OUT_BYTES = 4 << 20  # max_outgoing_bytes for these tests
STALLED = 3.0  # seconds without an answer after which the emitter takes itself as held back by the bus


def limits(**values: int) -> str:
    return "".join(f'<limit name="{name}">{value}</limit>' for name, value in values.items())


# ---------------------------------------------------------------- attacks (run as nobody)


def fd_broadcasts(channel: Channel, address: str, subscribers: int, signals: int, fds_each: int) -> None:
    """#2: `subscribers` connections subscribe and never read; another emits `signals` signals with
    `fds_each` fds and 4 KiB of body each (so the subscribers' socket buffers fill soon), waiting for
    the bus after each (GetId), so the emitter never exceeds max_incoming_unix_fds itself."""
    readers = [RawClient(address) for _ in range(subscribers)]
    for reader in readers:
        reader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.add_match(f"type='signal',interface='{HOSTILE}'")
    read_end, write_end = os.pipe()
    answered = 0
    with RawClient(address) as emitter:
        try:
            for _ in range(signals):
                emitter.send(SIGNAL, path="/", interface=HOSTILE, member="Fds", signature="ay",
                             body=[bytes(4096)], fds=[write_end] * fds_each)
                emitter.call_wait(DBUS, DBUS_PATH, DBUS, "GetId", timeout=STALLED)
                answered += 1
        except WaitTimeout:
            pass  # dbus-daemon stops reading an emitter whose fds wait in full queues (its incoming fds)
        channel.hold(f"answered={answered}")
    os.close(read_end), os.close(write_end)
    for reader in readers:
        reader.close()
    channel.say(f"result answered={answered}")


def unread_introspects(channel: Channel, address: str, calls: int) -> None:
    """#4: `calls` Introspect calls to the bus, whose replies are never read."""
    call = b"".join(build_message(METHOD_CALL, serial, destination=DBUS, path=DBUS_PATH,
                                  interface="org.freedesktop.DBus.Introspectable", member="Introspect")
                    for serial in range(1, calls + 1))
    with RawClient(address) as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sock.sendall(call)
        channel.hold(f"sent={calls}")
    channel.say(f"result sent={calls}")


def ledger_of(bus_address: str, uid: int) -> dict[str, tuple[int, int, int]] | None:
    """busd's per-user ledger lines of `uid` (Debug.Stats), None on a bus that does not report them."""
    with RawClient(bus_address) as root:
        stats = root.call_driver("GetStats", interface="org.freedesktop.DBus.Debug.Stats")
        if stats.error_name:
            return None
        accounting = stats.value().get("dev.busd.UserAccounting")
        return accounting.value.get(uid) if accounting is not None else None


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_broadcast_fds_to_subscribers_that_never_read(kind: str) -> None:
    """#2: 4 subscribers that never read, 300 broadcasts of 16 fds: 4,800 fds per subscriber unbounded.

    Bound: each subscriber's queue may hold max_outgoing_unix_fds (64), and the queues share one set
    of fds per broadcast, so 64 plus the connections' own sockets; the emitter is answered after
    every signal (dbus-daemon holds it back instead).
    """
    subscribers, signals, fds_each = 4, 300, 16
    config = limits(max_outgoing_unix_fds=OUT_FDS, max_incoming_unix_fds=4 * fds_each)
    with system_bus(kind, config) as bus:
        bystander = Bystander(bus)
        before = Usage.of(bus.process.pid)
        with attack(bus, fd_broadcasts, subscribers, signals, fds_each) as attacker:
            attacker.holding(timeout=3 * DEADLINE)
            during = Usage.of(bus.process.pid)
            ledger = ledger_of(bus.address, NOBODY) if kind == "busd" else None
            result = attacker.result(timeout=DEADLINE)
        after = Usage.of(bus.process.pid)
        summary = bystander.check()
    report = f"{kind}: before {before}, during {during}, after {after}; {summary}; attacker {result}; {ledger}"
    print(report)
    if kind == "busd":  # busd drops the copies it has no room for and keeps answering the emitter
        assert result["answered"] == str(signals), report
    _rss, fds = growth(before, during)
    # One set of fds per broadcast, shared by the subscribers' queues (each holds max_outgoing_unix_fds of
    # them): 64 and the connections' own sockets, as on dbus-daemon (it holds one message for all).
    assert fds <= OUT_FDS + 24, report
    if kind == "busd":
        assert ledger is not None and ledger["OutgoingFDs"][0] <= subscribers * OUT_FDS, report


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_introspect_replies_never_read(kind: str) -> None:
    """#4: 20,000 Introspect calls whose ~4 KiB replies are never read: ~80 MiB unbounded.

    Bound: the replies queued toward the attacker are capped by max_outgoing_bytes
    (4 MiB here), so 24 MiB leaves room for the calls in flight and allocator slack.
    """
    calls = 20_000
    with system_bus(kind, limits(max_outgoing_bytes=OUT_BYTES)) as bus:
        bystander = Bystander(bus)
        before = Usage.of(bus.process.pid)
        with attack(bus, unread_introspects, calls) as attacker:
            attacker.holding(timeout=3 * DEADLINE)
            with RawClient(bus.address) as root:  # the bus has read what the attacker sent (but its socket's)
                root.call_driver("GetId")
            during = Usage.of(bus.process.pid)
            ledger = ledger_of(bus.address, NOBODY) if kind == "busd" else None
            result = attacker.result()
        after = Usage.of(bus.process.pid)
        summary = bystander.check()
    report = f"{kind}: before {before}, during {during}, after {after}; {summary}; attacker {result}; {ledger}"
    print(report)
    rss, _fds = growth(before, during)
    assert rss <= 24, report
    if kind == "busd":
        assert ledger is not None and 0 < ledger["OutgoingBytes"][0] <= OUT_BYTES, report


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_a_monitor_that_stops_reading(kind: str) -> None:
    """#4: a (root) monitor stops reading while 32 MiB of signals pass: its copies stop at max_outgoing_bytes.

    Bound (busd): 4 MiB of copies plus slack, 16 MiB; unbounded it would be the whole 32 MiB. dbus-daemon
    1.14 does not cap what it queues toward a monitor (its growth is printed for comparison only).
    """
    with system_bus(kind, limits(max_outgoing_bytes=OUT_BYTES)) as bus, RawClient(bus.address) as sender:
        bystander = Bystander(bus)
        monitor = RawClient(bus.address)
        monitor.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert not monitor.call_driver("BecomeMonitor", "asu", [[], 0],
                                       interface="org.freedesktop.DBus.Monitoring").error_name
        before = Usage.of(bus.process.pid)
        for _ in range(128):  # 128 x 256 KiB, each followed by a round trip so the sender is never held back long
            sender.emit("/", HOSTILE, "Big", "ay", [bytes(256 * 1024)])
            sender.call_driver("GetId")
        during = Usage.of(bus.process.pid)
        monitor.close()
        summary = bystander.check()
    report = f"{kind}: before {before}, during {during}; {summary}"
    print(report)
    rss, _fds = growth(before, during)
    if kind == "busd":
        assert rss <= 16, report


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_complete_connections_each_holding_part_of_a_message(kind: str) -> None:
    """#1 after Hello: 10 connections of nobody each send 3 MiB of an 8 MiB signal and stop: 30 MiB held.

    busd, with max_incoming_bytes_per_user at 16 MiB: five connections fit, each later one is
    dropped as it passes the quota, and the daemon holds at most 16 MiB for the user. dbus-daemon
    has no per-user bound here (it holds all 30 MiB: printed for comparison).
    """
    connections, partial, quota = 10, 3 << 20, 16 << 20
    config = limits(max_incoming_bytes_per_user=quota) if kind == "busd" else ""
    with system_bus(kind, config) as bus:
        bystander = Bystander(bus)
        before = Usage.of(bus.process.pid)
        with attack(bus, hostile_peer.partial_messages, connections, partial) as attacker:
            holding = attacker.holding(timeout=3 * DEADLINE)
            header = int(holding.split("header=")[1])
            ledger = None
            if kind == "busd":
                wait_for_ledger(bus.address, lambda lines: lines["Connections"][0] == 5
                                and lines["IncomingBytes"][0] == 5 * (header + partial))
                ledger = ledger_of(bus.address, NOBODY)
            during = Usage.of(bus.process.pid)
            result = attacker.result(timeout=DEADLINE)
        summary = bystander.check()
    report = f"{kind}: before {before}, during {during}; {summary}; attacker {result}; {ledger}"
    print(report)
    rss, _fds = growth(before, during)
    if kind == "busd":
        assert int(result["closed_by_bus"]) + int(result["refused_sending"]) == connections - 5, report
        # The read that passes the quota is charged, then dropped with its connection: one read over at most.
        assert ledger is not None and ledger["IncomingBytes"][1] <= quota + READ_SIZE, report
        assert rss <= quota // (1 << 20) + 12, report


def wait_for_ledger(bus_address: str, condition, timeout: float = DEADLINE) -> None:
    """Poll busd's ledger of nobody until `condition(lines)` holds: the bus has read what the attacker sent."""
    deadline = time.monotonic() + timeout
    lines = None
    while time.monotonic() < deadline:
        lines = ledger_of(bus_address, NOBODY)
        if lines is not None and condition(lines):
            return
        time.sleep(0.05)
    raise AssertionError(f"busd's ledger of nobody never got there: {lines}")
