"""Helpers for the SASL machine tests: play scripted lines to a machine, shuttle bytes between two."""

from __future__ import annotations

import os
import re

from busd.transport.keyring import KeyringDirectory
from busd.wire.sasl import DBUS_COOKIE_SHA1
from busd.wire.sasl_client import ClientAuthenticator
from busd.wire.sasl_server import ServerAuthenticator

GUID = "0123456789abcdef0123456789abcdef"
OK = f"OK {GUID}\r\n".encode()
ME = os.geteuid()
# The first bytes of a Hello call, standing in for "the first D-Bus message after BEGIN".
FIRST_MESSAGE = b"l\x01\x00\x01\x00\x00\x00\x00\x01\x00\x00\x00m\x00\x00\x00\x01\x01o\x00\x15\x00\x00\x00"


def hexed(text: str | int) -> bytes:
    return str(text).encode().hex().encode()


def make_server(**options) -> ServerAuthenticator:
    options.setdefault("peer_uid", 1000)
    return ServerAuthenticator(GUID, **options)


def play(auth: ServerAuthenticator | ClientAuthenticator, script: list[tuple[bytes, bytes]]) -> None:
    """Feed each chunk and check the reply to it."""
    for sent, expected in script:
        assert auth.receive_data(sent) == expected, f"after {sent!r}"


def handshake(client: ClientAuthenticator, server: ServerAuthenticator) -> None:
    """Shuttle bytes between the two machines until the server has seen BEGIN."""
    to_server = client.initial_bytes()
    for _ in range(20):
        to_client = server.receive_data(to_server)
        if server.done:
            assert client.done
            return
        to_server = client.receive_data(to_client)
    raise AssertionError("the handshake did not finish in 20 round trips")


def keyring_lines(directory) -> list[str]:
    return (directory / "org_freedesktop_general").read_text().splitlines()


def cookie_server(keyring_dir, **options) -> ServerAuthenticator:
    return make_server(mechanisms=(DBUS_COOKIE_SHA1,), keyring=KeyringDirectory(str(keyring_dir)), **options)


def start_cookie(server: ServerAuthenticator, identity: str | int = ME) -> tuple[str, int, str]:
    """Send AUTH DBUS_COOKIE_SHA1 and decode the server's 'context id challenge'."""
    reply = server.receive_data(b"\0AUTH DBUS_COOKIE_SHA1 " + hexed(identity) + b"\r\n")
    match = re.fullmatch(rb"DATA ([0-9a-f]+)\r\n", reply)
    assert match, reply
    context, cookie_id, challenge = bytes.fromhex(match.group(1).decode()).decode().split(" ")
    return context, int(cookie_id), challenge


def secret_of(keyring_dir, cookie_id: int) -> str:
    for line in keyring_lines(keyring_dir):
        number, _, secret = line.split(" ")
        if int(number) == cookie_id:
            return secret
    raise AssertionError(f"cookie {cookie_id} is not in the keyring")
