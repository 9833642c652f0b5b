"""One client connection: non-blocking socket I/O, SASL, framing and fd passing.

Theory. The bus never awaits a socket: each connection registers a reader with
the loop, reads as much as the kernel has, frames every complete message in
that read and hands it to the bus, which queues bytes on the destinations'
connections. Queued connections are flushed once per loop iteration with one
sendmsg() carrying many messages (scatter/gather), so a burst costs one system
call per peer, not one per message. Unix fds travel in the sendmsg() that starts
with their message's first byte, as the specification requires; every fd the
bus holds is closed once it has been sent or its message dropped.
"""

from __future__ import annotations

import array
import ctypes
import errno
import functools
import logging
import os
import socket
import struct
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from .bus.ports import Credentials
from .wire.errors import ProtocolError
from .wire.message import FIXED_HEADER_SIZE, frame_size, parse_header
from .wire.sasl import ServerAuthenticator

if TYPE_CHECKING:
    from .bus.core import Bus, Peer

log = logging.getLogger("busd.connection")

READ_SIZE = 262144
MAX_FDS_PER_READ = 253  # the kernel's SCM_MAX_FD
_ANC_SIZE = socket.CMSG_SPACE(MAX_FDS_PER_READ * 4)
_IOV_MAX = 512
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
MAX_AUTH_BUFFER = 16384  # dbus-daemon's cap on unsent handshake replies (and on an unfinished line)
_PYTHON_MAX_OPTLEN = 1024  # socket.getsockopt() refuses larger buffers: 256 groups


def close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def credentials_of(sock: socket.socket) -> Credentials:
    """What the kernel says about the process at the other end of a unix socket (nothing for TCP)."""
    if sock.family != socket.AF_UNIX:
        return Credentials()
    try:
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return Credentials()
    groups = {gid}  # the kernel lists only supplementary groups; dbus-daemon reports the primary too
    try:
        groups.update(_peer_groups(sock))
    except OSError:
        pass
    return Credentials(pid or None, uid, gid, tuple(sorted(groups)))


