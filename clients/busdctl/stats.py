"""The `stats` verb: per-connection resource use from org.freedesktop.DBus.Debug.Stats, worst first."""

from __future__ import annotations

import asyncio
import pwd
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from busd.wire.wellknown import STATS_INTERFACE

from .connection import BusConnection
from .context import Context
from .creds import read_process
from .errors import EXIT_OK, GONE, NOT_SUPPORTED, BusError, CommandError
from .names import peer_facts
from .output import Column

# dbus-daemon's built-in per-connection limits (bus/config-parser.c), which apply whenever the
# configuration sets no <limit> of its own: 127 MiB queued each way, 4 x 16 fds, 512 rules and names,
# 128 replies pending. busd's configuration model has the same defaults.
DEFAULT_LIMITS: dict[str, int] = {
    "IncomingBytes": 127 * 1024 * 1024,
    "OutgoingBytes": 127 * 1024 * 1024,
    "IncomingFDs": 64,
    "OutgoingFDs": 64,
    "MatchRules": 512,
    "BusNames": 512,
    "PendingReplies": 128,
}
RESOURCE_LABELS: dict[str, str] = {
    "IncomingBytes": "incoming bytes",
    "OutgoingBytes": "outgoing bytes",
    "IncomingFDs": "incoming fds",
    "OutgoingFDs": "outgoing fds",
    "MatchRules": "match rules",
    "BusNames": "names",
    "PendingReplies": "pending replies",
}
# Other spellings of the same counters -> dbus-daemon's key.
KEY_ALIASES = {"OwnedNames": "BusNames", "dev.busd.PendingReplies": "PendingReplies"}

STATS_COLUMNS = (Column("CONNECTION"), Column("PID", right=True), Column("PROCESS"),
                 Column("QUEUED-IN", right=True), Column("QUEUED-OUT", right=True), Column("FDS", right=True),
                 Column("MATCHES", right=True), Column("NAMES", right=True), Column("QUOTA"),
                 Column("WELL-KNOWN NAMES"))


@dataclass
class ConnectionStats:
    connection: str
    stats: dict[str, Any]
    pid: int | None
    process: str | None
    names: list[str]

    def counter(self, key: str) -> int:
        return int(self.stats.get(key, 0))

    @property
    def quota(self) -> tuple[str, float]:
        """The resource this connection uses most of, relative to its limit, and that fraction."""
        used = [(key, self.counter(key) / limit) for key, limit in DEFAULT_LIMITS.items() if key in self.stats]
        return max(used, key=lambda item: item[1], default=("", 0.0))


def _unwrap(stats: dict[str, Any]) -> dict[str, Any]:
    values = {key: getattr(value, "value", value) for key, value in stats.items()}
    for alias, key in KEY_ALIASES.items():
        if alias in values and key not in values:
            values[key] = values.pop(alias)
    return values


async def _stats_call(bus: BusConnection, member: str, signature: str = "",
                      body: Sequence[Any] = ()) -> dict[str, Any]:
    try:
        [stats] = await bus.driver(member, signature, body, interface=STATS_INTERFACE)
    except BusError as error:
        if error.error_name in NOT_SUPPORTED:
            raise CommandError(
                f"{bus.choice.label[0].upper()}{bus.choice.label[1:]} does not offer {STATS_INTERFACE} "
                f"({error.error_name}).\nHint: dbus-daemon has it only when built with --enable-stats; "
                "busd always has it.") from None
        raise
    return _unwrap(stats)


async def _connection_stats(bus: BusConnection, connection: str,
                            names_by_owner: dict[str, list[str]]) -> ConnectionStats | None:
    try:
        stats, facts = await asyncio.gather(_stats_call(bus, "GetConnectionStats", "s", [connection]),
                                            peer_facts(bus, connection))
    except BusError as error:
        if error.error_name in GONE:
            return None  # it left while we were asking
        raise
    pid = facts.pid if facts else None
    process = read_process(pid) if pid else None
    return ConnectionStats(connection, stats, pid, process.comm if process else None,
                           sorted(names_by_owner.get(connection, [])))


async def _names_by_owner(bus: BusConnection, names: list[str]) -> dict[str, list[str]]:
    well_known = [n for n in names if not n.startswith(":")]
    facts = await asyncio.gather(*(peer_facts(bus, n) for n in well_known))
    owners: dict[str, list[str]] = {}
    for fact in facts:
        if fact is not None:
            owners.setdefault(fact.owner, []).append(fact.name)
    return owners


def _sort_key(entry: ConnectionStats) -> tuple[float, int, str]:
    _, fraction = entry.quota
    # Heaviest first; ties by connection number, so :1.10 comes after :1.9.
    number = entry.connection.rsplit(".", 1)[-1]
    return (-fraction, int(number) if number.isdigit() else 0, entry.connection)


