"""The server side of one client connection: a Stream that authenticates its peer, then hands messages to the bus.

The reading, framing, fd passing and batched writing are busd.transport.stream's;
this adds the server's SASL side (fed in bounded slices), the peer's kernel
credentials and the PeerLink members the bus reads.
"""

from __future__ import annotations

import array
import asyncio
import ctypes
import errno
import functools
import logging
import os
import socket
import struct
from typing import Callable, Generic

from ..bus.ports import BusEntry, Credentials, PeerT
from ..wire.errors import ProtocolError
from ..wire.message import Header
from ..wire.sasl_server import ServerAuthenticator
from .stream import Stream

log = logging.getLogger("busd.connection")

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
MAX_AUTH_BUFFER = 16384  # dbus-daemon's cap on unsent handshake replies (and on an unfinished line)
_PYTHON_MAX_OPTLEN = 1024  # socket.getsockopt() refuses larger buffers: 256 groups


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


class Connection(Stream, Generic[PeerT]):
    """The I/O side of one peer, a PeerLink. The bus side (a PeerT) is the bus's, made once SASL succeeds."""

    def __init__(self, bus: BusEntry[PeerT], sock: socket.socket,
                 make_auth: Callable[[Credentials], ServerAuthenticator], label: str):
        super().__init__(bus.loop, bus.schedule_flush)
        self.bus = bus
        self.attach(sock)
        self.label = label
        self.credentials = credentials_of(sock)
        self.auth: ServerAuthenticator | None = make_auth(self.credentials)
        self.peer: PeerT | None = None
        self.dropped_broadcasts = 0
        # Incomplete until Hello, as in dbus-daemon: the bus counts it against
        # max_incomplete_connections, and auth_timer drops it when auth_timeout expires first.
        self.auth_timer: asyncio.TimerHandle | None = None
        bus.link_opened(self)
        self.start_reading()

    # The bus's limits, which a reload may change.
    @property
    def max_message_size(self) -> int:  # type: ignore[override]
        return self.bus.limits.max_message_size

    @property
    def max_message_unix_fds(self) -> int:  # type: ignore[override]
        return self.bus.limits.max_message_unix_fds

    @property
    def max_incoming_unix_fds(self) -> int:  # type: ignore[override]
        return self.bus.limits.max_incoming_unix_fds

    # ------------------------------------------------------------ reading

    def data_received(self, data: bytes) -> None:
        bus = self.bus
        bus.input_started()
        try:
            if self.auth is not None:
                self._feed_auth(data)
            else:
                self.feed(data)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, this peer alone pays for it
            # Its framing state is lost mid-read: drop it. The finally still writes what
            # the read queued for other peers.
            log.debug("the error happened here", exc_info=exc)
            self.drop(f"internal error while handling its input: {type(exc).__name__}: {exc}", level=logging.ERROR)
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
            self.feed(data[pos:])  # the first messages, after BEGIN in the same read

    def _feed_auth_chunk(self, data: bytes) -> None:
        auth = self.auth
        try:
            reply = auth.receive_data(data)
        except ProtocolError as exc:
            last_words = getattr(exc, "reply", b"")
            if last_words:
                self.send_now(last_words)
            self.drop(f"authentication failed: {exc.reason}")
            return
        if reply:
            self.send_now(reply)
        if auth.done:
            self.auth = None
            self.can_pass_fds = bool(auth.unix_fd)
            peer = self.bus.peer_authenticated(self, auth.uid)
            if peer is None:
                return
            self.peer = peer
            if auth.leftover:
                self.feed(bytes(auth.leftover))

    def message_received(self, message: bytes, h: Header, fds: list[int] | None) -> None:
        self.bus.receive(self.peer, message, h, fds)

    def registered(self) -> None:
        """The peer said Hello: the connection is complete and may stay past auth_timeout."""
        if self.auth_timer is not None:
            self.auth_timer.cancel()
            self.auth_timer = None

    # ------------------------------------------------------------ writing

    def flushed(self) -> None:
        try:
            self.bus.output_flushed(self)
        except Exception as exc:  # noqa: BLE001 - the bus flushes many links in a row: never stop the others
            log.debug("the error happened here", exc_info=exc)
            self.drop(f"internal error after writing to it: {type(exc).__name__}: {exc}", level=logging.ERROR)
            return
        if not self._out and self.dropped_broadcasts:
            log.info("%s caught up; %d broadcasts were dropped while its queue was full",
                     self.peer.unique_name if self.peer else self.label, self.dropped_broadcasts)
            self.dropped_broadcasts = 0

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
        who = self.peer.unique_name if self.peer is not None and self.peer.unique_name else self.label
        log.log(level, "dropping connection %s (uid=%s pid=%s): %s", who,
                self.credentials.uid, self.credentials.pid, reason)
        self.shut()
        if self.auth_timer is not None:
            self.auth_timer.cancel()
        self.auth = None
        self.bus.link_closed(self)
