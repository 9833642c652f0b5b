"""The attacks of the hostile-peer suite, each run in a forked child that has become uid nobody.

tests/live/test_hostile.py forks, drops the child to `nobody` (setgroups, setgid,
setuid) and calls one of these functions there with a Channel to the test:
  holding ...    the attack is in place (its resources are held); the test measures
                 the daemon now, then closes the channel to let the attacker go
  result k=v...  what happened, said just before the child exits
Every wait ends on an event (a socket closing, a reply, the channel closing) or a deadline.
"""

from __future__ import annotations

import os
import select
import socket
import time

from busclient import BusClosed, RawClient, WaitTimeout, _connect
from busd.wire.message import METHOD_CALL, SIGNAL, build_message

DEADLINE = 20.0  # seconds any one attack may run before it gives up


class Channel:
    """The attacker's end of its two pipes to the test: lines out, and 'let go' (EOF) in."""

    def __init__(self, lines_fd: int, release_fd: int):
        self.lines_fd = lines_fd
        self.release_fd = release_fd

    def say(self, line: str) -> None:
        os.write(self.lines_fd, line.encode() + b"\n")

    def wait_release(self) -> None:
        while os.read(self.release_fd, 4096):
            pass

    def hold(self, note: str = "") -> None:
        """Report that the attack is in place and keep everything open until the test lets us go."""
        self.say(f"holding {note}".rstrip())
        self.wait_release()


def _sendable(sock: socket.socket, data: bytes) -> int | None:
    """Send what the kernel takes now; None when the bus has closed the connection."""
    try:
        return sock.send(data, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return 0
    except (BrokenPipeError, ConnectionResetError):
        return None


def sasl_junk(channel: Channel, address: str, connections: int, bytes_each: int) -> None:
    """#5: unauthenticated connections sending junk SASL lines (each answered with an ERROR), never reading.

    A connection ends as 'dropped' (the bus closed it), 'stalled' (the bus stopped
    reading it: the kernel's buffers are the bound) or 'sent' (it sent everything
    and the bus kept it).
    """
    line = b"x\r\n"  # 3 bytes, answered by 'ERROR "Unknown command"\r\n' (25 bytes)
    chunk = line * 2048
    budget = bytes_each
    socks = [_connect(address) for _ in range(connections)]
    for sock in socks:
        sock.sendall(b"\0")
    sent = {sock: 0 for sock in socks}
    open_ = set(socks)
    dropped = 0
    deadline = time.monotonic() + DEADLINE
    while open_ and time.monotonic() < deadline:
        _, writable, _ = select.select([], list(open_), [], 1.0)
        if not writable:
            break  # the bus reads none of them any more: every one is stalled
        for sock in writable:
            n = _sendable(sock, chunk)
            if n is None:
                dropped += 1
                open_.discard(sock)
            else:
                sent[sock] += n
                if sent[sock] >= budget:
                    open_.discard(sock)
    stalled = sum(1 for sock in open_ if sent[sock] < budget)
    channel.hold()
    channel.say(f"result dropped={dropped} stalled={stalled} connections={len(socks)} "
        f"max_sent={max(sent.values())}")
    for sock in socks:
        sock.close()


def long_paths(channel: Channel, address: str, count: int, path_bytes: int) -> None:
    """#3: signals, each with a distinct long object path; then leave the bus."""
    segment = (path_bytes - 16) // 2
    with RawClient(address) as client:
        for i in range(count):
            path = f"/p{i:08d}/" + "a" * segment + "/" + "b" * segment
            client.send_bytes(build_message(SIGNAL, client.next_serial(), path=path,
                                            interface="org.example.Hostile", member="Junk"))
        client.driver_value("GetId")  # answered after the bus has read and routed every signal
    channel.say(f"result name={client.unique_name}")


def groups_denied(channel: Channel, address: str) -> None:
    """#8: call ListNames, which a <policy group=...> rule denies to one of our (many) groups."""
    with RawClient(address) as client:
        reply = client.call_driver("ListNames")
    channel.say(f"result groups={len(os.getgroups())} reply={reply.error_name or 'ok'}")


def no_hello(channel: Channel, address: str, connections: int, partial_bytes: int) -> None:
    """#1: authenticate, never say Hello, and leave an unfinished large message in the bus's buffers."""
    header = build_message(METHOD_CALL, 1, path="/", interface="org.example.Hostile", member="Big",
                           destination="org.freedesktop.DBus", signature="ay", body=[b""])
    # Claim an 8 MiB array body but send only `partial_bytes` of it.
    body_length = 8 << 20
    fixed = bytearray(header[:-4])
    fixed[4:8] = (body_length + 4).to_bytes(4, "little")
    start = bytes(fixed) + body_length.to_bytes(4, "little")
    partial = b"\0" * partial_bytes
    clients = []
    refused = 0
    for _ in range(connections):
        try:
            client = RawClient(address, hello=False)
        except (BusClosed, WaitTimeout, OSError):
            refused += 1  # not accepted (max_incomplete_connections) or not answered
            continue
        client.send_bytes(start + partial)
        clients.append(client)
    channel.say(f"holding accepted={len(clients)} refused={refused}")
    closed = 0
    for client in clients:
        try:
            client.wait_closed(timeout=DEADLINE)
            closed += 1
        except WaitTimeout:
            pass
        client.close()
    channel.wait_release()
    channel.say(f"result accepted={len(clients)} refused={refused} closed_by_bus={closed}")


def partial_messages(channel: Channel, address: str, connections: int, partial_bytes: int) -> None:
    """#1 after Hello: complete connections that each leave part of a large message in the bus's buffers.

    Each connection says Hello, then sends the start of a signal claiming an 8 MiB body and
    `partial_bytes` of it, and never the rest. Once the test lets go, a connection the bus
    closed reads EOF at once; one it kept has nothing to read.
    """
    header = build_message(SIGNAL, 2, path="/", interface="org.example.Hostile", member="Big",
                           signature="ay", body=[b""])
    body_length = 8 << 20
    fixed = bytearray(header[:-4])
    fixed[4:8] = (body_length + 4).to_bytes(4, "little")
    start = bytes(fixed) + body_length.to_bytes(4, "little")
    clients = [RawClient(address) for _ in range(connections)]
    refused_sending = 0
    sending = []  # the connections the bus did not close while they sent
    for client in clients:
        data = memoryview(start + b"\0" * partial_bytes)
        deadline = time.monotonic() + DEADLINE
        while data and time.monotonic() < deadline:
            sent = _sendable(client.sock, data)
            if sent is None:  # the bus closed it mid-send: it is over its user's quota
                refused_sending += 1
                break
            data = data[sent:]
            if data and not sent:
                select.select([], [client.sock], [], 0.1)
        else:
            sending.append(client)
    channel.hold(f"sent={connections} header={len(start)}")
    closed = 0
    for client in sending:
        readable, _, _ = select.select([client.sock], [], [], 0)
        if readable:
            try:
                closed += client.sock.recv(1, socket.MSG_DONTWAIT) == b""
            except (ConnectionResetError, BlockingIOError):
                closed += 1
    for client in clients:
        client.close()
    channel.say(f"result closed_by_bus={closed} refused_sending={refused_sending}")
