"""The per-user ledger: what each uid's connections hold of the bus, charged against per-user quotas.

Theory (as dbus-broker's per-user accounting, src/util/user.c). Every uid that
has a connection, complete or not, has a UserLedger with one line per
resource: bytes and fds queued toward its connections (routed messages, the
bus's own replies, errors and signals, monitor and eavesdrop copies), match
rules, well-known names owned or queued for, calls awaiting a reply,
connections and incomplete connections. Each line has what is used now, its
peak and its quota (Limits.user_quotas()). A resource is charged when the bus
takes it and released when it is freed; a peer that leaves releases everything
it held, and a uid with nothing left is forgotten, so after every peer leaves
the ledger is empty (the unit tests check it).

Per-connection limits stay dbus-daemon's and are checked where they always
were; the per-user quota is checked beside them, and a charge it refuses is
refused the same way (the caller decides how), with one log line naming the
uid, the peer, the line and the quota.

Outgoing queues live in the transport; the bus charges what it queues and
settles each peer's line against its link's `out_bytes`/`out_fds` whenever the
link reports a flush, so bytes queued by paths that do not charge (handshake
lines) are settled too. The per-message cost is integer adds on slotted objects.
"""

from __future__ import annotations

import logging
from typing import Protocol

from .limits import Limits, UserQuotas
from .ports import PeerLink

log = logging.getLogger("busd.bus")

# Ledger lines, in the order they are reported; the names are Debug.Stats' and busdctl's.
LINES = ("OutgoingBytes", "OutgoingFDs", "IncomingBytes", "IncomingFDs", "MatchRules", "Names", "PendingReplies",
         "Connections", "IncompleteConnections")


class UserLedger:
    """The lines of one uid (None: a peer whose uid nobody knows, e.g. ANONYMOUS over TCP)."""

    __slots__ = ("uid", "out_bytes", "out_bytes_peak", "out_fds", "out_fds_peak", "in_bytes", "in_bytes_peak",
                 "in_fds", "in_fds_peak", "match_rules",
                 "match_rules_peak", "names", "names_peak", "replies", "replies_peak", "connections",
                 "connections_peak", "incomplete", "incomplete_peak", "links")

    def __init__(self, uid: int | None):
        self.uid = uid
        self.out_bytes = self.out_bytes_peak = 0
        self.out_fds = self.out_fds_peak = 0
        self.in_bytes = self.in_bytes_peak = 0  # read from its links: partial messages, messages held for a start
        self.in_fds = self.in_fds_peak = 0  # received on its links, not yet claimed by a message
        self.match_rules = self.match_rules_peak = 0
        self.names = self.names_peak = 0
        self.replies = self.replies_peak = 0
        self.connections = self.connections_peak = 0
        self.incomplete = self.incomplete_peak = 0
        self.links = 0  # links charged to this uid (incomplete or authenticated): it is kept while any is

    def lines(self) -> dict[str, tuple[int, int]]:
        """Each line's (used, peak); peaks of the queue lines are kept lazily, so the used value may be higher."""
        return {
            "OutgoingBytes": (self.out_bytes, max(self.out_bytes_peak, self.out_bytes)),
            "OutgoingFDs": (self.out_fds, max(self.out_fds_peak, self.out_fds)),
            "IncomingBytes": (self.in_bytes, self.in_bytes_peak),
            "IncomingFDs": (self.in_fds, self.in_fds_peak),
            "MatchRules": (self.match_rules, self.match_rules_peak),
            "Names": (self.names, self.names_peak),
            "PendingReplies": (self.replies, max(self.replies_peak, self.replies)),
            "Connections": (self.connections, self.connections_peak),
            "IncompleteConnections": (self.incomplete, self.incomplete_peak),
        }

    def is_empty(self) -> bool:
        return not (self.links or self.out_bytes or self.out_fds or self.in_bytes or self.in_fds or self.match_rules or self.names or self.replies
                    or self.connections or self.incomplete)

    def __repr__(self) -> str:
        return f"<UserLedger uid={self.uid} {self.lines()}>"


