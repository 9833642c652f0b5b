"""One stream transport: a non-blocking socket read, framed and written the same way on every side.

Theory. The loop never awaits a socket: a reader callback reads as much as the
kernel has (with SCM_RIGHTS fds once fd passing is agreed), frames every
complete message with busd.wire and hands each to message_received() in
arrival order. Writes are queued and flushed once per loop turn, through the
schedule_flush callable, with one sendmsg() carrying many messages
(scatter/gather), so a burst costs one system call per peer, not one per
message. Unix fds travel in the sendmsg() that starts with their message's
first byte, as the specification requires; every fd a stream holds is closed
once it has been sent or its message dropped.

Input is held (the reader removed) while any reason to hold it remains: the
bus's back-pressure (a recipient of this peer is full) and a side's work in a
thread (a lookup, or the check of one large body) are separate reasons, so
neither resumes a peer the other still holds. A side that checks large bodies
off the loop (large_message_size) gets each such message framed without its
body check, with its fds claimed, in check_body_later(); everything after it
waits unframed, counted in in_bytes, until body_checked() delivers it. A body
whose check takes a few steps at any size (fixed-size values and arrays of
them: a byte array) is checked in place instead, sparing the hand-off.

The server side (busd.transport.connection.Connection) and the bridge's upstream link
(busd.bridge.link.UpstreamLink) are both Streams; each adds only its SASL side
and what it does with a message.
"""

from __future__ import annotations

import array
import asyncio
import logging
import mmap
import os
import socket
import threading
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any, Callable

from ..bus.ports import SharedFds
from ..wire.checker import checked_in_constant_steps
from ..wire.errors import ProtocolError
from ..wire.message import FIXED_HEADER_SIZE, MAX_MESSAGE_SIZE, Header, check_message_body, frame_size, parse_header

READ_SIZE = 262144
FRAME_PROGRESS = b""  # what data_received() is handed when a read went into the frame buffer


class _ReadBuffer(threading.local):
    """One READ_SIZE buffer per thread that every stream reads into, copying out only what arrived.

    Reading into a fresh READ_SIZE bytes object and shrinking it, as recv() does, leaves
    256 KiB holes in glibc's heap once its mmap threshold has risen past that size: busd's
    RSS crept up under churn though Python's own heap stayed flat (benchmarks/soak.py).
    """

    def __init__(self) -> None:
        self.view = memoryview(bytearray(READ_SIZE))


_PURE = not __file__.endswith(tuple(EXTENSION_SUFFIXES))  # the pure twin (from .py or .pyc), not the compiled build
_read_buffer = _ReadBuffer() if _PURE else None  # (the compiled twin reads into a C buffer per thread: stream.pxd)
MAX_FDS_PER_READ = 253  # the kernel's SCM_MAX_FD (stream.pxd's BUSD_MAX_FDS)
_ANC_SIZE = socket.CMSG_SPACE(MAX_FDS_PER_READ * 4)
_IOV_MAX = 512  # (stream.pxd's BUSD_IOV_MAX)
UNLIMITED_FDS = 1 << 62
NEVER = 1 << 62  # a large_message_size no message reaches: every body is checked inline

# Why a stream's input is held; reading resumes once none remains.
HELD_BY_RECIPIENTS = 1  # back-pressure: a recipient of this peer's messages is full
HELD_FOR_THREAD = 2  # a side's work in a thread (a lookup, a large body's check) must end first


def close_fds(fds: Any) -> None:
    """Close a message's fds once sent or dropped; of a broadcast's shared fds, release this queue's share."""
    if type(fds) is SharedFds:
        fds.release()
        return
    for fd in fds or ():
        try:
            os.close(fd)
        except OSError:
            pass


