"""The SASL machines against real peers: ClientAuthenticator to dbus-daemon, real clients to ServerAuthenticator."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable

import pytest
from buses import SESSION_CONFIG, RunningBus, busd_available, start_bus
from dbus_next import Message, MessageType
from dbus_next._private.unmarshaller import Unmarshaller

from busd.transport.keyring import KeyringDirectory
from busd.wire.address import Address, parse_addresses
from busd.wire.sasl import ANONYMOUS, DBUS_COOKIE_SHA1, EXTERNAL
from busd.wire.sasl_client import ClientAuthenticator
from busd.wire.sasl_server import ServerAuthenticator

pytestmark = pytest.mark.live

GUID = "fedcba9876543210fedcba9876543210"
BUS_KINDS = ["busd", "dbus-daemon"]
SOCKET_TIMEOUT = 20  # seconds; only a safety net against hangs, never a timing assertion


def recv_or_fail(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise AssertionError("the peer closed the connection")
    return data


def read_message(sock: socket.socket, buffered: bytes) -> Message:
    """Read one whole D-Bus message (starting with `buffered`) and decode it with dbus-next."""
    data = bytearray(buffered)
    while len(data) < 16:
        data += recv_or_fail(sock)
    byte_order = "<" if data[0:1] == b"l" else ">"
    body_length, _serial, fields_length = struct.unpack(byte_order + "III", data[4:16])
    total = 16 + (fields_length + 7) // 8 * 8 + body_length
    while len(data) < total:
        data += recv_or_fail(sock)
    message = Unmarshaller(io.BytesIO(bytes(data[:total]))).unmarshall()
    assert message is not None
    return message


def connect(address_text: str) -> socket.socket:
    (address,) = [a for a in parse_addresses(address_text) if a.transport == "unix"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(SOCKET_TIMEOUT)
    sock.connect(address.params["path"])
    return sock


def authenticate(sock: socket.socket, client: ClientAuthenticator) -> None:
    sock.sendall(client.initial_bytes())
    while not client.done:
        reply = client.receive_data(recv_or_fail(sock))
        if reply:
            sock.sendall(reply)


def say_hello(sock: socket.socket, leftover: bytes) -> Message:
    hello = Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus", member="Hello", serial=1)
    sock.sendall(hello._marshall())
    return read_message(sock, leftover)


def test_client_authenticates_and_says_hello(any_bus) -> None:
    client = ClientAuthenticator()
    with connect(any_bus.address) as sock:
        authenticate(sock, client)
        reply = say_hello(sock, client.leftover)
    assert client.mechanism == EXTERNAL
    assert client.guid == parse_addresses(any_bus.address)[0].guid
    assert client.unix_fd  # both buses agree to pass fds over unix sockets
    assert reply.message_type == MessageType.METHOD_RETURN and reply.reply_serial == 1
    assert reply.body[0].startswith(":")


def start_or_skip(kind: str, config: str) -> RunningBus:
    if kind == "busd" and not busd_available():
        pytest.skip("the busd daemon is not built yet")
    return start_bus(kind, config_text=config)


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_client_falls_back_to_cookie_sha1(kind: str) -> None:
    # The bus keeps its cookies in ~/.dbus-keyrings of the user running it, which is us.
    config = SESSION_CONFIG.replace("<auth>EXTERNAL</auth>", "<auth>DBUS_COOKIE_SHA1</auth>")
    bus = start_or_skip(kind, config)
    try:
        client = ClientAuthenticator(mechanisms=(EXTERNAL, DBUS_COOKIE_SHA1), negotiate_unix_fd=False,
                                     keyring=KeyringDirectory(uid=os.getuid()))
        with connect(bus.address) as sock:
            authenticate(sock, client)
            reply = say_hello(sock, client.leftover)
    finally:
        bus.stop()
    assert client.mechanism == DBUS_COOKIE_SHA1 and client.problems == ["EXTERNAL: rejected"]
    assert reply.message_type == MessageType.METHOD_RETURN and reply.body[0].startswith(":")


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_client_anonymous(kind: str) -> None:
    config = SESSION_CONFIG.replace("<auth>EXTERNAL</auth>", "<auth>ANONYMOUS</auth><allow_anonymous/>")
    bus = start_or_skip(kind, config)
    try:
        client = ClientAuthenticator(mechanisms=(EXTERNAL, ANONYMOUS))
        with connect(bus.address) as sock:
            authenticate(sock, client)
            reply = say_hello(sock, client.leftover)
    finally:
        bus.stop()
    assert client.mechanism == ANONYMOUS
    assert reply.message_type == MessageType.METHOD_RETURN


# --- real clients against ServerAuthenticator ------------------------------------------------------------

HELLO_CALL = ["org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello"]

CLIENT_COMMANDS = {
    "dbus-send": lambda address: ["dbus-send", f"--bus={address}", "--print-reply",
                                  "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
                                  "org.freedesktop.DBus.Peer.Ping"],
    "gdbus": lambda address: ["gdbus", "call", "--address", address, "--dest", "org.freedesktop.DBus",
                              "--object-path", "/org/freedesktop/DBus",
                              "--method", "org.freedesktop.DBus.Peer.Ping"],
    "busctl": lambda address: ["busctl", f"--address={address}", "call", "org.freedesktop.DBus",
                               "/org/freedesktop/DBus", "org.freedesktop.DBus.Peer", "Ping"],
    "dbus-next": lambda address: [sys.executable, "-c",
                                  "import asyncio, sys\n"
                                  "from dbus_next.aio import MessageBus\n"
                                  "async def main():\n"
                                  "    await MessageBus(bus_address=sys.argv[1]).connect()\n"
                                  "asyncio.run(main())", address],
}


def serve_one_client(command: Callable[[str], list[str]], env: dict[str, str] | None = None,
                     **auth_options) -> tuple[ServerAuthenticator, Message]:
    """Start a client on a fresh socket, authenticate it with ServerAuthenticator, return (auth, first message)."""
    with tempfile.TemporaryDirectory(prefix="sasl-") as directory, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        path = os.path.join(directory, "sock")  # short: unix socket paths are limited to 107 bytes
        address = Address("unix", {"path": path, "guid": GUID}).format()
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(SOCKET_TIMEOUT)
        process = subprocess.Popen(command(address), env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(SOCKET_TIMEOUT)
                _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
                auth = ServerAuthenticator(GUID, peer_uid=uid, **auth_options)
                while not auth.done:
                    reply = auth.receive_data(recv_or_fail(conn))
                    if reply:
                        conn.sendall(reply)
                message = read_message(conn, auth.leftover)
        finally:
            process.kill()  # it waits for a Hello reply that this test does not send
            process.wait()
    return auth, message


@pytest.mark.parametrize("client", sorted(CLIENT_COMMANDS))
def test_real_clients_authenticate_with_external(client: str) -> None:
    auth, first = serve_one_client(CLIENT_COMMANDS[client])
    assert auth.mechanism == EXTERNAL and auth.uid == os.getuid()
    assert first.message_type == MessageType.METHOD_CALL
    assert [first.destination, first.path, first.interface, first.member] == HELLO_CALL


@pytest.mark.parametrize("client", ["dbus-send", "gdbus"])
def test_real_clients_authenticate_with_cookie_sha1(client: str) -> None:
    # The server must use the keyring the real client reads: ~/.dbus-keyrings.
    auth, first = serve_one_client(CLIENT_COMMANDS[client], mechanisms=(DBUS_COOKIE_SHA1,), keyring=KeyringDirectory())
    assert auth.mechanism == DBUS_COOKIE_SHA1 and auth.uid == os.geteuid()
    assert first.member == "Hello"


@pytest.mark.parametrize("client", ["dbus-send", "gdbus", "busctl"])
def test_real_clients_negotiate_unix_fds(client: str) -> None:
    agreed, _ = serve_one_client(CLIENT_COMMANDS[client])
    refused, first = serve_one_client(CLIENT_COMMANDS[client], unix_fd_possible=False)
    assert agreed.unix_fd and not refused.unix_fd
    assert first.member == "Hello"  # refusing fd passing does not stop the client


def test_gdbus_reads_a_keyring_written_by_the_server(tmp_path) -> None:
    # GLib finds ~/.dbus-keyrings through $HOME, so a fresh home proves the server's file format.
    home = tmp_path / "home"
    home.mkdir()
    auth, first = serve_one_client(CLIENT_COMMANDS["gdbus"], env={**os.environ, "HOME": str(home)},
                                   mechanisms=(DBUS_COOKIE_SHA1,),
                                   keyring=KeyringDirectory(str(home / ".dbus-keyrings")))
    assert auth.mechanism == DBUS_COOKIE_SHA1 and first.member == "Hello"
    assert len((home / ".dbus-keyrings" / "org_freedesktop_general").read_text().splitlines()) == 1