class Account(Protocol):
    """What the ledger reads and keeps on a peer (busd.bus.peer.Peer is one): what it charged to its user."""

    unique_name: str | None
    conn: PeerLink
    user: UserLedger | None
    out_charged: int
    fds_charged: int
    names_charged: int
    peak_names: int
    match_count: int
    peak_match_count: int
    replies_outstanding: int
    peak_replies: int
    peak_fds: int
    hello_done: bool
    refusing: bool


class Ledger:
    """Every uid's lines, and the limits they are charged against (the bus sets `limits` on a reload)."""

    def __init__(self, limits: Limits):
        self.users: dict[int | None, UserLedger] = {}
        # What each link holding unfinished input has charged to its user: [bytes, fds].
        self._input: dict[PeerLink, list[int]] = {}
        self.limits = limits
        self.names_total = 0  # every user's Names line summed (Debug.Stats' BusNames peak reads it per Hello)

    @property
    def limits(self) -> Limits:
        return self._limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        self._limits = limits
        self.quotas: UserQuotas = limits.user_quotas()

    # ------------------------------------------------------------ users come and go with their links

    def open_link(self, uid: int | None) -> UserLedger:
        """A link of `uid` appeared (the uid it will be charged to until it leaves)."""
        user = self.users.get(uid)
        if user is None:
            user = self.users[uid] = UserLedger(uid)
        user.links += 1
        return user

    def close_link(self, user: UserLedger) -> None:
        user.links -= 1
        if user.is_empty():
            self.users.pop(user.uid, None)

    def move_link(self, user: UserLedger, uid: int | None, incomplete: bool) -> UserLedger:
        """A link of `user` authenticated as `uid`: the ledger it is charged to from now on."""
        if user.uid == uid:
            return user
        moved = self.open_link(uid)
        if incomplete:
            user.incomplete -= 1
            moved.incomplete += 1
        self.close_link(user)
        return moved

    # ------------------------------------------------------------ counted lines

    def charge_incomplete(self, user: UserLedger) -> bool:
        if user.incomplete >= self.quotas.incomplete_connections:
            return False
        user.incomplete += 1
        if user.incomplete > user.incomplete_peak:
            user.incomplete_peak = user.incomplete
        return True

    def charge_connection(self, user: UserLedger, counted: bool) -> str | None:
        """A connection of `user` completes (says Hello); or, when it is `counted` against
        max_connections_per_user and the user is at it, dbus-daemon's refusal."""
        if counted and user.connections >= self.quotas.connections:
            return (f"The maximum number of active connections for UID {user.uid} has been reached "
                    f"(max_connections_per_user={self.quotas.connections})")
        user.connections += 1
        if user.connections > user.connections_peak:
            user.connections_peak = user.connections
        return None

    def charge_match_rule(self, peer: Account) -> bool:
        user = peer.user
        if user.match_rules >= self.quotas.match_rules:
            self.refused(peer, "MatchRules", self.quotas.match_rules)
            return False
        user.match_rules += 1
        if user.match_rules > user.match_rules_peak:
            user.match_rules_peak = user.match_rules
        return True

    def may_add_name(self, peer: Account) -> bool:
        """Whether `peer`'s user may own or queue for one more name (the caller then settles the count)."""
        if peer.user.names >= self.quotas.names:
            self.refused(peer, "Names", self.quotas.names)
            return False
        return True

    def settle_names(self, peer: Account, count: int) -> None:
        """`peer` now owns or queues for `count` well-known names."""
        user = peer.user
        if user is None:
            return
        user.names += count - peer.names_charged
        self.names_total += count - peer.names_charged
        peer.names_charged = count
        if user.names > user.names_peak:
            user.names_peak = user.names
        if count > peer.peak_names:
            peer.peak_names = count

    # ------------------------------------------------------------ outgoing queues

    def room_for(self, peer: Account, size: int, nfds: int) -> str | None:
        """None if `size` bytes and `nfds` fds may be queued toward `peer`; else the limit or line that is full.

        The connection's own limits (dbus-daemon's) come first, then its user's quota.
        """
        conn = peer.conn
        limits = self._limits
        if conn.out_bytes + size > limits.max_outgoing_bytes:
            return "max_outgoing_bytes"
        if nfds and conn.out_fds + nfds > limits.max_outgoing_unix_fds:
            return "max_outgoing_unix_fds"
        user = peer.user
        if user is not None:
            if user.out_bytes + size > self.quotas.outgoing_bytes:
                return "OutgoingBytes"
            if nfds and user.out_fds + nfds > self.quotas.outgoing_fds:
                return "OutgoingFDs"
        return None

    def limit_of(self, line: str) -> int:
        """The value of a per-connection limit (by its <limit> name) or of a ledger line's quota."""
        limits = self._limits
        if line == "max_outgoing_bytes":
            return limits.max_outgoing_bytes
        if line == "max_outgoing_unix_fds":
            return limits.max_outgoing_unix_fds
        return self.quotas.of(line)

    def queue(self, peer: Account, head: bytes, body: bytes, fds: list[int] | None = None) -> bool:
        """Queue a message toward `peer` if its connection and its user have room, charging it.

        False if not: the refusal is logged (once until the peer's queue drains) and the
        caller closes `fds` and decides what else a refusal means.
        """
        size = len(head) + len(body)
        nfds = len(fds) if fds else 0
        full = self.room_for(peer, size, nfds)
        if full is not None:
            self.refused(peer, full, self.limit_of(full))
            return False
        peer.conn.queue(head, body, fds)
        self.charge_queued(peer, size, nfds)
        return True

    def charge_queued(self, peer: Account, size: int, nfds: int = 0) -> None:
        """`size` bytes and `nfds` fds were just queued toward `peer`."""
        user = peer.user
        if user is not None:
            peer.out_charged += size
            user.out_bytes += size
            if nfds:
                peer.fds_charged += nfds
                user.out_fds += nfds

    def settle_queue(self, peer: Account) -> None:
        """The link wrote (or dropped) some of its queue: the lines follow what it still holds."""
        user = peer.user
        if user is None:
            return
        conn = peer.conn
        queued = conn.out_bytes
        delta = queued - peer.out_charged
        if delta:
            if user.out_bytes > user.out_bytes_peak:
                user.out_bytes_peak = user.out_bytes
            user.out_bytes += delta
            peer.out_charged = queued
        fds = conn.out_fds
        delta = fds - peer.fds_charged
        if delta:
            if peer.fds_charged > peer.peak_fds:
                peer.peak_fds = peer.fds_charged
            if user.out_fds > user.out_fds_peak:
                user.out_fds_peak = user.out_fds
            user.out_fds += delta
            peer.fds_charged = fds
        if not queued and peer.refusing:
            peer.refusing = False
            log.info("%s (uid %s) caught up: its queue is empty again", peer.unique_name or peer.conn.label,
                     user.uid)

    # ------------------------------------------------------------ incoming buffers

    def settle_input(self, link: PeerLink, user: UserLedger) -> str | None:
        """`link`'s unfinished input changed: `user`'s lines follow it. None, or the line whose quota it passes.

        What a link holds between messages is bounded per connection (max_message_size,
        max_incoming_unix_fds); this bounds it per uid, so many connections of one
        user each holding a partial message cannot take the daemon's memory.
        """
        in_bytes, in_fds = link.in_bytes, link.in_fds
        charged = self._input.get(link)
        if charged is None:
            if not (in_bytes or in_fds):
                return None
            charged = self._input[link] = [0, 0]
        user.in_bytes += in_bytes - charged[0]
        user.in_fds += in_fds - charged[1]
        if in_bytes or in_fds:
            charged[0], charged[1] = in_bytes, in_fds
        else:
            del self._input[link]
        if user.in_bytes > user.in_bytes_peak:
            user.in_bytes_peak = user.in_bytes
        if user.in_fds > user.in_fds_peak:
            user.in_fds_peak = user.in_fds
        quotas = self.quotas
        if user.in_bytes > quotas.incoming_bytes:
            return "IncomingBytes"
        if user.in_fds > quotas.incoming_fds:
            return "IncomingFDs"
        return None

    def hold_input(self, user: UserLedger, size: int, nfds: int) -> str | None:
        """The bus keeps a whole message a peer of `user` sent (held until a name starts): charged to its
        incoming lines. None, or the line whose quota it would pass (then nothing is charged)."""
        quotas = self.quotas
        if user.in_bytes + size > quotas.incoming_bytes:
            return "IncomingBytes"
        if nfds and user.in_fds + nfds > quotas.incoming_fds:
            return "IncomingFDs"
        user.in_bytes += size
        user.in_fds += nfds
        if user.in_bytes > user.in_bytes_peak:
            user.in_bytes_peak = user.in_bytes
        if user.in_fds > user.in_fds_peak:
            user.in_fds_peak = user.in_fds
        return None

    def release_held(self, user: UserLedger, size: int, nfds: int) -> None:
        """A message hold_input() charged went on or failed; a user left holding nothing is forgotten."""
        user.in_bytes -= size
        user.in_fds -= nfds
        if user.is_empty() and self.users.get(user.uid) is user:
            del self.users[user.uid]

    def release_input(self, link: PeerLink, user: UserLedger) -> None:
        """`link` is gone: what it held of unfinished input goes back to `user`."""
        charged = self._input.pop(link, None)
        if charged is not None:
            user.in_bytes -= charged[0]
            user.in_fds -= charged[1]

    # ------------------------------------------------------------ leaving

    def peer_left(self, peer: Account, user: UserLedger) -> None:
        """`peer`, whose link was charged to `user`, is gone: all it held goes back, nothing more is charged."""
        self.release_peer(peer)
        if peer.hello_done:
            user.connections -= 1
        peer.user = None
        self.close_link(user)

    def release_peer(self, peer: Account) -> None:
        """Everything `peer` holds that is charged by count goes back (its queue, names, rules)."""
        user = peer.user
        if user is None:
            return
        if user.out_bytes > user.out_bytes_peak:
            user.out_bytes_peak = user.out_bytes
        if user.out_fds > user.out_fds_peak:
            user.out_fds_peak = user.out_fds
        user.out_bytes -= peer.out_charged
        user.out_fds -= peer.fds_charged
        peer.out_charged = peer.fds_charged = 0
        user.match_rules -= peer.match_count
        user.names -= peer.names_charged
        self.names_total -= peer.names_charged
        peer.names_charged = 0

    # ------------------------------------------------------------ refusals

    def refused(self, peer: Account, line: str, quota: int, what: str = "messages to it") -> None:
        """One log line per episode (until the peer's queue drains): the uid, the peer, the line and the quota."""
        if peer.refusing:
            return
        peer.refusing = True
        user = peer.user
        if line.startswith("max_"):
            log.warning("%s (uid %s) has a full message queue (%s=%d): dropping %s until it reads",
                        peer.unique_name or peer.conn.label, user.uid if user is not None else None, line, quota,
                        what)
        else:
            log.warning("uid %s is at its %s quota (%d) at %s: refusing %s",
                        user.uid if user is not None else None, line, quota, peer.unique_name or peer.conn.label,
                        what)

    # ------------------------------------------------------------ reading

    def report(self) -> dict[int | None, dict[str, tuple[int, int, int]]]:
        """Per uid, each line's (used, peak, quota)."""
        quotas = self.quotas
        return {uid: {line: (used, peak, quotas.of(line)) for line, (used, peak) in user.lines().items()}
                for uid, user in self.users.items()}


def connection_lines(peer: Account, limits: Limits) -> dict[str, tuple[int, int, int]]:
    """One connection's lines against dbus-daemon's per-connection limits: (used, peak, limit).
    Names are the well-known ones it owns or queues for (the limit counts its unique name too)."""
    conn = peer.conn
    return {
        "OutgoingBytes": (conn.out_bytes, conn.peak_out_bytes, limits.max_outgoing_bytes),
        "OutgoingFDs": (conn.out_fds, max(peer.peak_fds, conn.out_fds), limits.max_outgoing_unix_fds),
        "MatchRules": (peer.match_count, peer.peak_match_count, limits.max_match_rules_per_connection),
        "Names": (peer.names_charged, peer.peak_names, limits.max_names_per_connection),
        "PendingReplies": (peer.replies_outstanding, peer.peak_replies, limits.max_replies_per_connection),
    }


__all__ = ["LINES", "Account", "Ledger", "UserLedger", "connection_lines"]