class Stream:
    """A framed D-Bus message stream over one non-blocking socket; subclasses say what a message means."""

    # Overridden per side: the server's follow the bus's (reloadable) limits.
    max_message_size = MAX_MESSAGE_SIZE
    max_message_unix_fds = 1024
    max_incoming_unix_fds = UNLIMITED_FDS
    # Messages over this size are handed to check_body_later() instead of being checked inline.
    large_message_size = NEVER

    def __init__(self, loop: asyncio.AbstractEventLoop, schedule_flush: Callable[[Any], None]):
        self.loop = loop
        # Writes us at the end of the read in progress, or next turn (the bus's takes the PeerLink a side is).
        self.schedule_flush = schedule_flush
        self.sock: socket.socket | None = None
        self.fileno = -1
        self.can_pass_fds = False  # agreed during authentication
        self.closed = False
        self.reading = False
        self._holds = 0  # HELD_* reasons, or-ed
        self._rbuf = bytearray()
        # The large message whose body a thread checks, with its claimed fds; input after it waits in _rbuf.
        self.checking: tuple[bytes, Header, list[int] | None] | None = None
        self._received_fds: list[int] = []
        # What is left to write, in order: buffers, or (buffer, fds) for one carrying fds. Plain lists:
        # an idle connection's empty deque kept a 512-byte block, two of them a third of its memory.
        # Written entries are cleared and cut off in bulk (_out_start), so a long queue is never
        # shifted once per write.
        self._out: list[Any] = []
        self._out_start = 0
        self.out_bytes = 0
        self.out_fds = 0
        self.peak_out_bytes = 0
        self.in_bytes = 0
        self.peak_in_bytes = 0
        # Totals since the link opened, read by Debug.Stats and the metrics (never reset): messages by
        # type (index: type & 7; the receiving side counts `received`) and bytes on the socket.
        self.received = [0] * 8
        self.sent = [0] * 8
        self.bytes_read = self.bytes_written = 0
        self._writing = False
        self._flush_scheduled = False
        # A message larger than a read, being read straight into a buffer of its size (_read_into_frame).
        self._frame_buffer: Any = None
        self._frame_view: memoryview | None = None  # writable, over all of _frame_buffer
        self._frame_filled = 0

    def attach(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fileno = sock.fileno()

    # ------------------------------------------------------------ what a side adds

    def data_received(self, data: bytes) -> None:
        """Bytes from one read: framed by default (the server side feeds its handshake first)."""
        self.feed(data)

    def message_received(self, message: bytes, h: Header, fds: list[int] | None) -> None:
        raise NotImplementedError

    def check_body_later(self, message: bytes, h: Header) -> None:
        """Check the body of `message` (self.checking) off the loop, holding input meanwhile, then call
        body_checked(); only a side that lowers large_message_size is asked."""
        raise NotImplementedError

    def flushed(self) -> None:
        """Some of the queue was written (or none could be)."""

    def drop(self, reason: str, level: int = logging.WARNING) -> None:
        """Close the stream for `reason`: a side logs it, calls shut() and tells its owner."""
        raise NotImplementedError

    # ------------------------------------------------------------ reading

    def start_reading(self) -> None:
        self.reading = True
        self.loop.add_reader(self.fileno, self._on_readable)

    def hold_input(self, reason: int = HELD_BY_RECIPIENTS) -> None:
        """Read nothing more until release_input(reason), and until no other reason holds us either."""
        self._holds |= reason
        if self.reading and not self.closed:
            self.reading = False
            self.loop.remove_reader(self.fileno)

    def release_input(self, reason: int = HELD_BY_RECIPIENTS) -> None:
        holds = self._holds = self._holds & ~reason
        if not holds and not self.reading and not self.closed:
            self.reading = True
            self.loop.add_reader(self.fileno, self._on_readable)

    def _on_readable(self) -> None:
        if self._frame_buffer is not None:
            self._read_into_frame()
            return
        try:
            if not _PURE:
                # One C call (stream.pxd): the same recvmsg, into this thread's buffer, fds onto _received_fds.
                data = read_once(self.fileno, self._received_fds if self.can_pass_fds else None)  # noqa: F821
                if data is None:
                    return
                if self.can_pass_fds and not self._fds_within_limits(data is False):
                    return
            elif self.can_pass_fds:
                view = _read_buffer.view
                size, ancdata, msg_flags, _ = self.sock.recvmsg_into((view,), _ANC_SIZE, socket.MSG_CMSG_CLOEXEC)
                data = view[:size].tobytes()
                if not self._take_fds(ancdata, msg_flags):
                    return
            else:
                view = _read_buffer.view
                data = view[:self.sock.recv_into(view)].tobytes()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.drop(f"read failed: {exc.strerror or exc}", level=logging.DEBUG)
            return
        if not data:
            self.drop("peer closed the connection", level=logging.DEBUG)
            return
        self.data_received(data)

    def _take_fds(self, ancdata: list, msg_flags: int) -> bool:
        """Keep the fds one read brought; False once the stream is dropped for them."""
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
                self._received_fds.extend(fds)
        return self._fds_within_limits(bool(msg_flags & socket.MSG_CTRUNC))

    def _fds_within_limits(self, truncated: bool) -> bool:
        """After a read with fds: False once the stream is dropped for them (cut short, or too many held)."""
        if truncated:
            self.drop("too many unix fds in one read")
            return False
        if len(self._received_fds) > self.max_incoming_unix_fds:
            self.drop(f"sent {len(self._received_fds)} unix fds not yet claimed by messages: "
                      f"max_incoming_unix_fds={self.max_incoming_unix_fds}")
            return False
        return True

    def _read_into_frame(self) -> None:
        """Read the rest of a message larger than a read straight into its frame-sized buffer.

        The kernel copies into the buffer once and the finished message is copied out once:
        before, every 256 KiB went through the read buffer, a bytes of its own, the growing
        input buffer and a slice of it (16 MiB calls spent over half their time copying, and
        in page faults of the copies' fresh memory).
        """
        # At most a read's worth at a time, as any read: the input is charged to the user after each read,
        # so one read may pass the user's quota by no more than READ_SIZE before the peer is dropped.
        view = self._frame_view[self._frame_filled:self._frame_filled + READ_SIZE]
        try:
            if self.can_pass_fds:
                size, ancdata, msg_flags, _ = self.sock.recvmsg_into((view,), _ANC_SIZE, socket.MSG_CMSG_CLOEXEC)
                if not self._take_fds(ancdata, msg_flags):
                    return
            else:
                size = self.sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.drop(f"read failed: {exc.strerror or exc}", level=logging.DEBUG)
            return
        finally:
            view.release()
        if not size:
            self.drop("peer closed the connection", level=logging.DEBUG)
            return
        self._frame_filled += size
        self.bytes_read += size
        self.data_received(FRAME_PROGRESS)

    def feed(self, data: bytes) -> None:
        """Frame what has arrived and hand on every complete message; keep the rest for the next read.

        While a large body is checked, nothing is framed: what arrives waits behind it.
        """
        rbuf = self._rbuf
        if self._frame_buffer is not None:
            rest = b""
            if data:  # bytes handed in rather than read into the frame (the same framing either way)
                take = min(len(data), len(self._frame_buffer) - self._frame_filled)
                self._frame_view[self._frame_filled:self._frame_filled + take] = data[:take]
                self._frame_filled += take
                rest = data[take:]
            if self._frame_filled < len(self._frame_buffer):
                self.in_bytes = self._frame_filled
                if self.in_bytes > self.peak_in_bytes:
                    self.peak_in_bytes = self.in_bytes
                return
            data = self._finish_frame() + rest if rest else self._finish_frame()
        if self.checking is not None:
            rbuf += data
            self._count_input()
            return
        if rbuf:
            rbuf += data
            view: Any = rbuf
        else:
            view = data
        size = len(view)
        pos = 0
        unfinished = 0  # the size of the message the read ends inside of, once its header is framed
        max_size = self.max_message_size
        large = self.large_message_size
        try:
            while size - pos >= FIXED_HEADER_SIZE:
                total = frame_size(view, pos, max_size)
                if size - pos < total:
                    unfinished = total
                    break
                if view is data:  # bytes: the whole read, or one slice of it (no view in between)
                    message = data if pos == 0 and total == size else data[pos:pos + total]
                else:
                    message = bytes(view[pos:pos + total])
                pos += total
                if total > large:
                    self._frame_large(message)
                    if self.closed:
                        return
                    if self.checking is not None:
                        break  # the rest waits for the check
                    continue
                self._frame(message)
                if self.closed:
                    return
        except ProtocolError as exc:
            self.drop(f"protocol error: {exc.reason}")
            return
        if view is rbuf:
            if pos:
                del rbuf[:pos]
        elif pos < size:
            rbuf += view[pos:]
        if unfinished > READ_SIZE:
            self._start_frame(rbuf, unfinished)
        if self._frame_buffer is not None:
            self.in_bytes = self._frame_filled
            if self.in_bytes > self.peak_in_bytes:
                self.peak_in_bytes = self.in_bytes
        elif self.checking is None:
            self.in_bytes = len(rbuf)
            if self.in_bytes > self.peak_in_bytes:
                self.peak_in_bytes = self.in_bytes
        else:
            self._count_input()

    def _start_frame(self, rbuf: bytearray, total: int) -> None:
        """The unfinished message in `rbuf`, of `total` bytes (its header framed), is larger than a read: the
        rest of it goes straight into a buffer of its size (_read_into_frame). Only what arrives takes memory
        (and is charged: in_bytes), and all of it goes back when the message is done.

        The pure twin reads into an anonymous mapping and copies the message out once. The compiled
        one reads into the bytes object that becomes the message, written through a view before
        anything else can see it, so a large message is never copied in the bus at all.
        """
        if _PURE:
            frame: Any = mmap.mmap(-1, total)
            view = memoryview(frame)
        else:
            frame = uninitialised_bytes(total)  # noqa: F821 - C, declared in stream.pxd
            view = writable_view(frame)  # noqa: F821 - C, declared in stream.pxd
        view[:len(rbuf)] = rbuf
        self._frame_buffer = frame
        self._frame_view = view
        self._frame_filled = len(rbuf)
        rbuf.clear()

    def _finish_frame(self) -> bytes:
        """The frame is complete: its bytes, and the buffer let go."""
        frame = self._frame_buffer
        self._drop_frame()
        if not _PURE:
            return frame
        data = frame[:]
        frame.close()
        return data

    def _drop_frame(self) -> None:
        view = self._frame_view
        if view is not None:
            view.release()
        self._frame_view = None
        self._frame_buffer = None
        self._frame_filled = 0

    @property
    def in_fds(self) -> int:
        """Fds received that no delivered message has claimed (with those of a message being checked)."""
        held = len(self._received_fds)
        if self.checking is not None and self.checking[2]:
            held += len(self.checking[2])
        return held

    def _count_input(self) -> None:
        """in_bytes while a large body is checked: the message and all that waits behind it."""
        assert self.checking is not None
        self.in_bytes = len(self.checking[0]) + len(self._rbuf)
        if self.in_bytes > self.peak_in_bytes:
            self.peak_in_bytes = self.in_bytes

    def _frame(self, message: bytes) -> None:
        h = parse_header(message)
        self.message_received(message, h, self._claim_fds(h) if h.unix_fds else None)

    def _frame_large(self, message: bytes) -> None:
        """Frame a message over large_message_size: its header now, its body in check_body_later(),
        unless the check is a few steps at any size (a byte array: most large messages)."""
        h = parse_header(message, validate_body=False)
        if checked_in_constant_steps(h.signature):
            check_message_body(message, h)
            self.message_received(message, h, self._claim_fds(h) if h.unix_fds else None)
            return
        self.checking = (message, h, self._claim_fds(h) if h.unix_fds else None)
        self.check_body_later(message, h)

    def body_checked(self, error: ProtocolError | None) -> None:
        """The check of self.checking ended: deliver the message, or drop the peer as an inline check would.

        The side then frames what waited (feed(b"")) once it resumes the input.
        """
        assert self.checking is not None
        message, h, fds = self.checking
        self.checking = None
        if error is not None:
            close_fds(fds)
            self.drop(f"protocol error: {error.reason}")
            return
        self.message_received(message, h, fds)

    def _claim_fds(self, h: Header) -> list[int]:
        """The fds that arrived for the message `h` (which carries some), in order."""
        if not self.can_pass_fds:
            raise ProtocolError("message carries unix fds but fd passing was not negotiated")
        if h.unix_fds > self.max_message_unix_fds:
            raise ProtocolError(f"message carries {h.unix_fds} fds, the limit is {self.max_message_unix_fds}")
        if len(self._received_fds) < h.unix_fds:
            raise ProtocolError(f"UNIX_FDS says {h.unix_fds} but only {len(self._received_fds)} fds arrived")
        claimed = self._received_fds[:h.unix_fds]
        del self._received_fds[:h.unix_fds]
        return claimed

    # ------------------------------------------------------------ writing

    def queue(self, head: bytes, body: Any, fds: list[int] | SharedFds | None = None) -> None:
        """Queue one message (header bytes + body view) for sending; fds are now ours."""
        out = self._out
        size = len(head)
        if fds:
            out.append((head, fds))
            self.out_fds += len(fds)
        else:
            out.append(head)
        self.sent[head[1] & 7] += 1
        if body:
            out.append(body)
            size += len(body)
        self.out_bytes += size
        if self.out_bytes > self.peak_out_bytes:
            self.peak_out_bytes = self.out_bytes
        if not self._flush_scheduled and not self._writing:
            self._flush_scheduled = True
            self.schedule_flush(self)

    def has_output(self) -> bool:
        """Whether anything is still queued for writing."""
        return len(self._out) > self._out_start

    def queued_messages(self) -> int:
        """Messages waiting in the queue, one partly written included (Debug.Stats' OutgoingMessages):
        counted when asked, from each queued header's lengths, so queuing costs nothing more."""
        count = skip = 0
        for item in self._out[self._out_start:]:
            buf = item[0] if type(item) is tuple else item
            if skip:
                skip -= len(buf)
                continue
            count += 1
            if len(buf) >= 16 and buf[0] in (0x6C, 0x42) and buf[3] == 1:
                order = "little" if buf[0] == 0x6C else "big"
                body = int.from_bytes(buf[4:8], order)
                fields = int.from_bytes(buf[12:16], order)
                skip = max(0, 16 + fields + (-fields % 8) + body - len(buf))
        return count

    def queue_bytes(self, data: bytes) -> None:
        """Queue bytes outside the message stream (handshake lines), written with the rest of this turn's output."""
        self._out.append(data)
        self.out_bytes += len(data)
        if not self._flush_scheduled and not self._writing:
            self._flush_scheduled = True
            self.schedule_flush(self)

    def send_now(self, data: bytes) -> None:
        """Queue bytes outside the message stream (handshake lines) and write them at once."""
        self._out.append(data)
        self.out_bytes += len(data)
        self.flush()

    def flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        start = self._out_start
        sock = self.sock
        while start < len(out) and not self.closed:
            first = out[start]
            fds = None
            if type(first) is tuple:
                first, fds = first
            try:
                if not _PURE and not fds:
                    # One C call (stream.pxd): the same sendmsg, its iovec made from the queue itself.
                    sent = send_queued(self.fileno, out, start)  # noqa: F821
                    if sent < 0:
                        break  # the socket is full
                else:
                    buffers = [first]
                    for i in range(start + 1, min(len(out), start + _IOV_MAX)):
                        item = out[i]
                        if type(item) is tuple:
                            break  # its fds go with its own first byte: in the next sendmsg
                        buffers.append(item)
                    if fds:
                        sent = sock.sendmsg(buffers, [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                    else:
                        sent = sock.sendmsg(buffers)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._out_start = start
                self.drop(f"write failed: {exc.strerror or exc}", level=logging.DEBUG)
                return
            if fds:
                out[start] = first
                self.out_fds -= len(fds)
                close_fds(fds)
            self.out_bytes -= sent
            self.bytes_written += sent
            while sent:
                item = out[start]
                n = len(item)
                if sent >= n:
                    sent -= n
                    out[start] = None
                    start += 1
                else:
                    out[start] = memoryview(item)[sent:]
                    sent = 0
            if start == len(out):
                out.clear()
                start = 0
            elif start >= _IOV_MAX and 2 * start >= len(out):
                del out[:start]  # amortised: at least as many entries were written as are moved
                start = 0
        self._out_start = start
        if self.closed:
            return
        if start < len(out) and not self._writing:
            self._writing = True
            self.loop.add_writer(self.fileno, self.flush)
        elif start == len(out) and self._writing:
            self._writing = False
            self.loop.remove_writer(self.fileno)
        self.flushed()

    # ------------------------------------------------------------ closing

    def shut(self) -> None:
        """Stop reading and writing, close the socket and every fd still held (drop() calls this once)."""
        self.closed = True
        if self.sock is not None:
            if self.reading:
                self.loop.remove_reader(self.fileno)
            if self._writing:
                self.loop.remove_writer(self.fileno)
            try:
                self.sock.close()
            except OSError:
                pass
        self.reading = self._writing = False
        for item in self._out[self._out_start:]:
            if type(item) is tuple:
                close_fds(item[1])
        self._out.clear()
        self._out_start = 0
        self.out_bytes = self.out_fds = 0
        close_fds(self._received_fds)
        self._received_fds.clear()
        if self.checking is not None:  # its check's end finds us closed and delivers nothing
            close_fds(self.checking[2])
            self.checking = None
        if self._frame_buffer is not None:
            frame = self._frame_buffer
            self._drop_frame()
            if _PURE:
                frame.close()


__all__ = ["HELD_BY_RECIPIENTS", "HELD_FOR_THREAD", "Stream", "close_fds"]
