"""What `busdctl top` shows, gathered from a bus with no terminal in sight: one snapshot of every connection.

`snapshot(bus)` asks the driver (ListNames, GetStats, GetConnectionStats and
GetConnectionCredentials of each unique name) and returns a `TopSnapshot`: per
connection its names, process, uid, queued bytes and fds, match rules and the
running totals of messages and bytes it sent and received, plus the bus-wide
Debug.Stats and busd's per-user ledger. `rates(previous, current)` turns two
snapshots into messages/s and bytes/s per connection. Anything a bus does not
report is None: dbus-daemon counts no totals (no rates); dbus-broker answers
GetStats only, whose per-peer and per-user accounting fills the queues, fds,
match rules and the ledger; a dbus-daemon built without --enable-stats has no
Debug.Stats at all, so only names, pids and processes are known there. `busdctl top` draws these; `busdctl
web` (or any script) can call `snapshot()` itself.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from busd.wire.wellknown import STATS_INTERFACE

from .connection import DriverCalls
from .errors import GONE, NOT_SUPPORTED, BusError
from .names import peer_facts

# busd's own GetConnectionStats keys (dbus-daemon's keep their names): totals since the connection opened.
MESSAGES_IN = "dev.busd.MessagesIn"
MESSAGES_OUT = "dev.busd.MessagesOut"
BYTES_IN = "dev.busd.BytesIn"
BYTES_OUT = "dev.busd.BytesOut"
CONNECTION_ACCOUNTING = "dev.busd.ConnectionAccounting"  # line -> (used, peak, limit)
USER_ACCOUNTING = "dev.busd.UserAccounting"  # GetStats: uid -> line -> (used, peak, quota)
UNKNOWN_UID = 0xFFFFFFFF
# dbus-broker's GetStats: [(unique name, credentials, accounting)] and [(uid, [(line, left, quota)], ...)]
BROKER_PEERS = "org.bus1.DBus.Debug.Stats.PeerAccounting"
BROKER_USERS = "org.bus1.DBus.Debug.Stats.UserAccounting"
# Answers that mean "not from this bus": the policy refuses Debug.Stats, or dbus-broker's
# "Unimplemented functionality" (it has GetStats but not GetConnectionStats).
REFUSED = frozenset({"org.freedesktop.DBus.Error.AccessDenied", "org.freedesktop.DBus.Error.Failed"})

# The columns of a row, in `busdctl top`'s order; each is a key of the per-connection dict.
FIELDS = ("connection", "names", "pid", "process", "uid", "messages_in", "messages_out", "bytes_in", "bytes_out",
          "queued_in_bytes", "queued_out_bytes", "queued_fds", "match_rules", "quota_line", "quota_used")


@dataclass
class TopSnapshot:
    """One look at a bus. `connections` holds one plain dict per connection (keys: FIELDS, plus `ledger`:
    the uid's ledger lines {line: [used, peak, quota]} on busd, else None), so it serialises as JSON as is."""

    taken_at: float  # time.monotonic() when the answers were in
    bus: dict[str, Any] = field(default_factory=dict)  # GetStats, unwrapped ({} when the bus has none)
    stats_supported: bool = True  # the bus answers org.freedesktop.DBus.Debug.Stats
    connections: list[dict[str, Any]] = field(default_factory=list)
    users: dict[int, dict[str, list[int]]] = field(default_factory=dict)  # busd's ledger: uid -> line -> values

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["users"] = {str(uid): lines for uid, lines in self.users.items()}
        return data


def _unwrap(value: Any) -> Any:
    """Variants to plain values, recursively; tuples (structs) to lists, so JSON and comparisons agree."""
    value = getattr(value, "value", value)
    if isinstance(value, dict):
        return {key: _unwrap(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_unwrap(item) for item in value]
    return value


async def _stats(bus: DriverCalls, member: str, signature: str = "", body: list[Any] | None = None
                 ) -> dict[str, Any] | None:
    """A Debug.Stats answer, unwrapped; None when the bus does not have the interface."""
    try:
        [stats] = await bus.driver(member, signature, body or [], interface=STATS_INTERFACE)
    except BusError as error:
        if error.error_name in NOT_SUPPORTED or error.error_name in REFUSED:
            return None
        raise
    return _unwrap(stats)


def _comm(pid: int | None) -> str | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def _worst_line(ledger: dict[str, list[int]] | None) -> tuple[str | None, float | None]:
    """The ledger line of this connection's uid nearest its quota, and the fraction used (busd only)."""
    if not ledger:
        return None, None
    best: tuple[str | None, float | None] = (None, None)
    for line, (used, _peak, quota) in ledger.items():
        if quota and (best[1] is None or used / quota > best[1]):
            best = (line, used / quota)
    return best


async def _connection(bus: DriverCalls, name: str, owned: dict[str, list[str]], with_stats: bool,
                      users: dict[int, dict[str, list[int]]], known: dict[str, Any] | None = None
                      ) -> dict[str, Any] | None:
    try:
        facts, stats = await asyncio.gather(
            peer_facts(bus, name),
            _stats(bus, "GetConnectionStats", "s", [name]) if with_stats else asyncio.sleep(0, None))
    except BusError as error:
        if error.error_name in GONE:
            return None  # it left while we asked
        raise
    if facts is None:
        return None
    stats = stats or known or {}
    uid = facts.uid
    ledger = users.get(uid if uid is not None else UNKNOWN_UID) if users else None
    line, fraction = _worst_line(ledger)
    has = stats.__contains__
    return {
        "connection": name,
        "names": sorted(owned.get(name, [])),
        "pid": facts.pid,
        "process": _comm(facts.pid),
        "uid": uid,
        "messages_in": stats.get(MESSAGES_IN),
        "messages_out": stats.get(MESSAGES_OUT),
        "bytes_in": stats.get(BYTES_IN),
        "bytes_out": stats.get(BYTES_OUT),
        "queued_in_bytes": stats.get("IncomingBytes"),
        "queued_out_bytes": stats.get("OutgoingBytes"),
        "queued_fds": (stats.get("IncomingFDs", 0) + stats.get("OutgoingFDs", 0))
        if has("IncomingFDs") or has("OutgoingFDs") else None,
        "match_rules": stats.get("MatchRules"),
        "quota_line": line,
        "quota_used": fraction,
        "ledger": ledger,
        "stats": stats,
    }


async def _owners(bus: DriverCalls, names: list[str]) -> dict[str, list[str]]:
    """unique name -> the well-known names it owns."""
    well_known = [n for n in names if not n.startswith(":")]
    answers = await asyncio.gather(*(_owner_of(bus, n) for n in well_known))
    owned: dict[str, list[str]] = {}
    for name, owner in zip(well_known, answers):
        if owner is not None:
            owned.setdefault(owner, []).append(name)
    return owned


async def _owner_of(bus: DriverCalls, name: str) -> str | None:
    try:
        return (await bus.driver("GetNameOwner", "s", [name]))[0]
    except BusError as error:
        if error.error_name in GONE:
            return None
        raise


async def snapshot(bus: DriverCalls) -> TopSnapshot:
    """One look at every connection of `bus` (busdctl's BusConnection, or anything with its `driver()`)."""
    names = (await bus.driver("ListNames"))[0]
    bus_stats, owned = await asyncio.gather(_stats(bus, "GetStats"), _owners(bus, names))
    users: dict[int, dict[str, list[int]]] = {}
    if bus_stats and USER_ACCOUNTING in bus_stats:
        users = {int(uid): lines for uid, lines in bus_stats.pop(USER_ACCOUNTING).items()}
    broker_peers: dict[str, dict[str, int]] = {}
    if bus_stats and BROKER_PEERS in bus_stats:  # dbus-broker: per-peer accounting instead of GetConnectionStats
        broker_peers = {name: accounting for name, _creds, accounting in bus_stats.pop(BROKER_PEERS)}
        users = {int(uid): {line: [quota - left, quota - left, quota] for line, left, quota in lines}
                 for uid, lines, *_ in bus_stats.pop(BROKER_USERS, [])}
    unique = [n for n in names if n.startswith(":")]
    rows = await asyncio.gather(*(_connection(bus, n, owned, bus_stats is not None and not broker_peers, users,
                                              _from_broker(broker_peers.get(n))) for n in unique))
    return TopSnapshot(taken_at=time.monotonic(), bus=bus_stats or {}, stats_supported=bus_stats is not None,
                       connections=[row for row in rows if row is not None], users=users)


def _from_broker(accounting: dict[str, int] | None) -> dict[str, Any] | None:
    """dbus-broker's accounting of one peer, under dbus-daemon's GetConnectionStats keys."""
    if accounting is None:
        return None
    return {"IncomingBytes": accounting.get("IncomingBytes", 0), "OutgoingBytes": accounting.get("OutgoingBytes", 0),
            "IncomingFDs": accounting.get("IncomingFds", 0), "OutgoingFDs": accounting.get("OutgoingFds", 0),
            "MatchRules": accounting.get("Matches", 0)}


RATE_FIELDS = {"messages_in": "messages_in_per_s", "messages_out": "messages_out_per_s",
               "bytes_in": "bytes_in_per_s", "bytes_out": "bytes_out_per_s"}


def rates(previous: TopSnapshot | None, current: TopSnapshot) -> dict[str, dict[str, float | None]]:
    """connection -> {messages_in_per_s, messages_out_per_s, bytes_in_per_s, bytes_out_per_s} between two
    snapshots; None where a total is missing (not busd, or the connection is new since `previous`)."""
    before = {row["connection"]: row for row in previous.connections} if previous else {}
    elapsed = current.taken_at - previous.taken_at if previous else 0.0
    found: dict[str, dict[str, float | None]] = {}
    for row in current.connections:
        old = before.get(row["connection"])
        found[row["connection"]] = {
            rate: (row[total] - old[total]) / elapsed
            if old is not None and elapsed > 0 and row[total] is not None and old[total] is not None else None
            for total, rate in RATE_FIELDS.items()}
    return found


__all__ = ["FIELDS", "TopSnapshot", "rates", "snapshot"]
