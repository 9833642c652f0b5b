"""What busd's metrics report, read from the running bus at scrape time: one `MetricsSnapshot` of plain numbers.

Theory. Almost everything is read when a scraper asks, from state the bus
keeps anyway: connections by state, every link's message and byte totals,
the ledger, match rules, names, pending calls, the policy's and the driver's
refusal counts, activation outcomes. Nothing here runs per message. Three
things need remembering between scrapes:

- a link's totals when it goes (a Prometheus counter must never go down):
  `Departures` adds them to its own totals when the bus says a peer left (its
  unique name is lost with its link closed), and, for links the bus does not
  announce (monitors, links that never said Hello), when a scrape finds a
  link gone that the previous scrape saw;
- refusals the bus only logs: `LogCounts`, a logging handler on the "busd"
  logger, counts the log lines of policy denials (by deciding rule),
  full-queue refusals, quota episodes, broadcasts dropped and connections
  dropped, recognised by their format strings (the unit test checks each is
  still in the source);
- call-to-reply times: replies.measure_reply_times() turns them on.

`take_snapshot()` runs on the event loop and only copies numbers; turning
them into the exposition text happens in a thread (metrics.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..bus.observers import BusObserver
from ..bus.policy import MessageRule
from ..bus.replies import ReplyTimes
from ..transport.connection import Connection

if TYPE_CHECKING:
    from ..bus.ownership import NameEvent
    from ..bus.ports import PeerLink
    from ..bus.router import Bus

TYPE_LABELS = {1: "method_call", 2: "method_return", 3: "error", 4: "signal"}  # others: "unknown"
TOP_USERS = 20  # uids in the ledger metrics: the 20 with the most queued bytes, fds, rules, names and replies
TOP_SERVICES = 10  # connections in the slowest-service gauge

# Format strings of the log lines LogCounts counts, and where they are (the unit test reads the files).
POLICY_DENIED = "policy denied %s by %s rule %s: %s (uid %s) -> %s (uid %s)"  # bus/router.py
POLICY_DENIED_DRIVER = "policy denied %s by send rule %s: %s (uid %s) -> the bus"  # bus/router.py
POLICY_DENIED_START = "policy denied auto-starting %s for %s (uid %s) by send rule %s"  # bus/activation.py
QUEUE_FULL = ("rejecting %s from %s to %s (uid %s): destination has a full message queue (%s=%d)")  # bus/router.py
CONNECTION_FULL = "%s (uid %s) has a full message queue (%s=%d): dropping %s until it reads"  # bus/ledger.py
USER_QUOTA = "uid %s is at its %s quota (%d) at %s: refusing %s"  # bus/ledger.py
BROADCASTS_DROPPED = "%s caught up; %d broadcasts were dropped while its queue was full"  # transport/served.py
CONNECTION_DROPPED = "dropping connection %s (uid=%s pid=%s): %s"  # transport/connection.py
AUDIT_WOULD_DENY = "policy audit: would deny %s by %s rule %s (uid %s)"  # bus/policy_audit.py
TEMPLATE_SOURCES = {
    POLICY_DENIED: "busd/bus/router.py", POLICY_DENIED_DRIVER: "busd/bus/router.py",
    POLICY_DENIED_START: "busd/bus/activation.py", QUEUE_FULL: "busd/bus/router.py",
    CONNECTION_FULL: "busd/bus/ledger.py", USER_QUOTA: "busd/bus/ledger.py",
    BROADCASTS_DROPPED: "busd/transport/served.py", CONNECTION_DROPPED: "busd/transport/connection.py",
    AUDIT_WOULD_DENY: "busd/bus/policy_audit.py",
}


def rule_label(rule: Any) -> str:
    """A deciding rule as a label: its file:line, or "default" when no rule matched (default deny)."""
    if isinstance(rule, MessageRule):
        return rule.source.origin
    return "default" if rule is None or str(rule) == "(default deny)" else str(rule)


class LogCounts(logging.Handler):
    """Counts of the refusals the bus logs, by kind; attached to the "busd" logger while metrics are on."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.denials: Counter[tuple[str, str]] = Counter()  # (side, rule file:line) -> messages denied
        self.audited: Counter[tuple[str, str]] = Counter()  # the same, for audit mode's "would deny"
        self.refusals: Counter[str] = Counter()  # limit -> unicast messages refused for a full queue
        self.episodes: Counter[str] = Counter()  # limit or ledger line -> times a peer or uid reached it
        self.broadcasts_dropped = 0  # broadcasts not queued to peers whose queue was full (episodes ended)
        self.dropped_connections = 0  # connections dropped for a protocol, authentication or quota reason
        self._by_template = {
            POLICY_DENIED: self._denied, POLICY_DENIED_DRIVER: self._denied_driver,
            POLICY_DENIED_START: self._denied_start, QUEUE_FULL: self._queue_full,
            CONNECTION_FULL: self._connection_full, USER_QUOTA: self._user_quota,
            BROADCASTS_DROPPED: self._broadcasts, CONNECTION_DROPPED: self._dropped,
            AUDIT_WOULD_DENY: self._audited,
        }

    def emit(self, record: logging.LogRecord) -> None:
        count = self._by_template.get(record.msg) if isinstance(record.msg, str) else None
        if count is not None and isinstance(record.args, tuple):
            count(record)

    def _denied(self, record: logging.LogRecord) -> None:
        self.denials[(str(record.args[1]), rule_label(record.args[2]))] += 1

    def _audited(self, record: logging.LogRecord) -> None:
        self.audited[(str(record.args[1]), rule_label(record.args[2]))] += 1

    def _denied_driver(self, record: logging.LogRecord) -> None:
        self.denials[("send", rule_label(record.args[1]))] += 1

    def _denied_start(self, record: logging.LogRecord) -> None:
        self.denials[("send", rule_label(record.args[3]))] += 1

    def _queue_full(self, record: logging.LogRecord) -> None:
        self.refusals[str(record.args[4])] += 1

    def _connection_full(self, record: logging.LogRecord) -> None:
        self.episodes[str(record.args[2])] += 1

    def _user_quota(self, record: logging.LogRecord) -> None:
        self.episodes[f"{record.args[1]} (per user)"] += 1

    def _broadcasts(self, record: logging.LogRecord) -> None:
        self.broadcasts_dropped += int(record.args[1])

    def _dropped(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:  # a normal close is logged at debug level
            self.dropped_connections += 1


@dataclass
class LinkTotals:
    """Messages by type and bytes, summed over links."""

    received: list[int] = field(default_factory=lambda: [0] * 8)
    sent: list[int] = field(default_factory=lambda: [0] * 8)
    bytes_read: int = 0
    bytes_written: int = 0
    broadcasts_dropped: int = 0  # of episodes still running when the link went

    def add(self, link: PeerLink) -> None:
        for i, n in enumerate(link.received):
            self.received[i] += n
        for i, n in enumerate(link.sent):
            self.sent[i] += n
        self.bytes_read += link.bytes_read
        self.bytes_written += link.bytes_written
        if isinstance(link, Connection):
            self.broadcasts_dropped += link.dropped_broadcasts


class Departures(BusObserver):
    """The totals of links that are gone, so the bus's counters never go down."""

    def __init__(self) -> None:
        self.totals = LinkTotals()
        self._seen: set[PeerLink] = set()  # the links of the last scrape (held until the next one)
        self._counted: set[PeerLink] = set()  # gone and already added since the last scrape

    def names_changed(self, events: list[NameEvent]) -> None:
        for event in events:
            peer = event.old_owner
            if event.kind == "lost" and peer is not None and event.name[:1] == ":":
                link = peer.conn  # type: ignore[attr-defined]
                if link.closed and link not in self._counted:
                    self._counted.add(link)
                    self.totals.add(link)

    def scraped(self, links: set[PeerLink]) -> None:
        """A scrape saw `links`: add those of the previous scrape that went unannounced."""
        for link in self._seen - links:
            if link not in self._counted:
                self.totals.add(link)
        self._seen = links
        self._counted.clear()


@dataclass
class MetricsSnapshot:
    """Plain numbers, copied on the loop; metrics.py renders them in a thread."""

    connections: dict[str, int]
    traffic: LinkTotals
    errors: dict[str, int]
    denials: dict[tuple[str, str], int]
    audited: dict[tuple[str, str], int]
    refusals: dict[str, int]
    episodes: dict[str, int]
    broadcasts_dropped: int
    dropped_connections: int
    backpressure_held: int
    users: dict[str, dict[str, tuple[int, int, int]]]
    match_rules: int
    names: dict[str, int]
    pending_replies: int
    reply_buckets: list[tuple[str, int]] | None
    reply_sum: float
    slowest: list[tuple[str, float, int]]  # (connection's first well-known name or unique name, mean s, calls)
    activations: dict[tuple[str, str], int]
    activation_buckets: list[tuple[str, int]] | None
    activation_sum: float
    bridge: dict[str, Any]
    audit_mode: bool


def _top_users(report: dict[int | None, dict[str, tuple[int, int, int]]]) -> dict[str, dict[str, tuple[int, int, int]]]:
    def weight(lines: dict[str, tuple[int, int, int]]) -> float:
        return sum(used / quota for used, _peak, quota in lines.values() if quota)

    ranked = sorted(report.items(), key=lambda item: weight(item[1]), reverse=True)[:TOP_USERS]
    return {"unknown" if uid is None else str(uid): lines for uid, lines in ranked}


def _slowest(bus: Bus) -> list[tuple[str, float, int]]:
    ranked = sorted((peer for peer in bus.peers.values() if peer.replies_answered),
                    key=lambda peer: peer.reply_seconds / peer.replies_answered, reverse=True)[:TOP_SERVICES]
    found = []
    for peer in ranked:
        owned = sorted(bus.registry.owned_by(peer))
        found.append((owned[0] if owned else peer.unique_name or "?", peer.reply_seconds / peer.replies_answered,
                      peer.replies_answered))
    return found


def take_snapshot(bus: Bus, departures: Departures, logs: LogCounts, times: ReplyTimes | None,
                  bridge: dict[str, Any], audit_mode: bool = False) -> MetricsSnapshot:
    """Copy what the metrics report out of the bus (on its loop: cheap, no formatting)."""
    links = set(bus.links)
    departures.scraped(links)
    traffic = LinkTotals(list(departures.totals.received), list(departures.totals.sent),
                         departures.totals.bytes_read, departures.totals.bytes_written,
                         departures.totals.broadcasts_dropped)
    for link in links:
        traffic.add(link)
    monitors = len(bus.monitors)
    activation = bus.driver.activation
    histogram = times.histogram if times is not None else None
    return MetricsSnapshot(
        connections={"incomplete": bus.incomplete_connections, "active": len(bus.peers), "monitor": monitors},
        traffic=traffic,
        errors=dict(bus.outbox.errors),
        denials=dict(logs.denials), audited=dict(logs.audited), refusals=dict(logs.refusals),
        episodes=dict(logs.episodes),
        broadcasts_dropped=logs.broadcasts_dropped + traffic.broadcasts_dropped,
        dropped_connections=logs.dropped_connections,
        backpressure_held=bus.backpressure.holds,
        users=_top_users(bus.ledger.report()),
        match_rules=sum(user.match_rules for user in bus.ledger.users.values()),
        names={"unique": len(bus.peers), "well_known": len(bus.registry.names())},
        pending_replies=len(bus.replies.pending),
        reply_buckets=histogram.cumulative() if histogram is not None else None,
        reply_sum=histogram.sum if histogram is not None else 0.0,
        slowest=_slowest(bus) if times is not None else [],
        activations=dict(activation.outcomes) if activation is not None else {},
        activation_buckets=activation.durations.cumulative() if activation is not None else None,
        activation_sum=activation.durations.sum if activation is not None else 0.0,
        bridge=bridge,
        audit_mode=audit_mode,
    )


__all__ = ["Departures", "LinkTotals", "LogCounts", "MetricsSnapshot", "TEMPLATE_SOURCES", "TYPE_LABELS",
           "take_snapshot"]
