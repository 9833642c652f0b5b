"""The per-message half of the server side of a connection: a Stream whose messages go to the bus.

busd.transport.connection.Connection is a ServedStream; it adds the rest of a
connection's life (the SASL side, lookups in threads, dropping). The split is the
compiled path's: ServedStream is an extension type (served.pxd), so a read goes
from the stream's framing to the bus's receive() and back to the flush with no
Python frame between, while Connection stays a Python class, generic in the
bus's peer type, which an extension type cannot be.
"""

from __future__ import annotations

import array
import errno
import logging
import socket
import struct
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any

from ..bus.ports import BusEntry
from ..wire.message import Header
from .stream import Stream

log = logging.getLogger("busd.connection")

_PURE = not __file__.endswith(tuple(EXTENSION_SUFFIXES))  # the pure twin (from .py or .pyc), not the compiled build
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_PEER_CRED = struct.Struct("3i")
MAX_PEER_GROUPS = 256  # (stream.pxd's busd_peer_credentials; socket.getsockopt() takes no larger buffer either)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int, list[int] | None]:
    """pid, uid, gid and supplementary groups of a unix socket's peer: None for the groups when there are
    more than 256 (the caller asks with a larger buffer), [] when the kernel does not say. OSError when
    it will not say who the peer is. (The compiled twin does it in one C call: a tenth of accepting.)"""
    if not _PURE:
        return read_peer_credentials(sock.fileno())  # noqa: F821 - stream.pxd, cimported by served.pxd
    pid, uid, gid = _PEER_CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEER_CRED.size))
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * MAX_PEER_GROUPS)
    except OSError as exc:
        return pid, uid, gid, (None if exc.errno == errno.ERANGE else [])
    return pid, uid, gid, list(array.array("I", raw[: len(raw) - len(raw) % 4]))


class ServedStream(Stream):
    """A Stream that hands each message to `bus` as `peer` (once the handshake, `auth`, is over)."""

    def __init__(self, bus: BusEntry[Any], label: str):
        super().__init__(bus.loop, bus.schedule_flush)
        self.bus = bus
        self.label = label  # who it is in logs before it has a unique name
        self.auth: Any = None  # the server's SASL conversation, while it runs
        self.peer: Any = None  # the bus's peer, from the handshake's end to the drop
        self.dropped_broadcasts = 0
        self._input_charged = False  # the bus holds a charge for this link's unfinished input

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
        self.bytes_read += len(data)
        self.bus.input_started()
        try:
            if self.auth is not None:
                self.feed_handshake(data)
            else:
                self.feed(data)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, this peer alone pays for it
            self.input_failed(exc)
        finally:
            self.input_ended()

    def input_failed(self, exc: Exception) -> None:
        """Handling this peer's input raised: its framing state is lost, so it is dropped (the read still
        ends with input_ended(), which writes what it queued for other peers)."""
        log.debug("the error happened here", exc_info=exc)
        self.drop(f"internal error while handling its input: {type(exc).__name__}: {exc}", level=logging.ERROR)

    def input_ended(self) -> None:
        """A hand-over of input (a read, or what waited for a thread) is over: charge what is left
        unfinished, and let the bus write what it queued."""
        if self.in_bytes or self._received_fds or self._input_charged:
            self.charge_input()
        self.bus.input_done()

    def feed_handshake(self, data: bytes) -> None:
        """Bytes that arrived while `auth` runs: the side's SASL conversation (and what follows BEGIN)."""
        raise NotImplementedError

    def charge_input(self) -> None:
        """What this peer left unfinished (a partial message, input behind a body check, unclaimed fds)
        is charged to its user; the bus drops a link that passes the user's quota (attack #1)."""
        if not self.closed:
            self._input_charged = bool(self.in_bytes or self.in_fds)
            self.bus.input_buffered(self)

    def message_received(self, message: bytes, h: Header, fds: list[int] | None) -> None:
        self.received[h.type & 7] += 1
        self.bus.receive(self.peer, message, h, fds)

    # ------------------------------------------------------------ writing

    def flushed(self) -> None:
        try:
            self.bus.output_flushed(self)
        except Exception as exc:  # noqa: BLE001 - the bus flushes many links in a row: never stop the others
            log.debug("the error happened here", exc_info=exc)
            self.drop(f"internal error after writing to it: {type(exc).__name__}: {exc}", level=logging.ERROR)
            return
        if self.dropped_broadcasts and not self.has_output():
            log.info("%s caught up; %d broadcasts were dropped while its queue was full",
                     self.peer.unique_name if self.peer else self.label, self.dropped_broadcasts)
            self.dropped_broadcasts = 0

    def note_dropped_broadcast(self, limit: int) -> None:
        """A broadcast was not queued because this peer's queue is full: log once per episode."""
        if not self.dropped_broadcasts:
            log.warning("%s is not reading: dropping broadcasts to it while its queue is over "
                        "max_outgoing_bytes=%d", self.peer.unique_name if self.peer else self.label, limit)
        self.dropped_broadcasts += 1


__all__ = ["MAX_PEER_GROUPS", "SO_PEERGROUPS", "ServedStream", "peer_credentials"]
