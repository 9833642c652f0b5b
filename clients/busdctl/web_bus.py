"""What `busdctl web` asks the bus, on the user's own connection: who the peers are, the object
browser (names, object tree, introspection, properties) and method calls with busctl's typed
argument syntax. Each answer is plain JSON-ready data; failures are CommandErrors, as for busdctl."""

from __future__ import annotations

import asyncio
import shlex
from typing import Any

from dbus_next.signature import Variant

from busd.wire.wellknown import DRIVER_NAME, DRIVER_PATH, PROPERTIES_INTERFACE

from .bridge import BRIDGE_INTERFACE
from .connection import BusConnection, make_message
from .creds import read_process, user_name
from .errors import BusError, CommandError, UsageError
from .formatting import format_short, format_short_value, json_body, json_variant, variant_type
from .introspection import Interface
from .names import peer_facts
from .objects import describe_object, discover_paths
from .typed_args import parse_arguments
from .web_model import BusPicture


async def look_up_peer(bus: BusConnection, picture: BusPicture, peer_id: str) -> None:
    """Fill in a peer's pid, uid, user and process name from the driver and /proc."""
    try:
        facts = await peer_facts(bus, peer_id)
    except CommandError:
        return  # the bus will not say (or is gone): the peer keeps its bare unique name
    if facts is None:
        return
    process = read_process(facts.pid) if facts.pid else None
    picture.set_facts(peer_id, facts.pid, facts.uid, user_name(facts.uid) if facts.uid is not None else None,
                      process.comm if process else None)


async def load_peers(bus: BusConnection, picture: BusPicture) -> None:
    """Everyone on the bus now, with their names and credentials (later changes come from the monitor)."""
    driver = await peer_facts(bus, DRIVER_NAME)
    picture.bus_pid = driver.pid if driver else None
    if driver is not None:
        picture.set_facts(DRIVER_NAME, driver.pid, driver.uid,
                          user_name(driver.uid) if driver.uid is not None else None,
                          _comm(driver.pid))
    [names] = await bus.driver("ListNames")
    owners = await asyncio.gather(*(_owner(bus, name) for name in names if not name.startswith(":")))
    for name in names:
        if name.startswith(":"):
            picture.peer(name)
    for name, owner in owners:
        if owner and name != DRIVER_NAME:
            picture.owner_changed(name, "", owner)
    await look_up_new_peers(bus, picture)
    await mark_stand_ins(bus, picture)


async def look_up_new_peers(bus: BusConnection, picture: BusPicture) -> None:
    new, picture.new_peers = picture.new_peers, []
    await asyncio.gather(*(look_up_peer(bus, picture, peer_id) for peer_id in new if peer_id != DRIVER_NAME))


def _comm(pid: int | None) -> str | None:
    process = read_process(pid) if pid else None
    return process.comm if process else None


async def _owner(bus: BusConnection, name: str) -> tuple[str, str]:
    try:
        [owner] = await bus.driver("GetNameOwner", "s", [name])
    except BusError:
        return name, ""  # it went away meanwhile
    return name, owner


async def mark_stand_ins(bus: BusConnection, picture: BusPicture) -> None:
    """On busd with a bridge (dev.busd.Bridge1), mark the local stand-ins of the other bus's connections:
    the owners of imported names. They have no credentials here, so nothing else tells them apart."""
    try:
        [imported] = await bus.call_body(DRIVER_NAME, DRIVER_PATH, PROPERTIES_INTERFACE, "Get", "ss",
                                         [BRIDGE_INTERFACE, "Imported"], action="Failed to read the bridge")
    except CommandError:
        return  # no bridge (or not busd): nothing to mark
    picture.set_bridged()
    for upstream, local in imported.value.values():
        if local:
            picture.set_stand_in(local, upstream)


# ---------------------------------------------------------------- the object browser

async def list_services(bus: BusConnection) -> dict[str, Any]:
    [names] = await bus.driver("ListNames")
    try:
        [activatable] = await bus.driver("ListActivatableNames")
    except BusError:
        activatable = []
    return {"names": sorted(n for n in names if not n.startswith(":")),
            "unique": sorted(n for n in names if n.startswith(":")),
            "activatable": sorted(n for n in activatable if n not in names)}


async def object_tree(bus: BusConnection, service: str) -> dict[str, Any]:
    paths, errors = await discover_paths(bus, service)
    return {"service": service, "paths": paths, "errors": errors}


async def describe(bus: BusConnection, service: str, path: str) -> dict[str, Any]:
    """An object's interfaces and members, with the values of its readable properties."""
    description = await describe_object(bus, service, path)
    values = await asyncio.gather(*(_property_values(bus, service, path, i) for i in description.interfaces))
    return {"service": service, "path": path, "children": description.children,
            "interfaces": [_interface_json(interface, found)
                           for interface, found in zip(description.interfaces, values)]}


def _interface_json(interface: Interface, values: dict[str, Variant]) -> dict[str, Any]:
    members = []
    for member in sorted(interface.members, key=lambda m: (m.kind, m.name)):
        entry: dict[str, Any] = {"kind": member.kind, "name": member.name, "signature": member.signature,
                                 "result": member.result, "access": member.access, "flags": member.flags}
        if member.kind == "property" and member.name in values:
            entry["value"] = _shown(values[member.name])
        members.append(entry)
    return {"name": interface.name, "flags": interface.flags, "members": members}


def _shown(value: Variant) -> dict[str, Any]:
    return {"text": format_short_value(variant_type(value), value.value), "json": json_variant(value)}


async def _property_values(bus: BusConnection, service: str, path: str, interface: Interface) -> dict[str, Variant]:
    if not interface.readable_properties:
        return {}
    try:
        [values] = await bus.call_body(service, path, PROPERTIES_INTERFACE, "GetAll", "s", [interface.name],
                                       action=f"Failed to get properties of {interface.name}")
    except BusError:
        return {}  # shown as unread; reading one property names the error
    return values


async def read_property(bus: BusConnection, service: str, path: str, interface: str, name: str) -> dict[str, Any]:
    [value] = await bus.call_body(service, path, PROPERTIES_INTERFACE, "Get", "ss", [interface, name],
                                  action=f"Failed to get property {name} on interface {interface}")
    return _shown(value)


async def call_method(bus: BusConnection, service: str, path: str, interface: str, member: str,
                      signature: str, arguments: str) -> dict[str, Any]:
    """Call a method with arguments written as for `busdctl call` (one string, split as a shell would)."""
    try:
        words = shlex.split(arguments)
    except ValueError as error:
        raise UsageError(f"Cannot split the arguments into words: {error}.") from None
    body = parse_arguments(signature, words)
    message = make_message(destination=service, path=path, interface=interface or None, member=member,
                           signature=signature, body=body)
    reply = await bus.call_message(message, action=f"Failed to call {interface}.{member}")
    if reply is None:
        return {"signature": "", "text": "", "json": None}
    return {"signature": reply.signature, "text": format_short(reply.signature, reply.body) if reply.signature else "",
            "json": json_body(reply.signature, reply.body)}
