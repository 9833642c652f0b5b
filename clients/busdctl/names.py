"""The `list` and `status` verbs: who is on the bus, and what we know about one peer.

status runs on busdctl's own link (link.WireLink): the bus's BusID is the GUID it sent while
authenticating us, and its PID comes from the socket's peer credentials, as busctl shows them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from busd.wire.wellknown import DRIVER_NAME, PROPERTIES_INTERFACE

from .connection import DriverCalls
from .context import Context
from .creds import ProcessFacts, read_process, user_name
from .errors import EXIT_OK, GONE, NOT_SUPPORTED, BusError, CommandError
from .link import WireLink
from .output import Column, warn

LIST_COLUMNS = (Column("NAME"), Column("PID", right=True), Column("PROCESS"), Column("USER"),
                Column("CONNECTION"), Column("UNIT"), Column("SESSION"), Column("DESCRIPTION"))



@dataclass
class PeerFacts:
    """What the bus driver says about the owner of a name."""

    name: str
    owner: str  # the unique name, or the driver's own name for org.freedesktop.DBus
    pid: int | None = None
    uid: int | None = None
    groups: list[int] | None = None
    security_label: str | None = None

    @property
    def connection(self) -> str | None:
        return self.owner if self.owner.startswith(":") else None


async def peer_facts(bus: DriverCalls, name: str) -> PeerFacts | None:
    """Owner and credentials of `name`; None if nobody owns it (any more)."""
    try:
        owner, credentials = await asyncio.gather(_owner(bus, name), _credentials(bus, name))
    except BusError as error:
        if error.error_name in GONE:
            return None
        raise
    label = credentials.get("LinuxSecurityLabel")
    return PeerFacts(
        name=name, owner=owner, pid=credentials.get("ProcessID"), uid=credentials.get("UnixUserID"),
        groups=credentials.get("UnixGroupIDs"),
        security_label=bytes(label).rstrip(b"\0").decode("utf-8", "replace") if label else None)


async def _owner(bus: DriverCalls, name: str) -> str:
    if name.startswith(":"):
        return name
    return (await bus.driver("GetNameOwner", "s", [name]))[0]


async def _credentials(bus: DriverCalls, name: str) -> dict[str, Any]:
    try:
        [credentials] = await bus.driver("GetConnectionCredentials", "s", [name])
        return {key: variant.value for key, variant in credentials.items()}
    except BusError as error:
        if error.error_name not in NOT_SUPPORTED:
            raise
    # Buses older than GetConnectionCredentials (D-Bus 1.7) still answer these two.
    [pid], [uid] = await asyncio.gather(bus.driver("GetConnectionUnixProcessID", "s", [name]),
                                        bus.driver("GetConnectionUnixUser", "s", [name]))
    return {"ProcessID": pid, "UnixUserID": uid}


async def list_names(ctx: Context, args: list[str]) -> int:
    options = ctx.options
    unique, acquired, activatable = options.unique, options.acquired, options.activatable
    if not (unique or acquired or activatable):
        unique = acquired = activatable = True
    kinds: dict[str, str] = {}
    if unique or acquired:
        for name in (await ctx.bus.driver("ListNames"))[0]:
            kinds[name] = "acquired"
    if activatable:
        for name in (await ctx.bus.driver("ListActivatableNames"))[0]:
            kinds.setdefault(name, "activatable")
    wanted = [name for name in sorted(kinds)
              if kinds[name] == "activatable"
              or (unique if name.startswith(":") else acquired)]
    augment = ctx.options.augment_creds
    entries = await asyncio.gather(*(_list_entry(ctx.bus, name, kinds[name], augment) for name in wanted))
    entries = [entry for entry in entries if entry is not None]
    if ctx.output.is_json:
        ctx.output.json(entries)
        return EXIT_OK
    rows = [[_cell(entry[key]) for key in ("name", "pid", "process", "user", "connection", "unit",
                                           "session", "description")] for entry in entries]
    with ctx.output.paged():
        ctx.output.table(LIST_COLUMNS, rows)
    return EXIT_OK


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


async def _list_entry(bus: DriverCalls, name: str, kind: str, augment: bool) -> dict[str, Any] | None:
    entry: dict[str, Any] = {"name": name, "pid": None, "process": None, "user": None, "connection": None,
                             "unit": None, "session": None, "description": None,
                             "activatable": kind == "activatable"}
    if kind == "activatable":
        entry["connection"] = "(activatable)"
        return entry
    facts = await peer_facts(bus, name)
    if facts is None:
        return None  # it left the bus while we were listing
    entry["connection"] = facts.connection
    entry["pid"] = facts.pid
    entry["user"] = user_name(facts.uid) if facts.uid is not None else None
    process = read_process(facts.pid) if facts.pid and augment else None
    if process is not None:
        entry["process"] = process.comm
        units = process.units
        entry["unit"] = units.unit
        entry["session"] = units.session
    return entry


# ---- status ----

async def status(ctx: Context[WireLink], args: list[str]) -> int:
    target = args[0] if args else None
    if target is None:
        fields = await _bus_owner_fields(ctx)
    elif target.isdigit():
        fields = await _pid_fields(ctx, int(target))
    else:
        fields = await _name_fields(ctx, target)
    if target in (None, DRIVER_NAME) and await _policy_mode(ctx.bus) == "audit":
        fields.append(("PolicyMode", "audit"))
        warn("WARNING: this bus's policy is in audit mode (<busd:policy mode=\"audit\"/>): messages the policy "
             "denies are logged and delivered; nothing is enforced.")
    if ctx.output.is_json:
        ctx.output.json(dict(fields))
        return EXIT_OK
    with ctx.output.paged():
        for key, value in fields:
            ctx.output.line(f"{key}={_status_text(value)}")
    return EXIT_OK


def _status_text(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


async def _policy_mode(bus: DriverCalls) -> str | None:
    """busd's dev.busd.Policy1.Mode ("enforce", "audit"), or None (no policy enforced, or not busd)."""
    try:
        [mode] = await bus.driver("Get", "ss", ["dev.busd.Policy1", "Mode"], interface=PROPERTIES_INTERFACE)
    except BusError:
        return None
    return str(getattr(mode, "value", mode))


