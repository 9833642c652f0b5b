"""Both twins of the stream's read and write, over real socketpairs: what arrives is exactly what was queued.

The compiled twin reads and writes with its own recvmsg()/sendmsg() calls (stream.pxd), the pure
one through the socket module. Each test runs a Stream of either twin against a plain socket and
checks the bytes and fds on the far side: a queue that fills the socket and is written in pieces
(entries cut mid-buffer, memoryview bodies), fds leaving with their message's first byte, fds
arriving with the message that claims them, the end of the stream, a write to a closed peer.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
from typing import Any

import pytest

import busd.transport.stream as compiled_stream
from busd.wire.message import METHOD_CALL, build_message
from twins import compiled_modules, twin

TWINS = [pytest.param(compiled_stream, id="compiled" if compiled_modules() else "pure")]
if compiled_modules():
    TWINS.append(pytest.param(twin("busd.transport.stream"), id="pure"))

WAIT = 10  # seconds; a safety net against hangs, never a timing assertion


def recording_stream(module: Any, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> Any:
    """A stream of `module`'s twin that records what it frames and why it was dropped."""

    class Recording(module.Stream):
        def __init__(self) -> None:
            super().__init__(loop, lambda stream: loop.call_soon(stream.flush))
            self.messages: list[tuple[bytes, Any]] = []
            self.dropped: list[str] = []
            self.flushes = 0

        def message_received(self, message: bytes, h: Any, fds: list[int] | None) -> None:
            self.messages.append((message, fds))

        def flushed(self) -> None:
            self.flushes += 1

        def drop(self, reason: str, level: int = 0) -> None:
            self.dropped.append(reason)
            self.shut()

    stream = Recording()
    sock.setblocking(False)
    stream.attach(sock)
    return stream


def run_until(loop: asyncio.AbstractEventLoop, done: Any) -> None:
    async def wait() -> None:
        while not done():
            await asyncio.sleep(0)
    loop.run_until_complete(asyncio.wait_for(wait(), WAIT))


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.parametrize("module", TWINS)
def test_a_queue_larger_than_the_socket_arrives_whole_and_in_order(module: Any, loop) -> None:
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # a few writes' worth: it fills at once
    stream = recording_stream(module, loop, ours)
    expected = bytearray()
    for i in range(300):
        head = bytes([i % 251]) * (17 + i % 40)
        # Bodies as the router queues them: a view into a larger buffer, or nothing.
        body = memoryview(os.urandom(5000))[i % 7:] if i % 3 == 0 else b""
        stream.queue(head, body)
        expected += head + body
    stream.flush()
    assert stream.has_output()  # the socket filled: the rest waits for the loop's writer
    received = bytearray()

    def read_some() -> bool:
        try:
            received.extend(theirs.recv(65536))
        except BlockingIOError:
            pass
        return len(received) >= len(expected)

    theirs.setblocking(False)
    run_until(loop, read_some)
    run_until(loop, lambda: not stream.has_output())
    assert bytes(received) == bytes(expected)
    assert stream.out_bytes == 0 and stream.bytes_written == len(expected)
    assert not stream.dropped
    stream.shut()
    theirs.close()


@pytest.mark.parametrize("module", TWINS)
def test_queued_fds_leave_with_the_first_byte_of_their_message(module: Any, loop) -> None:
    ours, theirs = socket.socketpair()
    stream = recording_stream(module, loop, ours)
    stream.can_pass_fds = True
    read_end, write_end = os.pipe()
    stream.queue(b"A" * 24, b"")
    stream.queue(b"B" * 16, memoryview(b"b" * 8), [read_end])  # the stream owns it now, and closes it once sent
    stream.queue(b"C" * 8, b"")
    stream.flush()
    assert not stream.has_output()
    with pytest.raises(OSError):
        os.fstat(read_end)  # sent: closed on our side (before anything can reuse its number)
    first = theirs.recv(24)
    data, ancdata, _, _ = theirs.recvmsg(1024, socket.CMSG_SPACE(16))
    assert first == b"A" * 24 and data == b"B" * 16 + b"b" * 8 + b"C" * 8
    (level, kind, cdata), = ancdata
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    received_fd = array.array("i", cdata)[0]
    os.write(write_end, b"through the passed fd")
    assert os.read(received_fd, 64) == b"through the passed fd"
    for fd in (received_fd, write_end):
        os.close(fd)
    stream.shut()
    theirs.close()


@pytest.mark.parametrize("module", TWINS)
def test_fds_that_arrive_go_to_the_message_that_claims_them(module: Any, loop) -> None:
    ours, theirs = socket.socketpair()
    stream = recording_stream(module, loop, ours)
    stream.can_pass_fds = True
    plain = build_message(METHOD_CALL, 1, path="/a", member="Plain", destination=":1.1")
    carrying = build_message(METHOD_CALL, 2, path="/a", member="Carry", destination=":1.1", unix_fds=2)
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    theirs.sendmsg([plain + carrying], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r1, r2]))])
    os.close(r1)
    os.close(r2)
    stream.start_reading()
    run_until(loop, lambda: len(stream.messages) == 2)
    (first, none), (second, fds) = stream.messages
    assert first == plain and none is None and second == carrying and len(fds) == 2
    os.write(w1, b"1")
    os.write(w2, b"2")
    assert [os.read(fd, 1) for fd in fds] == [b"1", b"2"]
    for fd in (*fds, w1, w2):
        os.close(fd)
    assert stream.in_fds == 0 and not stream.dropped
    stream.shut()
    theirs.close()


@pytest.mark.parametrize("module", TWINS)
def test_fds_beyond_the_incoming_limit_drop_the_stream(module: Any, loop) -> None:
    ours, theirs = socket.socketpair()
    stream = recording_stream(module, loop, ours)
    stream.can_pass_fds = True
    stream.max_incoming_unix_fds = 2
    pipes = [os.pipe() for _ in range(3)]
    theirs.sendmsg([b"l"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r for r, _ in pipes]))])
    stream.start_reading()
    run_until(loop, lambda: stream.dropped)
    assert stream.dropped == ["sent 3 unix fds not yet claimed by messages: max_incoming_unix_fds=2"]
    for r, w in pipes:
        os.close(r)
        os.close(w)
    theirs.close()


@pytest.mark.parametrize("module", TWINS)
def test_the_end_of_the_stream_and_a_closed_peer_drop_it_with_their_reason(module: Any, loop) -> None:
    ours, theirs = socket.socketpair()
    stream = recording_stream(module, loop, ours)
    stream.start_reading()
    theirs.close()
    run_until(loop, lambda: stream.dropped)
    assert stream.dropped == ["peer closed the connection"]

    ours, theirs = socket.socketpair()
    stream = recording_stream(module, loop, ours)
    theirs.close()
    stream.queue(b"x" * 64, b"")
    stream.flush()
    assert len(stream.dropped) == 1 and stream.dropped[0].startswith("write failed: ")
    assert "Broken pipe" in stream.dropped[0]
