"""Live tests of bad input: malformed messages, protocol violations and failed authentication.

A bad peer is dropped; everyone else carries on. busd says so in one log line
that names the peer and the reason.
"""

from __future__ import annotations

import os
import re
import socket
import struct

import pytest

from busclient import (  # noqa: F401  (fixtures)
    BUS_KINDS, DBUS, DBUS_PATH, TIMEOUT, RawClient, running_bus, WaitTimeout, busd_bug, busd_bugs, clients, shared_bus, start_bus_logged,
)
from busd.wire.marshal import Variant, marshal_body
from busd.wire.message import METHOD_CALL, SIGNAL, build_message

TO_DRIVER = [(6, Variant("s", DBUS)), (1, Variant("o", DBUS_PATH)), (2, Variant("s", DBUS)),
             (3, Variant("s", "GetId"))]


def hand_made(fields: list, body: bytes = b"", *, mtype: int = METHOD_CALL, serial: int = 7, version: int = 1,
              endian: bytes = b"l", body_len: int | None = None, padding: bytes = b"\0") -> bytes:
    """A message built field by field, so that any part of it can be wrong."""
    head = bytearray(marshal_body("yyyyuua(yv)", [ord("l"), mtype, 0, version,
                                                  len(body) if body_len is None else body_len, serial, fields]))
    head[0:1] = endian
    head += padding * (-len(head) % 8)
    return bytes(head) + body


MALFORMED = {
    "bad byte-order mark": hand_made(TO_DRIVER, endian=b"X"),
    "protocol version 2": hand_made(TO_DRIVER, version=2),
    "serial zero": hand_made(TO_DRIVER, serial=0),
    "message type zero": hand_made(TO_DRIVER, mtype=0),
    "PATH typed as a string": hand_made([(6, Variant("s", DBUS)), (1, Variant("s", DBUS_PATH)),
                                         (3, Variant("s", "GetId"))]),
    "a header field twice": hand_made(TO_DRIVER + [(3, Variant("s", "GetId"))]),
    "call without MEMBER": hand_made([(6, Variant("s", DBUS)), (1, Variant("o", DBUS_PATH))]),
    "signal without INTERFACE": hand_made([(1, Variant("o", "/a")), (3, Variant("s", "X"))], mtype=4),
    "reply serial zero": hand_made([(6, Variant("s", DBUS)), (5, Variant("u", 0))], mtype=2),
    "invalid destination": hand_made([(6, Variant("s", "no..pe")), (1, Variant("o", "/")),
                                      (3, Variant("s", "X"))]),
    "the reserved Local path": hand_made([(6, Variant("s", DBUS)), (1, Variant("o", "/org/freedesktop/DBus/Local")),
                                          (3, Variant("s", "GetId"))]),
    "non-zero header padding": hand_made(TO_DRIVER, padding=b"\1"),
    "a body without SIGNATURE": hand_made(TO_DRIVER, b"\0" * 8),
    "a SIGNATURE without body": hand_made(TO_DRIVER + [(8, Variant("g", "u"))]),
    "invalid UTF-8": hand_made(TO_DRIVER + [(8, Variant("g", "s"))], struct.pack("<I", 2) + b"\xff\xfe\0"),
    "boolean 2": hand_made(TO_DRIVER + [(8, Variant("g", "b"))], struct.pack("<I", 2)),
    "a 1 GiB body announced": hand_made(TO_DRIVER, body_len=1 << 30),
}


@pytest.mark.parametrize("what", MALFORMED)
def test_a_malformed_message_drops_only_its_sender(clients, what):
    bad, bystander = clients(), clients()
    bystander.add_match(f"type='signal',sender='{DBUS}',member='NameOwnerChanged',arg0='{bad.unique_name}'")
    bad.send_bytes(MALFORMED[what])
    bad.wait_closed()
    gone = bystander.wait_signal("NameOwnerChanged")
    assert gone.body == [bad.unique_name, bad.unique_name, ""]
    assert bystander.driver_value("GetNameOwner", "s", [bystander.unique_name]) == bystander.unique_name


@pytest.mark.parametrize("what, message", [
    ("an unknown message type", hand_made(TO_DRIVER, mtype=9)),
    ("an unknown header field", hand_made(TO_DRIVER + [(42, Variant("s", "ignored"))])),
])
def test_what_the_spec_says_to_ignore_is_no_error(clients, what, message):
    client = clients()
    client.send_bytes(message)
    assert client.driver_value("GetNameOwner", "s", [client.unique_name]) == client.unique_name


@pytest.mark.parametrize("first", ["signal", "call elsewhere"])
def test_a_message_before_hello_drops_the_connection(clients, first):
    early = clients(hello=False)
    if first == "signal":
        early.emit("/org/example", "org.example.Early", "Bird")
    else:
        early.call("org.example.Early", "/org/example", "org.example.Early", "Bird")
    early.wait_closed()
    assert clients().driver_value("GetId")


def test_a_driver_call_before_hello_is_refused(clients):
    early = clients(hello=False)
    reply = early.reply_to(early.call(DBUS, DBUS_PATH, DBUS, "GetId"))
    assert reply.error_name == "org.freedesktop.DBus.Error.AccessDenied"
    assert early.hello().startswith(":")


def _unix_path(address: str) -> str:
    return re.search(r"path=([^,;]+)", address).group(1)