async def _bus_owner_fields(ctx: Context[WireLink]) -> list[tuple[str, Any]]:
    bus = ctx.bus
    # busctl shows the server GUID from authentication; GetId is the same on most buses.
    bus_id = bus.guid or (await bus.driver("GetId"))[0]
    fields: list[tuple[str, Any]] = [("BusAddress", bus.choice.address), ("BusID", bus_id)]
    peer = bus.peer_credentials()
    pid = peer.pid if peer else None
    if not pid:
        facts = await peer_facts(bus, DRIVER_NAME)
        pid = facts.pid if facts else None
    if pid:
        process = read_process(pid) if ctx.options.augment_creds else None
        fields = _with_capabilities_last(fields + process_fields(pid, process), process)
    return fields


async def _pid_fields(ctx: Context[WireLink], pid: int) -> list[tuple[str, Any]]:
    process = read_process(pid)
    if process is None:
        raise CommandError(f"No process with PID {pid} (or it is not visible from here).")
    fields = process_fields(pid, process)
    # The connections this process has on the bus, and the names they own.
    names = (await ctx.bus.driver("ListNames"))[0]
    everyone = await asyncio.gather(*(peer_facts(ctx.bus, name) for name in names))
    mine = [facts for facts in everyone if facts is not None and facts.pid == pid]
    if mine:
        fields.append(("UniqueName", sorted({f.owner for f in mine if f.connection})))
        fields.append(("WellKnownNames", sorted(f.name for f in mine if not f.name.startswith(":"))))
    return _with_capabilities_last(fields, process)


async def _name_fields(ctx: Context[WireLink], name: str) -> list[tuple[str, Any]]:
    facts = await peer_facts(ctx.bus, name)
    if facts is None:
        raise BusError(f"Failed to get credentials of {name}", "org.freedesktop.DBus.Error.NameHasNoOwner",
                       f"Could not get owner of name '{name}': no such name")
    process = read_process(facts.pid) if facts.pid and ctx.options.augment_creds else None
    fields = process_fields(facts.pid, process, facts)
    if facts.connection:
        fields.append(("UniqueName", facts.connection))
        fields.append(("WellKnownNames", await owned_names(ctx.bus, facts.connection)))
    if facts.security_label:
        fields.append(("SecurityLabel", facts.security_label))
    return _with_capabilities_last(fields, process)


async def owned_names(bus: DriverCalls, unique_name: str) -> list[str]:
    """The well-known names `unique_name` owns now."""
    names = [n for n in (await bus.driver("ListNames"))[0] if not n.startswith(":")]
    facts = await asyncio.gather(*(peer_facts(bus, n) for n in names))
    return sorted(f.name for f in facts if f is not None and f.owner == unique_name)


def process_fields(pid: int | None, process: ProcessFacts | None,
                   peer: PeerFacts | None = None) -> list[tuple[str, Any]]:
    """The credential lines busctl status prints, from the bus and, when we can read it, /proc."""
    fields: list[tuple[str, Any]] = [("PID", pid)]
    if process is None:
        if peer is not None and peer.uid is not None:
            fields.append(("EUID", peer.uid))
        if peer is not None and peer.groups is not None:
            fields.append(("SupplementaryGIDs", peer.groups))
        return fields
    units = process.units
    uids = process.uids + [None] * (4 - len(process.uids))
    gids = process.gids + [None] * (4 - len(process.gids))
    fields += [
        ("PPID", process.ppid), ("TTY", process.tty),
        ("UID", uids[0]), ("EUID", uids[1]), ("SUID", uids[2]), ("FSUID", uids[3]),
        ("GID", gids[0]), ("EGID", gids[1]), ("SGID", gids[2]), ("FSGID", gids[3]),
        ("SupplementaryGIDs", process.groups),
        ("Comm", process.comm), ("Exe", process.exe), ("CommandLine", process.cmdline),
        ("CGroup", process.cgroup), ("Unit", units.unit), ("Slice", units.slice or None),
        ("UserUnit", units.user_unit), ("UserSlice", units.user_slice), ("Session", units.session),
        ("AuditLoginUID", process.login_uid), ("AuditSessionID", process.audit_session),
    ]
    return fields


def _with_capabilities_last(fields: list[tuple[str, Any]], process: ProcessFacts | None) -> list[tuple[str, Any]]:
    if process is not None:
        fields += list(process.capabilities.items())
    return fields