def _peer_groups(sock: socket.socket) -> list[int]:
    """The supplementary groups of the peer, however many (a <policy group> rule must see them all)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _PYTHON_MAX_OPTLEN)
        return list(array.array("I", raw[: len(raw) - len(raw) % 4]))
    except OSError as exc:
        if exc.errno != errno.ERANGE:
            raise
    # More than 256 groups: Python's getsockopt() cannot pass a larger buffer, libc's can,
    # and on ERANGE the kernel says the size it needs (the group list may grow meanwhile).
    size = 2 * _PYTHON_MAX_OPTLEN
    while True:
        buffer = (ctypes.c_uint32 * (size // 4))()
        length = ctypes.c_uint32(size)
        if _libc().getsockopt(sock.fileno(), socket.SOL_SOCKET, SO_PEERGROUPS, buffer, ctypes.byref(length)) == 0:
            return list(buffer[: length.value // 4])
        error = ctypes.get_errno()
        if error != errno.ERANGE:
            raise OSError(error, os.strerror(error))
        size = max(2 * size, length.value)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class Connection:
    """The I/O side of one peer, a PeerLink. The bus side is a Peer, created once SASL succeeds."""

    def __init__(self, bus: "Bus", sock: socket.socket,
                 make_auth: "Callable[[Credentials], ServerAuthenticator]", label: str):
        self.bus = bus
        self.sock = sock
        self.fileno = sock.fileno()
        self.label = label
        self.credentials = credentials_of(sock)
        self.auth: ServerAuthenticator | None = make_auth(self.credentials)
        self.peer: "Peer | None" = None
        self.can_pass_fds = False
        self.closed = False
        self._rbuf = bytearray()
        self._received_fds: deque[int] = deque()
        self._out: deque[list] = deque()  # [buffer, fds or None]
        self.out_bytes = 0
        self.out_fds = 0
        self.peak_out_bytes = 0
        self.in_bytes = 0
        self.peak_in_bytes = 0
        self.in_fds = 0
        self._writing = False
        self._flush_scheduled = False
        self.reading = True
        self.dropped_broadcasts = 0
        # Incomplete until Hello, as in dbus-daemon: the bus counts it against
        # max_incomplete_connections, and auth_timer drops it when auth_timeout expires first.
        self.auth_timer = None
        bus.link_opened(self)
        bus.loop.add_reader(self.fileno, self._on_readable)

    # ------------------------------------------------------------ reading

    def _on_readable(self) -> None:
        try:
            if self.can_pass_fds:
                data, ancdata, msg_flags, _ = self.sock.recvmsg(READ_SIZE, _ANC_SIZE, socket.MSG_CMSG_CLOEXEC)
                for level, kind, cdata in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds = array.array("i")
                        fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
                        self._received_fds.extend(fds)
                if msg_flags & socket.MSG_CTRUNC:
                    self.drop("too many unix fds in one read")
                    return
                if len(self._received_fds) > self.bus.limits.max_incoming_unix_fds:
                    self.drop(f"sent {len(self._received_fds)} unix fds not yet claimed by messages: "
                               f"max_incoming_unix_fds={self.bus.limits.max_incoming_unix_fds}")
                    return
            else:
                data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.drop(f"read failed: {exc.strerror or exc}", level=logging.DEBUG)
            return
        if not data:
            self.drop("peer closed the connection", level=logging.DEBUG)
            return
        bus = self.bus
        bus.input_started()
        try:
            if self.auth is not None:
                self._feed_auth(data)
            else:
                self._feed(data)
        finally:
            bus.input_done()

    def _feed_auth(self, data: bytes) -> None:
        """Feed the handshake in slices, dropping a peer that leaves over MAX_AUTH_BUFFER of replies unread.

        Each junk line is answered with an ERROR up to 8 times its size, so a
        peer that writes lines and never reads would make the bus buffer without
        bound. dbus-daemon disconnects it once 16 KiB of replies are unsent.
        """
        pos = 0
        while pos < len(data) and self.auth is not None:
            chunk = data[pos:pos + MAX_AUTH_BUFFER] if pos or len(data) > MAX_AUTH_BUFFER else data
            pos += len(chunk)
            self._feed_auth_chunk(chunk)
            if self.closed:
                return
            if self.auth is not None and self.out_bytes > MAX_AUTH_BUFFER:
                self.drop(f"does not read its authentication replies: {self.out_bytes} bytes unsent, "
                           f"the limit is {MAX_AUTH_BUFFER}")
                return
        if pos < len(data) and self.peer is not None and not self.closed:
            self._feed(data[pos:])  # the first messages, after BEGIN in the same read

    def _feed_auth_chunk(self, data: bytes) -> None:
        auth = self.auth
        try:
            reply = auth.receive_data(data)
        except ProtocolError as exc:
            last_words = getattr(exc, "reply", b"")
            if last_words:
                self._send_raw(last_words)
            self.drop(f"authentication failed: {exc.reason}")
            return
        if reply:
            self._send_raw(reply)
        if auth.done:
            self.auth = None
            self.can_pass_fds = bool(auth.unix_fd)
            peer = self.bus.peer_authenticated(self, auth.uid)
            if peer is None:
                return
            self.peer = peer
            if auth.leftover:
                self._feed(bytes(auth.leftover))

    def registered(self) -> None:
        """The peer said Hello: the connection is complete and may stay past auth_timeout."""
        if self.auth_timer is not None:
            self.auth_timer.cancel()
            self.auth_timer = None

    def _feed(self, data: bytes) -> None:
        rbuf = self._rbuf
        if rbuf:
            rbuf += data
            view: Any = rbuf
        else:
            view = data
        size = len(view)
        pos = 0
        max_size = self.bus.limits.max_message_size
        try:
            while size - pos >= FIXED_HEADER_SIZE:
                total = frame_size(view, pos, max_size)
                if size - pos < total:
                    break
                if pos == 0 and total == size and view is data:
                    message = data
                else:
                    message = bytes(view[pos:pos + total])
                pos += total
                self._handle(message)
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
        self.in_bytes = len(rbuf)
        if self.in_bytes > self.peak_in_bytes:
            self.peak_in_bytes = self.in_bytes

    def _handle(self, message: bytes) -> None:
        h = parse_header(message)
        fds = None
        if h.unix_fds:
            if not self.can_pass_fds:
                raise ProtocolError("message carries unix fds but fd passing was not negotiated")
            if h.unix_fds > self.bus.limits.max_message_unix_fds:
                raise ProtocolError(f"message carries {h.unix_fds} fds, the limit is "
                                    f"{self.bus.limits.max_message_unix_fds}")
            if len(self._received_fds) < h.unix_fds:
                raise ProtocolError(f"UNIX_FDS says {h.unix_fds} but only {len(self._received_fds)} fds arrived")
            fds = [self._received_fds.popleft() for _ in range(h.unix_fds)]
        self.bus.receive(self.peer, message, h, fds)

    def hold_input(self) -> None:
        if self.reading and not self.closed:
            self.reading = False
            self.bus.loop.remove_reader(self.fileno)

    def release_input(self) -> None:
        if not self.reading and not self.closed:
            self.reading = True
            self.bus.loop.add_reader(self.fileno, self._on_readable)

    # ------------------------------------------------------------ writing

    def queue(self, head: bytes, body: Any, fds: list[int] | None = None) -> None:
        """Queue one message (header bytes + body view) for sending; fds are now ours."""
        out = self._out
        out.append([head, fds])
        size = len(head)
        if body:
            out.append([body, None])
            size += len(body)
        self.out_bytes += size
        if fds:
            self.out_fds += len(fds)
        if self.out_bytes > self.peak_out_bytes:
            self.peak_out_bytes = self.out_bytes
        if not self._flush_scheduled and not self._writing:
            self._flush_scheduled = True
            self.bus.schedule_flush(self)

    def _send_raw(self, data: bytes) -> None:
        self._out.append([data, None])
        self.out_bytes += len(data)
        self.flush()

    def flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        sock = self.sock
        while out and not self.closed:
            buffers = []
            fds = out[0][1]
            buffers.append(out[0][0])
            for i in range(1, min(len(out), _IOV_MAX)):
                item = out[i]
                if item[1]:
                    break
                buffers.append(item[0])
            try:
                if fds:
                    sent = sock.sendmsg(buffers, [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                else:
                    sent = sock.sendmsg(buffers)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.drop(f"write failed: {exc.strerror or exc}", level=logging.DEBUG)
                return
            if fds:
                out[0][1] = None
                self.out_fds -= len(fds)
                close_fds(fds)
            self.out_bytes -= sent
            while sent:
                item = out[0]
                n = len(item[0])
                if sent >= n:
                    sent -= n
                    out.popleft()
                else:
                    item[0] = memoryview(item[0])[sent:]
                    sent = 0
        if self.closed:
            return
        if out and not self._writing:
            self._writing = True
            self.bus.loop.add_writer(self.fileno, self.flush_writable)
        elif not out and self._writing:
            self._writing = False
            self.bus.loop.remove_writer(self.fileno)
        self.bus.output_flushed(self)
        if not out and self.dropped_broadcasts:
            log.info("%s caught up; %d broadcasts were dropped while its queue was full",
                     self.peer.unique_name if self.peer else self.label, self.dropped_broadcasts)
            self.dropped_broadcasts = 0

    def flush_writable(self) -> None:
        self.flush()

    def note_dropped_broadcast(self, limit: int) -> None:
        """A broadcast was not queued because this peer's queue is full: log once per episode."""
        if not self.dropped_broadcasts:
            log.warning("%s is not reading: dropping broadcasts to it while its queue is over "
                        "max_outgoing_bytes=%d", self.peer.unique_name if self.peer else self.label, limit)
        self.dropped_broadcasts += 1

    # ------------------------------------------------------------ closing

    def drop(self, reason: str, level: int = logging.WARNING) -> None:
        """Drop the connection; the bus forgets the peer and tells whoever must know."""
        if self.closed:
            return
        self.closed = True
        who = self.peer.unique_name if self.peer is not None and self.peer.unique_name else self.label
        log.log(level, "dropping connection %s (uid=%s pid=%s): %s", who,
                self.credentials.uid, self.credentials.pid, reason)
        loop = self.bus.loop
        if self.reading:
            loop.remove_reader(self.fileno)
        if self._writing:
            loop.remove_writer(self.fileno)
        if self.auth_timer is not None:
            self.auth_timer.cancel()
        self.auth = None
        for item in self._out:
            if item[1]:
                close_fds(item[1])
        self._out.clear()
        close_fds(self._received_fds)
        self._received_fds.clear()
        try:
            self.sock.close()
        except OSError:
            pass
        self.bus.link_closed(self)
