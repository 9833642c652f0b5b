"""The `tree` and `introspect` verbs: a service's objects, and one object's interfaces."""

from __future__ import annotations

import asyncio
from typing import Any

from dbus_next.signature import Variant

from busd.wire.wellknown import INTROSPECTABLE_INTERFACE, PROPERTIES_INTERFACE

from .connection import BusConnection
from .context import Context
from .errors import EXIT_FAILURE, EXIT_OK, BusError, CommandError
from .formatting import format_short_value, json_variant, variant_type
from .introspection import Interface, Member, ObjectDescription, child_path, parse_introspection
from .output import Column, warn

INTROSPECT_COLUMNS = (Column("NAME"), Column("TYPE"), Column("SIGNATURE"), Column("RESULT/VALUE"),
                      Column("FLAGS"))
MEMBER_ORDER = ("method", "property", "signal")

TREE_BRANCH, TREE_LAST, TREE_VERTICAL, TREE_SPACE = "├─", "└─", "│ ", "  "


async def introspect_xml(bus: BusConnection, service: str, path: str) -> str:
    [xml] = await bus.call_body(service, path, INTROSPECTABLE_INTERFACE, "Introspect",
                                action=f"Failed to introspect object {path} of service {service}")
    return xml


async def describe_object(bus: BusConnection, service: str, path: str) -> ObjectDescription:
    xml = await introspect_xml(bus, service, path)
    return parse_introspection(xml, f"object {path} of service {service}")


# ---- tree ----

async def discover_paths(bus: BusConnection, service: str) -> tuple[list[str], list[str]]:
    """Every object path reachable from / by introspection, and the errors met on the way."""
    found: set[str] = set()
    errors: list[str] = []
    level = ["/"]
    seen = {"/"}
    while level:
        results = await asyncio.gather(*(describe_object(bus, service, path) for path in level),
                                       return_exceptions=True)
        next_level = []
        for path, result in zip(level, results):
            if isinstance(result, CommandError):
                errors.append(str(result))
                continue
            if isinstance(result, BaseException):
                raise result
            found.add(path)
            for child in result.children:
                full = child_path(path, child)
                if full not in seen:
                    seen.add(full)
                    next_level.append(full)
        level = next_level
    return sorted(found), errors


def tree_lines(paths: list[str]) -> list[str]:
    """Object paths drawn as busctl tree draws them: each under its nearest listed ancestor."""
    ordered = sorted(set(paths))
    if not ordered:
        return ["No objects discovered."]
    if ordered == ["/"]:
        return ["Only root object discovered."]
    listed = set(ordered)
    children: dict[str, list[str]] = {}
    for path in ordered:
        if path != "/":
            children.setdefault(_nearest_listed_ancestor(path, listed), []).append(path)
    lines: list[str] = []

    def draw(node: str, prefix: str) -> None:
        kids = children.get(node, [])
        for index, kid in enumerate(kids):
            last = index == len(kids) - 1
            lines.append(f"{prefix}{TREE_LAST if last else TREE_BRANCH}{kid}")
            draw(kid, prefix + (TREE_SPACE if last else TREE_VERTICAL))

    draw("/", "")
    return lines


def _nearest_listed_ancestor(path: str, listed: set[str]) -> str:
    parent = path
    while True:
        parent = parent.rsplit("/", 1)[0] or "/"
        if parent == "/" or parent in listed:
            return parent


async def tree(ctx: Context, args: list[str]) -> int:
    services = args or [name for name in (await ctx.bus.driver("ListNames"))[0] if not name.startswith(":")]
    results = await asyncio.gather(*(discover_paths(ctx.bus, service) for service in services))
    failed = False
    for errors in (errors for _, errors in results):
        for error in errors:
            warn(error)
            failed = True
    with_headers = len(services) != 1 or not args
    # A service that could not be introspected at all has its error above, not an empty tree.
    found = {service: paths for service, (paths, errors) in zip(services, results) if paths or not errors}
    if ctx.output.is_json:
        ctx.output.json(found)
        return EXIT_FAILURE if failed else EXIT_OK
    with ctx.output.paged():
        for index, (service, paths) in enumerate(found.items()):
            if index:
                ctx.output.line()
            if with_headers:
                ctx.output.line(f"Service {ctx.output.highlight(service)}:")
            for line in (paths if ctx.options.list else tree_lines(paths)):
                ctx.output.line(line)
    return EXIT_FAILURE if failed else EXIT_OK


# ---- introspect ----

async def _property_values(bus: BusConnection, service: str, path: str,
                           interface: Interface) -> dict[str, Variant]:
    if not interface.readable_properties:
        return {}
    try:
        [values] = await bus.call_body(service, path, PROPERTIES_INTERFACE, "GetAll", "s", [interface.name],
                                       action=f"Failed to get properties of {interface.name}")
    except BusError:
        return {}  # values are shown as "-", as busctl does when it cannot read them
    return values


def _member_row(member: Member, value: Variant | None) -> list[str]:
    if member.kind == "property":
        shown = format_short_value(variant_type(value), value.value) if value is not None else "-"
        return [f".{member.name}", "property", member.signature or "-", shown, " ".join(member.flags) or "-"]
    return [f".{member.name}", member.kind, member.signature or "-", member.result or "-",
            " ".join(member.flags) or "-"]


def _member_json(member: Member, value: Variant | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": member.name, "type": member.kind, "signature": member.signature,
                             "flags": member.flags}
    if member.kind == "method":
        entry["result"] = member.result
    if member.kind == "property":
        entry["value"] = json_variant(value) if value is not None else None
    return entry


async def introspect(ctx: Context, args: list[str]) -> int:
    service, path = args[0], args[1]
    wanted = args[2] if len(args) > 2 else None
    xml = await introspect_xml(ctx.bus, service, path)
    if ctx.options.xml_interface:
        ctx.output.stream.write(xml if xml.endswith("\n") else xml + "\n")
        return EXIT_OK
    description = parse_introspection(xml, f"object {path} of service {service}")
    interfaces = description.interfaces
    if wanted is not None:
        interfaces = [i for i in interfaces if i.name == wanted]
        if not interfaces:
            raise CommandError(f"Object {path} of service {service} has no interface {wanted}.\n"
                               f"Hint: list its interfaces with 'busdctl introspect {service} {path}'.")
    values = await asyncio.gather(*(_property_values(ctx.bus, service, path, i) for i in interfaces))
    members_by_interface = [(i, [m for kind in MEMBER_ORDER for m in i.of_kind(kind)]) for i in interfaces]
    if ctx.output.is_json:
        ctx.output.json([{"interface": i.name, "flags": i.flags,
                          "members": [_member_json(m, v.get(m.name)) for m in members]}
                         for (i, members), v in zip(members_by_interface, values)])
        return EXIT_OK
    rows, interface_rows = [], []
    for (interface, members), interface_values in zip(members_by_interface, values):
        interface_row = [interface.name, "interface", "-", "-", " ".join(interface.flags) or "-"]
        (interface_rows if wanted else rows).append(interface_row)
        rows += [_member_row(m, interface_values.get(m.name)) for m in members]
    with ctx.output.paged():
        # Given one interface, busctl hides its row but still sizes the columns for it.
        ctx.output.table(INTROSPECT_COLUMNS, rows, unshown_rows=interface_rows)
    return EXIT_OK
