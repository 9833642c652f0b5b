"""org.freedesktop.DBus.Debug.Stats as dbus-daemon 1.14 answers it, plus busd's own keys under "dev.busd.".

dbus-daemon's keys keep its names, types (all `u` but UniqueName) and
meanings; its memory-pool internals (ListMemPool*) have no counterpart in busd
and are left out. Differences in meaning, each because busd has no such state:
IncomingMessages is 0 (busd routes a message in the read that completes it;
1 while a large body is checked in a thread would be the only exception, and it
is not tracked), and PeakIncomingFDs is the fds held now (fds are claimed by
their message in the same read, so no peak is kept). BusNames is dbus-daemon's
sum over connections of each one's names: its unique name and every
well-known name it owns or queues for.

Peaks of the bus as a whole (match rules, names) are kept by `StatsPeaks`, a
BusObserver the driver registers on its bus: names and rules only grow
through events it sees, so it recomputes the totals only then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..wire.marshal import Variant
from .ledger import connection_lines
from .observers import BusObserver

if TYPE_CHECKING:
    from .driver_host import DriverHost
    from .match import MatchRule
    from .ownership import NameEvent
    from .peer import Peer

PREFIX = "dev.busd."
USER_ACCOUNTING = PREFIX + "UserAccounting"  # GetStats: uid -> line -> (used, peak, quota)
CONNECTION_ACCOUNTING = PREFIX + "ConnectionAccounting"  # GetConnectionStats: line -> (used, peak, limit)
CONNECTION_USER = PREFIX + "UnixUserID"  # the uid the connection is charged to
UNKNOWN_UID = 0xFFFFFFFF
# Totals since the connection opened (GetConnectionStats) or since the bus started (GetStats).
MESSAGES_IN, MESSAGES_OUT = PREFIX + "MessagesIn", PREFIX + "MessagesOut"
BYTES_IN, BYTES_OUT = PREFIX + "BytesIn", PREFIX + "BytesOut"

# dbus-daemon 1.14's keys (bus/stats.c) and their signatures; the live test compares them with a real one.
DAEMON_STATS_KEYS = {"Serial": "u", "ActiveConnections": "u", "IncompleteConnections": "u", "MatchRules": "u",
                     "PeakMatchRules": "u", "PeakMatchRulesPerConnection": "u", "BusNames": "u",
                     "PeakBusNames": "u", "PeakBusNamesPerConnection": "u"}
DAEMON_CONNECTION_KEYS = {"Serial": "u", "MatchRules": "u", "PeakMatchRules": "u", "BusNames": "u",
                          "PeakBusNames": "u", "UniqueName": "s", "IncomingMessages": "u", "IncomingBytes": "u",
                          "IncomingFDs": "u", "PeakIncomingBytes": "u", "PeakIncomingFDs": "u",
                          "OutgoingMessages": "u", "OutgoingBytes": "u", "OutgoingFDs": "u",
                          "PeakOutgoingBytes": "u", "PeakOutgoingFDs": "u"}

U32 = 0xFFFFFFFF


def _u(value: int) -> Variant:
    return Variant("u", min(value, U32))


class StatsPeaks(BusObserver):
    """The bus-wide peaks of match rules and names, recomputed whenever either grows."""

    def __init__(self, bus: DriverHost):
        self.bus = bus
        self.match_rules = 0
        self.names = 0

    def bus_names(self) -> int:
        """As dbus-daemon counts them: the names of every connection, each its unique name plus every
        well-known name it owns or queues for (a name two connections queue for counts twice)."""
        return len(self.bus.peers) + self.bus.ledger.names_total

    def match_rule_count(self) -> int:
        return sum(user.match_rules for user in self.bus.ledger.users.values())

    def names_changed(self, events: list[NameEvent]) -> None:
        for event in events:  # (a loop, not any() over a generator: every Hello and every departure come here)
            if event.new_owner is not None:
                self.names = max(self.names, self.bus_names())
                return

    def match_added(self, peer: Peer, rule: MatchRule) -> None:
        self.match_rules = max(self.match_rules, self.match_rule_count())


def bus_stats(bus: DriverHost, peaks: StatsPeaks) -> dict[str, Variant]:
    """GetStats."""
    peers = bus.peers.values()
    names = peaks.bus_names()
    rules = peaks.match_rule_count()
    return {
        "Serial": _u(bus.outbox.serial),
        "ActiveConnections": _u(len(bus.peers)),
        "IncompleteConnections": _u(bus.incomplete_connections),
        "MatchRules": _u(rules),
        "PeakMatchRules": _u(max(peaks.match_rules, rules)),
        "PeakMatchRulesPerConnection": _u(max((p.peak_match_count for p in peers), default=0)),
        "BusNames": _u(names),
        "PeakBusNames": _u(max(peaks.names, names)),
        # (a connection's names: its unique name and the well-known names it owns or queues for)
        "PeakBusNamesPerConnection": _u(max((1 + max(p.peak_names, p.names_charged) for p in peers), default=0)),
        # busd's per-user ledger: uid -> line -> (used, peak, quota); (uid_t)-1 is a peer of unknown uid.
        USER_ACCOUNTING: Variant("a{ua{s(ttt)}}", {
            UNKNOWN_UID if uid is None else uid: lines for uid, lines in bus.ledger.report().items()}),
    }


def connection_stats(bus: DriverHost, target: Peer) -> dict[str, Variant]:
    """GetConnectionStats of one peer."""
    conn = target.conn
    received, sent = conn.received, conn.sent
    stats = {
        "Serial": _u(bus.outbox.serial),
        "UniqueName": Variant("s", target.unique_name),
        "MatchRules": _u(target.match_count),
        "PeakMatchRules": _u(target.peak_match_count),
        # the unique name and every well-known name owned or queued for, as dbus-daemon counts them
        "BusNames": _u(1 + target.names_charged),
        "PeakBusNames": _u(1 + max(target.peak_names, target.names_charged)),
        "IncomingMessages": _u(0),
        "IncomingBytes": _u(conn.in_bytes),
        "IncomingFDs": _u(conn.in_fds),
        "PeakIncomingBytes": _u(conn.peak_in_bytes),
        "PeakIncomingFDs": _u(conn.in_fds),
        "OutgoingMessages": _u(conn.queued_messages()),
        "OutgoingBytes": _u(conn.out_bytes),
        "OutgoingFDs": _u(conn.out_fds),
        "PeakOutgoingBytes": _u(conn.peak_out_bytes),
        "PeakOutgoingFDs": _u(max(target.peak_fds, conn.out_fds)),
        PREFIX + "PendingReplies": _u(target.replies_outstanding),
        MESSAGES_IN: Variant("t", sum(received)),
        MESSAGES_OUT: Variant("t", sum(sent)),
        BYTES_IN: Variant("t", conn.bytes_read),
        BYTES_OUT: Variant("t", conn.bytes_written),
        # The connection's own lines, against its per-connection limits: (used, peak, limit).
        CONNECTION_ACCOUNTING: Variant("a{s(ttt)}", connection_lines(target, bus.limits)),
    }
    if target.user is not None:
        stats[CONNECTION_USER] = Variant("u", UNKNOWN_UID if target.user.uid is None else target.user.uid)
    return stats


def unwrap(stats: dict[str, Any]) -> dict[str, Any]:
    """Variants to their values (for tests and the metrics)."""
    return {key: value.value if isinstance(value, Variant) else value for key, value in stats.items()}


__all__ = ["DAEMON_CONNECTION_KEYS", "DAEMON_STATS_KEYS", "PREFIX", "StatsPeaks", "bus_stats", "connection_stats"]
