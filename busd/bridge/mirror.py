"""The bridge's stand-in peers on the local bus: PeerLinks that live inside the daemon, not behind a socket.

The bridge's own peer (its `home`) and one *mirror* per upstream connection that
owns an imported name or calls an exported one. The bus routes to them as to any
peer (busd.bus.ports.PeerLink); what it queues for them goes to the bridge, and
their back-pressure is the upstream link's. They reach the bridge only through
MirrorHost, so this module needs nothing of the orchestration.

Credentials. The home is the daemon and says so. A mirror stands for a process
on another bus, so it has no unix credentials here (no uid, gid, groups or pid),
like a peer that authenticated without them: GetConnectionUnixUser fails,
GetConnectionCredentials is empty, and only the policy's default and mandatory
contexts apply to it. The upstream bus could say who its peer is, but that is a
claim of another daemon, perhaps run by another user, perhaps on another machine
(tcp:) where uids mean someone else; taking it would let whoever runs the upstream
bus make its peers root here.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Protocol

from ..bus.ownership import NameEvent
from ..bus.ports import Credentials, SharedFds
from ..wire.message import Header
from .link import UpstreamLink
from .readdress import readdressed

if TYPE_CHECKING:
    from ..bus.peer import Peer
    from ..bus.router import Bus

log = logging.getLogger("busd.bridge")


def daemon_credentials() -> Credentials:
    """The daemon's own: the home peer is the daemon."""
    return Credentials(os.getpid(), os.getuid(), os.getgid(), tuple(sorted({os.getgid(), *os.getgroups()})))


class MirrorHost(Protocol):
    """What a virtual peer needs of the bridge that made it (busd.bridge.bridge.Bridge is one)."""

    @property
    def bus(self) -> "Bus": ...

    @property
    def link(self) -> UpstreamLink | None:
        """The upstream connection, None while there is none: our messages wait in its queue."""

    def from_home(self, home: "Home", head: bytes, body: Any, fds: list[int] | None) -> None:
        """A message the local bus routed to the bridge's own peer."""

    def from_mirror(self, mirror: "Mirror", head: bytes, body: Any, fds: list[int] | None) -> None:
        """A message the local bus routed to a mirror."""

    def pause_upstream(self, conn: "VirtualConnection") -> None:
        """`conn`'s recipients are full: read no more from upstream."""

    def resume_upstream(self, conn: "VirtualConnection") -> None:
        """`conn` may be fed again."""

    def virtual_closed(self, conn: "VirtualConnection") -> None:
        """`conn` left the local bus."""


class VirtualConnection:
    """The PeerLink of a peer that lives inside the daemon; a subclass says where messages routed to it go."""

    def __init__(self, bridge: MirrorHost, label: str, credentials: Credentials):
        self.bridge = bridge
        self.label = label
        self.closed = False
        self.credentials = credentials
        self.in_bytes = self.peak_in_bytes = self.peak_out_bytes = self.in_fds = 0
        # (its traffic crosses the upstream link, which counts it: nothing is counted here)
        self.received = [0] * 8
        self.sent = [0] * 8
        self.bytes_read = self.bytes_written = 0
        self.serial = 0
        self.peer_name: str | None = None  # the unique name it had here, kept after it leaves

    @property
    def peer(self) -> "Peer | None":
        return self.bridge.bus.peer_of(self)

    # Queued bytes and fd passing are the upstream link's: that is where our messages wait.
    @property
    def can_pass_fds(self) -> bool:
        link = self.bridge.link
        return link is not None and link.can_pass_fds

    @property
    def out_bytes(self) -> int:
        link = self.bridge.link
        return link.out_bytes if link is not None else 0

    @property
    def out_fds(self) -> int:
        link = self.bridge.link
        return link.out_fds if link is not None else 0

    def queued_messages(self) -> int:
        return 0

    def next_serial(self) -> int:
        self.serial = serial = (self.serial % 0xFFFFFFFF) + 1
        return serial

    def queue(self, head: bytes, body: Any, fds: list[int] | SharedFds | None = None) -> None:
        raise NotImplementedError

    def hold_input(self) -> None:
        self.bridge.pause_upstream(self)

    def release_input(self) -> None:
        self.bridge.resume_upstream(self)

    def registered(self) -> None:
        pass  # attached with a unique name already

    def note_dropped_broadcast(self, limit: int) -> None:
        pass  # the upstream link never drops: it queues, and the bus throttles its senders

    def flush(self) -> None:
        pass

    def drop(self, reason: str = "", level: int = logging.DEBUG) -> None:
        if self.closed:
            return
        self.closed = True
        log.debug("bridge: %s leaves the bus: %s", self.label, reason)
        self.bridge.resume_upstream(self)
        self.bridge.bus.link_closed(self)
        self.bridge.virtual_closed(self)


class Home(VirtualConnection):
    """The bridge's own peer: it receives the signals of exported names' local owners (and stray calls)."""

    def __init__(self, bridge: MirrorHost):
        super().__init__(bridge, "bridge", daemon_credentials())

    def queue(self, head: bytes, body: Any, fds: list[int] | SharedFds | None = None) -> None:
        self.bridge.from_home(self, head, body, fds)


class Mirror(VirtualConnection):
    """The local stand-in for one upstream connection (`upstream_name`)."""

    def __init__(self, bridge: MirrorHost, upstream_name: str):
        super().__init__(bridge, f"upstream {upstream_name}", Credentials())  # unknown: see the module's doc
        self.upstream_name = upstream_name
        self.imported: set[str] = set()  # imported names it owns (or waits for) here
        self.calls: dict[int, int] = {}  # local serial of a call injected from it -> the upstream caller's serial

    def queue(self, head: bytes, body: Any, fds: list[int] | SharedFds | None = None) -> None:
        self.bridge.from_mirror(self, head, body, fds)


def hand_over(bus: "Bus", name: str, new: "Peer | None", old: "Peer | None") -> int | None:
    """Move a name between stand-ins in one owner change: `new` queues first, then `old` releases it.

    The RequestName code of `new` (None without one); the bus announces the changes.
    """
    registry = bus.registry
    events: list[NameEvent] = []
    code = None
    if new is not None:
        code, more = registry.request(name, new, 0)
        events += more
    if old is not None:
        events += registry.release(name, old)[1]
    if events:
        bus.emit_name_events(events)
    return code


def reassign_import(bus: "Bus", imported: dict, name: str, owner: Any, mirror: "Mirror | None",
                    previous: "Mirror | None") -> int | None:
    """`name` is imported from `owner` now (None: from nobody), owned here by its stand-in `mirror`, no longer
    by `previous`: the bookkeeping, then one owner change (hand_over); the RequestName code of `mirror`."""
    if mirror is not None:
        imported[name] = owner
        mirror.imported.add(name)
    else:
        imported.pop(name, None)
    if previous is not None:
        previous.imported.discard(name)
    return hand_over(bus, name, mirror.peer if mirror else None, previous.peer if previous else None)


def inject(bus: "Bus", conn: VirtualConnection, buf: bytes, h: Header, fds: list[int] | None,
           destination: str | None, reply_serial: int | None, serial: int | None = None) -> None:
    """Hand a message from the other side to the local bus as sent by stand-in `conn`, re-addressed."""
    head, new = readdressed(h, serial or conn.next_serial(), destination, reply_serial)
    message = head + memoryview(buf)[h.body_start:] if h.body_len else head
    bus.receive(conn.peer, message, new, fds)


__all__ = ["Home", "Mirror", "MirrorHost", "VirtualConnection", "hand_over", "inject", "reassign_import"]
