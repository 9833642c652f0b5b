"""The doors between the bus and whatever carries a peer's bytes: the PeerLink and BusEntry ports.

The bus calls only what PeerLink declares; a transport (busd.transport's socket
Connection, the bridge's stand-in peers, the in-memory links of the routing
tests) calls only what BusEntry declares of the Bus: link_opened(), peer_authenticated(),
receive(), input_started()/input_done(), input_buffered(), schedule_flush(), output_flushed() and
link_closed(), and reads its loop and limits. Back-pressure state (who holds whose input) lives on the bus
side only: a link is told hold_input()/release_input() and reports its queue
through out_bytes and output_flushed().
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Protocol, TypeVar, runtime_checkable

from ..wire.message import Header


class Credentials:
    """Who is at the other end of a peer's link: what the kernel says, with the uid SASL authenticated.

    `groups` are the kernel's (SO_PEERGROUPS; none over TCP); `origin` names the busd node of a federation
    a stand-in's peer is on. `user_groups` are
    the groups the user database gives `uid`, which the transport looks up off
    the event loop: () when `uid` is no user, None when nobody looked (the
    policy then looks them up itself).
    """

    __slots__ = ("pid", "uid", "gid", "groups", "user_groups", "origin")

    def __init__(self, pid: int | None = None, uid: int | None = None, gid: int | None = None,
                 groups: tuple[int, ...] = (), user_groups: tuple[int, ...] | None = None,
                 origin: str | None = None):
        self.pid, self.uid, self.gid, self.groups = pid, uid, gid, groups
        self.user_groups = user_groups
        self.origin = origin  # a federation's stand-in: the node its peer is on (GetConnectionCredentials says)

    @property
    def policy_groups(self) -> tuple[int, ...]:
        """The groups <policy group=...> rules see: the kernel's, else (TCP) the user database's, as dbus-daemon."""
        return self.groups or self.user_groups or ()


class SharedFds:
    """Unix fds that several links' queues send (one broadcast's), closed once the last share is released.

    Each receiving process gets its own copies from the kernel (SCM_RIGHTS), so the
    bus needs one set however many subscribers it queues the broadcast for, as
    dbus-daemon holds one message: a copy per subscriber (dup) multiplied what a
    broadcast costs in the daemon's fds by the subscribers (issue 13, #2).
    """

    __slots__ = ("fds", "holders")

    def __init__(self, fds: list[int]):
        self.fds = fds
        self.holders = 1  # the one who made it: release() when done handing out shares

    def __len__(self) -> int:
        return len(self.fds)

    def __iter__(self):
        return iter(self.fds)

    def share(self) -> SharedFds:
        """One more holder (a queue): it calls release() once the fds are sent or dropped."""
        self.holders += 1
        return self

    def release(self) -> None:
        self.holders -= 1
        if not self.holders:
            for fd in self.fds:
                try:
                    os.close(fd)
                except OSError:
                    pass


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

    @property
    def in_fds(self) -> int:
        """Unix fds received from the peer that no whole message has claimed yet."""

    @property
    def received(self) -> list[int]:
        """Messages received from the peer since the link opened, by type (index: type & 7)."""

    @property
    def sent(self) -> list[int]:
        """Messages queued for the peer since the link opened, by type (index: type & 7)."""

    @property
    def bytes_read(self) -> int:
        """Bytes read from the peer since the link opened (the handshake included)."""

    @property
    def bytes_written(self) -> int: ...

    def queued_messages(self) -> int:
        """Messages waiting in the queue (counted when asked: Debug.Stats' OutgoingMessages)."""

    def queue(self, head: bytes, body: Any, fds: list[int] | SharedFds | None = None) -> None:
        """Queue one message (header bytes and body, both bytes-like) for the peer. The fds are now the
        link's: a list it closes, or a share of SharedFds it releases, once sent or dropped."""

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



class PeerHandle(Protocol):
    """The bus's side of one authenticated peer, as its link holds it: opaque but for its name."""

    @property
    def unique_name(self) -> str | None:
        """Its unique name once it said Hello."""


class LinkLimits(Protocol):
    """The bus's limits a link enforces while framing (a configuration reload may change them)."""

    @property
    def max_message_size(self) -> int: ...

    @property
    def max_message_unix_fds(self) -> int: ...

    @property
    def max_incoming_unix_fds(self) -> int: ...


# The bus's own peer type: a link hands back to receive() what peer_authenticated() gave it.
PeerT = TypeVar("PeerT", bound=PeerHandle)


class BusEntry(Protocol[PeerT]):
    """What a transport calls on the bus (busd.bus.router.Bus is one)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def limits(self) -> LinkLimits: ...

    def link_opened(self, link: PeerLink) -> None:
        """A peer connected: it is incomplete until Hello, and authenticates next."""

    def peer_authenticated(self, link: PeerLink, auth_uid: int | None) -> PeerT | None:
        """SASL succeeded: the bus's peer for the link, or None when the bus refused it (and dropped the link)."""

    def receive(self, peer: PeerT, buf: bytes, h: Header, fds: list[int] | None) -> None:
        """One whole message from the peer; the fds are now the bus's."""

    def input_started(self) -> None:
        """A link starts handing over what one read brought (writes wait for input_done())."""

    def input_done(self) -> None:
        """The read is handed over: flush what it queued."""

    def schedule_flush(self, link: PeerLink) -> None:
        """Flush the link's queue at the end of the read in progress, or next loop turn."""

    def input_buffered(self, link: PeerLink) -> None:
        """What the link holds of unfinished input (in_bytes, in_fds) changed: the bus charges it to the
        link's user, and drops the link when that passes the user's quota."""

    def output_flushed(self, link: PeerLink) -> None:
        """The link wrote some of its queue (senders it held back may be released)."""

    def link_closed(self, link: PeerLink) -> None:
        """The link is gone: forget its peer."""