def sasl(address: str, lines: list[bytes]) -> list[str]:
    """Send SASL lines one at a time, reading the answer to each; returns the answers, then "EOF" if dropped."""
    answers: list[str] = []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(_unix_path(address))
        pending = b""
        for line in lines:
            try:
                sock.sendall(line)
                data = sock.recv(4096)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if not data:
                return answers + ["EOF"]
            pending += data
            while b"\r\n" in pending:
                answer, pending = pending.split(b"\r\n", 1)
                answers.append(answer.decode().split(" ")[0])
    return answers


UID = str(os.getuid()).encode().hex().encode()
WRONG_UID = b"12345".hex().encode()


@pytest.mark.parametrize("lines, answers", [
    ([b"AUTH EXTERNAL " + UID + b"\r\n"], ["EOF"]),  # no NUL byte first
    ([b"\0AUTH EXTERNAL " + WRONG_UID + b"\r\n"], ["REJECTED"]),
    ([b"\0HELLO\r\n"], ["ERROR"]),
    ([b"\0DATA 00\r\n"], ["ERROR"]),
    ([b"\0AUTH EXTERNAL zz\r\n"], ["ERROR"]),
    ([b"\0AUTH NOSUCHMECHANISM\r\n"], ["REJECTED"]),
    ([b"\0NEGOTIATE_UNIX_FD\r\n"], ["ERROR"]),
    ([b"\0BEGIN\r\n"], ["EOF"]),
    ([b"\0AUTH EXTERNAL " + b"3" * 20000 + b"\r\n"], ["EOF"]),  # a line over 16 KiB
    ([b"\0AUTH EXTERNAL " + UID + b"\r\n", b"BEGIN\r\n" + build_message(
        SIGNAL, 1, path="/org/example", interface="org.example.Early", member="Bird")], ["OK", "EOF"]),
], ids=["no NUL", "wrong uid", "unknown command", "DATA first", "bad hex", "unknown mechanism",
        "NEGOTIATE_UNIX_FD first", "BEGIN first", "overlong line", "signal before Hello"])
def test_authentication_failures(shared_bus, lines, answers):
    assert sasl(shared_bus.address, lines) == answers
    with RawClient(shared_bus.address) as newcomer:  # the bus still takes new clients
        assert newcomer.unique_name.startswith(":")


def test_six_failed_attempts_end_the_conversation(shared_bus):
    answers = sasl(shared_bus.address, [b"\0AUTH EXTERNAL " + WRONG_UID + b"\r\n"]
                   + [b"AUTH EXTERNAL " + WRONG_UID + b"\r\n"] * 7)
    assert answers == ["REJECTED"] * 6 + ["EOF"]


# ---------------------------------------------------------------- busd's log


def test_busd_logs_one_line_per_dropped_peer_with_its_reason():
    from buses import busd_available
    if not busd_available():
        pytest.skip("the busd daemon is not built yet")
    bus, log = start_bus_logged("busd")
    try:
        bystander = RawClient(bus.address)
        malformed = RawClient(bus.address)
        malformed.send_bytes(MALFORMED["bad byte-order mark"])
        malformed.wait_closed()
        invalid = RawClient(bus.address)
        invalid.send_bytes(MALFORMED["invalid UTF-8"])
        invalid.wait_closed()
        early = RawClient(bus.address, hello=False)
        early.emit("/org/example", "org.example.Early", "Bird")
        early.wait_closed()
        assert sasl(bus.address, [b"AUTH EXTERNAL " + UID + b"\r\n"]) == ["EOF"]
        sentinel = RawClient(bus.address)
        sentinel.send_bytes(MALFORMED["serial zero"])
        sentinel.wait_closed()
        log.wait_for(rf"dropping connection {re.escape(sentinel.unique_name)} ")
        drops = [line for line in log.lines if "dropping connection" in line]
        pid = os.getpid()
        expected = [
            (malformed.unique_name, "invalid byte-order mark"),
            (invalid.unique_name, "UTF-8"),
            ("#", "before Hello"),
            ("#", "authentication failed"),
            (sentinel.unique_name, "serial"),
        ]
        assert len(drops) == len(expected), "\n".join(drops)
        for line, (who, reason) in zip(drops, expected):
            assert f"dropping connection {who}" in line and f"pid={pid}" in line and reason in line, line
        assert bystander.driver_value("GetNameOwner", "s", [bystander.unique_name]) == bystander.unique_name
        for client in (bystander, malformed, invalid, early, sentinel):
            client.close()
    finally:
        bus.stop()
        log.wait_eof()


# ---------------------------------------------------------------- connection limits


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_a_client_that_never_authenticates_is_dropped_at_auth_timeout(kind):
    with running_bus(kind, '<limit name="auth_timeout">300</limit>') as bus:
        with socket.socket(socket.AF_UNIX) as silent:
            silent.settimeout(TIMEOUT)
            silent.connect(_unix_path(bus.address))
            assert silent.recv(16) == b""  # the bus hung up on us
        with RawClient(bus.address) as newcomer:
            assert newcomer.unique_name.startswith(":")


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_max_completed_connections(kind):
    with running_bus(kind, '<limit name="max_completed_connections">2</limit>') as bus, \
            RawClient(bus.address) as first, RawClient(bus.address) as second:
        with RawClient(bus.address, hello=False) as third:
            reply = third.reply_to(third.call(DBUS, DBUS_PATH, DBUS, "Hello"))
            assert reply.error_name == "org.freedesktop.DBus.Error.LimitsExceeded"
        assert first.driver_value("GetNameOwner", "s", [second.unique_name]) == second.unique_name
