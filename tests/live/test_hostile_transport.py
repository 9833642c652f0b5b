"""Hostile-peer suite, transport (issue 13): lookups that could freeze the loop, reads that go wrong, TCP identities.

Uses tests/live/test_hostile.py's harness: a bus with the stock system policy,
a Bystander (root) that keeps calling the driver and must be answered within
LIVENESS, and attackers forked as uid nobody. The attack functions (what the
child runs) are in this file.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import time
from typing import Iterator

import pytest
from test_hostile import LIVENESS, SYSTEM_CONFIG, Bystander, Usage, attack, growth, system_bus

import hostile_peer
from busclient import (BUS_KINDS, TIMEOUT, BusClosed, RawClient, WaitTimeout, busd_available, running_bus,
                       start_bus_logged)
from busd.transport.keyring import CookieKeyring
from busd.wire.message import SIGNAL, build_message
from busd.wire.sasl import DEFAULT_COOKIE_CONTEXT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacker runs as uid nobody: needs root")


# ---------------------------------------------------------------- attacks (run as uid nobody)


def junk_after_messages(channel: hostile_peer.Channel, address: str, target: str, count: int) -> None:
    """In one write: `count` signals to `target`, then a header that is not D-Bus. Then see whether the bus drops us."""
    with RawClient(address) as client:
        batch = b"".join(build_message(SIGNAL, client.next_serial(), path="/hostile", interface="org.example.Hostile",
                                       member="BeforeJunk", destination=target, signature="u", body=[i])
                         for i in range(count))
        junk = b"X" + bytes(15)  # no endianness byte is 'X': a protocol error at the first byte
        client.send_bytes(batch + junk)
        try:
            client.wait_closed(timeout=hostile_peer.DEADLINE)
            closed = 1
        except WaitTimeout:
            closed = 0
    channel.say(f"result closed_by_bus={closed} name={client.unique_name}")


# ---------------------------------------------------------------- an exception or a protocol error in one read


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_a_protocol_error_after_messages_in_the_same_read_drops_only_the_sender(kind: str) -> None:
    """What a peer sent before its protocol error, in the same read, still reaches the others; the peer is dropped.

    busd routes a read's messages, then writes every queue they filled once the
    read is handled: the drop of the offender must not skip that write (nor an
    unexpected exception while handling it: see tests/unit/test_transport_connection.py).
    """
    count = 50
    with system_bus(kind) as bus, RawClient(bus.address) as target:
        bystander = Bystander(bus)
        before = Usage.of(bus.process.pid)
        with attack(bus, junk_after_messages, target.unique_name, count) as attacker:
            result = attacker.result(timeout=60)
        received = [target.wait_signal("BeforeJunk").body[0] for _ in range(count)]
        after = Usage.of(bus.process.pid)
        summary = bystander.check()
    report = f"{kind}: before {before}, after {after}; {summary}; attacker {result}"
    assert result["closed_by_bus"] == "1", report
    assert received == list(range(count)), report
    _rss, fds = growth(before, after)
    assert fds <= 0, report


# ---------------------------------------------------------------- the cookie keyring's lock


@contextlib.contextmanager
def keyring_lock_held() -> Iterator[CookieKeyring]:
    """Hold the lock of the bus user's (root's) default cookie keyring, with no cookie recent enough to reuse.

    A server that must challenge a DBUS_COOKIE_SHA1 client then has to add a
    cookie, under the lock: dbus-daemon and busd retry for 32 x 250 ms before
    taking the lock as stale. The cookies already there stay valid (only dated
    back past the 'recent' threshold), so other clients of the keyring still work.
    """
    keyring = CookieKeyring(os.path.join(pwd.getpwuid(os.geteuid()).pw_dir, ".dbus-keyrings"),
                            DEFAULT_COOKIE_CONTEXT)
    os.makedirs(keyring.directory, mode=0o700, exist_ok=True)
    old_enough = int(time.time()) - keyring.NEW_COOKIE_AFTER - 1
    lock = os.open(keyring.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(lock)
    try:
        lines = []
        with contextlib.suppress(FileNotFoundError), open(keyring.path) as current:
            for line in current:
                fields = line.split()
                if len(fields) == 3 and fields[1].isdigit():
                    fields[1] = str(min(int(fields[1]), old_enough))
                    lines.append(" ".join(fields) + "\n")
        temporary = keyring.path + ".test-tmp"
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as rewritten:
            rewritten.writelines(lines)
        os.replace(temporary, keyring.path)
        yield keyring
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(keyring.lock_path)


def unix_path(address: str) -> str:
    return next(part for entry in address.split(";") for part in entry.split(",")
                if part.startswith("unix:path=")).split("=", 1)[1]


@pytest.mark.parametrize("kind", [
    "busd",
    pytest.param("dbus-daemon", marks=pytest.mark.xfail(
        strict=True, reason="dbus-daemon waits for the keyring lock on its main loop: every client stalls")),
])
def test_a_cookie_client_waiting_for_the_keyring_lock_holds_back_no_one(kind: str) -> None:
    """While the keyring lock is held by someone else, a DBUS_COOKIE_SHA1 client waits; the bus serves everyone else.

    The bystander must be answered within LIVENESS throughout (busd waits for
    the lock in a thread); the cookie client gets its challenge once the lock is released.
    """
    with system_bus(kind, "<auth>DBUS_COOKIE_SHA1</auth>") as bus, keyring_lock_held() as keyring:
        bystander = Bystander(bus)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as cookie_client:
            cookie_client.connect(unix_path(bus.address))
            cookie_client.sendall(b"\0AUTH DBUS_COOKIE_SHA1 " + str(os.geteuid()).encode().hex().encode() + b"\r\n")
            # The bus keeps answering the bystander for a good while (at least 0.3 s of calls) ...
            wanted = bystander.calls + int(0.3 / Bystander.PACE)
            deadline = time.monotonic() + 4 * LIVENESS
            while bystander.calls < wanted and bystander.failure is None and time.monotonic() < deadline:
                time.sleep(Bystander.PACE)
            # ... and the cookie client is still waiting for its challenge, the lock being ours.
            cookie_client.setblocking(False)
            with pytest.raises(BlockingIOError):
                cookie_client.recv(4096)
            summary = bystander.check()
            os.unlink(keyring.lock_path)  # let the bus take the lock: the challenge follows
            cookie_client.settimeout(TIMEOUT + 8)  # the bus may be between two of its 250 ms retries
            answer = cookie_client.recv(4096)
    assert answer.startswith(b"DATA "), (answer, summary)


# ---------------------------------------------------------------- TCP peers authenticated by cookie


TCP_COOKIE = """<listen>tcp:host=127.0.0.1,port=0</listen>
<auth>DBUS_COOKIE_SHA1</auth>
<policy user="root"><allow own="org.example.TcpRoot"/></policy>
<policy group="root"><allow own="org.example.TcpRootGroup"/></policy>
<limit name="max_connections_per_user">2</limit>"""


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_a_tcp_peer_authenticated_by_cookie_is_that_user(kind: str) -> None:
    """Over TCP the kernel says nothing; DBUS_COOKIE_SHA1 authenticated the bus's user (root here).

    As dbus-daemon: GetConnectionUnixUser answers that uid, <policy user="root">
    rules apply (the default context denies owning any name), so do <policy
    group> rules for the groups the user database gives that uid (the kernel
    gives none over TCP), and the connection counts against
    max_connections_per_user for that uid.
    """
    with running_bus(kind, TCP_COOKIE, config_text=SYSTEM_CONFIG) as bus:
        tcp = next(entry for entry in bus.address.split(";") if entry.startswith("tcp:"))
        with RawClient(tcp, mechanisms=("DBUS_COOKIE_SHA1",)) as first, \
                RawClient(tcp, mechanisms=("DBUS_COOKIE_SHA1",)) as second:
            uid = first.driver_value("GetConnectionUnixUser", "s", [first.unique_name])
            credentials = first.driver_value("GetConnectionCredentials", "s", [second.unique_name])
            owned = first.request_name("org.example.TcpRoot")
            owned_by_group = second.request_name("org.example.TcpRootGroup")
            with pytest.raises(Exception) as refused:  # the third connection of uid 0
                RawClient(tcp, mechanisms=("DBUS_COOKIE_SHA1",)).close()
    assert uid == os.geteuid() == 0
    assert credentials["UnixUserID"].value == 0
    assert owned == owned_by_group == 1  # DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER
    assert "LimitsExceeded" in str(refused.value) or isinstance(refused.value, BusClosed), refused.value


# ---------------------------------------------------------------- out of file descriptors


def test_out_of_fds_the_bus_pauses_accepting_and_serves_everyone_once_it_can() -> None:
    """A flood of connections that takes the daemon to its fd limit (RLIMIT_NOFILE, here lowered to a few fds
    above what it holds): accept() fails with EMFILE, busd stops accepting for a second with one log line
    rather than spin on a listener that stays readable, keeps serving who is connected, and takes every
    connection that waited in the kernel's queue once it has fds again."""
    import resource

    if not busd_available():
        pytest.skip("the busd daemon is not built yet")
    bus, log = start_bus_logged("busd")
    try:
        with RawClient(bus.address) as bystander:
            pid = bus.process.pid
            soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            held = len(os.listdir(f"/proc/{pid}/fd"))
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (held + 3, hard))
            with contextlib.ExitStack() as stack:
                flood = [stack.enter_context(RawClient(bus.address, authenticate=False)) for _ in range(8)]
                log.wait_for(r"accept paused on unix:.* for 1s: Too many open files")
                bystander.sync()  # who is connected is served meanwhile
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
                for client in flood:  # each was accepted at once or waited in the queue: all get through
                    client.authenticate()
                    client.hello()
            bystander.sync()
        assert bus.process.poll() is None
    finally:
        bus.stop()