async def stats(ctx: Context, args: list[str]) -> int:
    bus = ctx.bus
    if ctx.options.by_user:
        try:
            bus_stats = await _stats_call(bus, "GetStats")
        except CommandError as error:
            raise CommandError(f"{error}\nThis bus does not report per-user accounting.") from None
        return _by_user(ctx, bus, bus_stats)
    bus_stats = await _stats_call(bus, "GetStats")
    names = (await bus.driver("ListNames"))[0]
    names_by_owner = await _names_by_owner(bus, names)
    if args:
        facts = await asyncio.gather(*(peer_facts(bus, name) for name in args))
        missing = [name for name, fact in zip(args, facts) if fact is None or not fact.connection]
        if missing:
            raise BusError("Failed to get statistics", "org.freedesktop.DBus.Error.NameHasNoOwner",
                           f"no connection owns {', '.join(missing)}")
        connections = sorted({fact.owner for fact in facts})
    else:
        connections = [name for name in names if name.startswith(":")]
    entries = await asyncio.gather(*(_connection_stats(bus, c, names_by_owner) for c in connections))
    ordered = sorted((e for e in entries if e is not None), key=_sort_key)
    if ctx.output.is_json:
        ctx.output.json({"bus": bus_stats, "limits": DEFAULT_LIMITS,
                         "connections": [_entry_json(e) for e in ordered]})
        return EXIT_OK
    rows = [_entry_row(e) for e in ordered]
    with ctx.output.paged():
        ctx.output.table(STATS_COLUMNS, rows)
        if ctx.output.legend:
            ctx.output.line()
            ctx.output.line(_bus_summary(bus_stats, len(ordered)))
    return EXIT_OK


def _entry_row(entry: ConnectionStats) -> list[str]:
    resource, fraction = entry.quota
    quota = f"{fraction * 100:.1f}% {RESOURCE_LABELS[resource]}" if resource else "-"
    fds = entry.counter("IncomingFDs") + entry.counter("OutgoingFDs")
    return [entry.connection, str(entry.pid) if entry.pid else "-", entry.process or "-",
            str(entry.counter("IncomingBytes")), str(entry.counter("OutgoingBytes")), str(fds),
            str(entry.counter("MatchRules")), str(entry.counter("BusNames")), quota,
            " ".join(entry.names) or "-"]


def _entry_json(entry: ConnectionStats) -> dict[str, Any]:
    resource, fraction = entry.quota
    quota = ({"resource": resource, "used": entry.counter(resource), "limit": DEFAULT_LIMITS[resource],
              "fraction": fraction} if resource else None)
    return {"connection": entry.connection, "pid": entry.pid, "process": entry.process, "names": entry.names,
            "stats": entry.stats, "quota": quota}


def _bus_summary(bus_stats: dict[str, Any], shown: int) -> str:
    parts = [f"{bus_stats.get('ActiveConnections', shown)} connections"]
    for key, label in (("MatchRules", "match rules"), ("BusNames", "names")):
        if key in bus_stats:
            peak = bus_stats.get(f"Peak{key}")
            parts.append(f"{bus_stats[key]} {label}" + (f" (peak {peak})" if peak is not None else ""))
    return "Bus: " + ", ".join(parts) + ". Quota: share of dbus-daemon's default per-connection limit."


# ---------------------------------------------------------------- --by-user: busd's per-user ledger

USER_ACCOUNTING = "dev.busd.UserAccounting"  # GetStats: uid -> line -> (used, peak, quota)
UNKNOWN_UID = 0xFFFFFFFF
USER_COLUMNS = (Column("UID", right=True), Column("USER"), Column("LINE"), Column("USED", right=True),
                Column("PEAK", right=True), Column("QUOTA", right=True))


def _user_name(uid: int) -> str:
    if uid == UNKNOWN_UID:
        return "(unknown)"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "-"


def _by_user(ctx: Context, bus: BusConnection, bus_stats: dict[str, Any]) -> int:
    """One table per uid: each ledger line's used / peak / quota (busd only)."""
    accounting = bus_stats.get(USER_ACCOUNTING)
    if accounting is None:
        raise CommandError(f"{bus.choice.label[0].upper()}{bus.choice.label[1:]} does not report per-user "
                           f"accounting ({USER_ACCOUNTING} in GetStats).\nHint: busd does; dbus-daemon has no "
                           "per-user ledger.")
    users = {int(uid): {line: [int(v) for v in value] for line, value in lines.items()}
             for uid, lines in accounting.items()}
    if ctx.output.is_json:
        ctx.output.json({"users": [{"uid": uid, "user": _user_name(uid),
                                    "lines": {line: dict(zip(("used", "peak", "quota"), values))
                                              for line, values in lines.items()}}
                                   for uid, lines in sorted(users.items())]})
        return EXIT_OK
    rows = [[str(uid), _user_name(uid), line, str(used), str(peak), str(quota)]
            for uid, lines in sorted(users.items()) for line, (used, peak, quota) in lines.items()]
    with ctx.output.paged():
        ctx.output.table(USER_COLUMNS, rows)
        if ctx.output.legend:
            ctx.output.line()
            ctx.output.line(f"{len(users)} users. Each line: what the user's connections hold now, its peak, "
                            "and the per-user quota.")
    return EXIT_OK
