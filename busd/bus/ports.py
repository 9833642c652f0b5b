"""The door between the bus and whatever carries a peer's bytes: the PeerLink port.

The bus calls only what PeerLink declares; a transport (busd.transport's socket
Connection, the bridge's stand-in peers, the in-memory links of the routing
tests) calls only the Bus's public entry points: link_opened(), peer_authenticated(),
receive(), input_started()/input_done(), schedule_flush(), output_flushed() and
link_closed(). Back-pressure state (who holds whose input) lives on the bus
side only: a link is told hold_input()/release_input() and reports its queue
through out_bytes and output_flushed().
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable


class Credentials:
    """What the kernel says about the process at the other end of a peer's link."""

    __slots__ = ("pid", "uid", "gid", "groups")

    def __init__(self, pid: int | None = None, uid: int | None = None, gid: int | None = None,
                 groups: tuple[int, ...] = ()):
        self.pid, self.uid, self.gid, self.groups = pid, uid, gid, groups


@runtime_checkable
class PeerLink(Protocol):
    """What the bus needs of one peer's transport."""

    # Read by the bus, never written (plain attributes satisfy these).
    @property
    def label(self) -> str:
        """Who the peer is in logs, before it has a unique name."""

    @property
    def credentials(self) -> Credentials: ...

    @property
    def can_pass_fds(self) -> bool:
        """Unix fds may travel to this peer."""

    @property
    def closed(self) -> bool: ...

    @property
    def out_bytes(self) -> int:
        """Queued for the peer, not yet written."""

    @property
    def out_fds(self) -> int: ...

    @property
    def peak_out_bytes(self) -> int: ...

    @property
    def in_bytes(self) -> int:
        """Read from the peer, not yet a whole message."""

    @property
    def peak_in_bytes(self) -> int: ...

    def queue(self, head: bytes, body: Any, fds: list[int] | None = None) -> None:
        """Queue one message (header bytes and body, both bytes-like) for the peer; the fds are now the link's."""

    def flush(self) -> None:
        """Write what is queued (the bus calls this for links that asked for schedule_flush())."""

    def hold_input(self) -> None:
        """Read nothing more from this peer until release_input() (a recipient of its is full)."""

    def release_input(self) -> None:
        """Read again."""

    def registered(self) -> None:
        """The peer said Hello: its connection is complete (no more authentication deadline)."""

    def note_dropped_broadcast(self, limit: int) -> None:
        """A broadcast was not queued because this link's queue is over `limit` bytes."""

    def drop(self, reason: str, level: int = logging.WARNING) -> None:
        """Disconnect the peer, logging `reason`; the link then calls Bus.link_closed()."""
