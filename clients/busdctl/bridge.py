"""The `bridge` verb: busd's bridge to an upstream bus, from the driver's dev.busd.Bridge1 properties."""

from __future__ import annotations

from typing import Any

from busd.wire.wellknown import DRIVER_NAME, DRIVER_PATH, PROPERTIES_INTERFACE

from .context import Context
from .errors import EXIT_OK, NOT_SUPPORTED, BusError, CommandError
from .output import Column

BRIDGE_INTERFACE = "dev.busd.Bridge1"
NAME_COLUMNS = (Column("NAME"), Column("DIRECTION"), Column("UPSTREAM"), Column("LOCAL"))
# A federation over NATS (upstream nats://): one row per node heard from.
NODE_COLUMNS = (Column("NODE"), Column("CONNECTED"), Column("RTT_MS", right=True), Column("NAMES"))
# The summary lines, in order: property name, and how to show its value.
SUMMARY = ("Upstream", "Connected", "UpstreamUniqueName", "ImportPatterns", "ExportPatterns", "Connects",
           "LastError")


def _plain(value: Any) -> Any:
    """A dbus-next value without Variant wrappers (and tuples as lists), for text and JSON."""
    value = getattr(value, "value", value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


async def bridge_properties(ctx: Context) -> dict[str, Any]:
    bus = ctx.bus
    try:
        [properties] = await bus.call_body(DRIVER_NAME, DRIVER_PATH, PROPERTIES_INTERFACE, "GetAll", "s",
                                           [BRIDGE_INTERFACE], action=f"Failed to read {BRIDGE_INTERFACE}")
    except BusError as error:
        if error.error_name in NOT_SUPPORTED:
            raise CommandError(f"{bus.choice.label[0].upper()}{bus.choice.label[1:]} runs no bridge "
                               f"({BRIDGE_INTERFACE} is missing: {error.error_name}).\nHint: start busd with "
                               "--upstream=ADDRESS --import=NAME --export=NAME to bridge it to another bus.") from None
        raise
    return {key: _plain(value) for key, value in properties.items()}


def name_rows(properties: dict[str, Any]) -> list[list[str]]:
    """One row per name crossing the bridge: imported, exported, or waiting upstream to be exported."""
    rows = [[name, "import", upstream, local] for name, (upstream, local) in properties["Imported"].items()]
    rows += [[name, "export", upstream, local] for name, (upstream, local) in properties["Exported"].items()]
    rows += [[name, "export", "(queued)", "-"] for name in properties["ExportsWaiting"]]
    return rows


def node_rows(properties: dict[str, Any]) -> list[list[str]]:
    """One row per federation node: whether it is heard (this one: connected to NATS), round trip, its names."""
    rows = []
    for node, (alive, rtt, names) in properties.get("Nodes", {}).items():
        rows.append([f"node {node}", _text(alive), f"{rtt:.2f}" if rtt >= 0 else "-", _text(names)])
    return rows


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " ".join(str(item) for item in value) or "-"
    return str(value) if value != "" else "-"


async def bridge(ctx: Context, args: list[str]) -> int:
    properties = await bridge_properties(ctx)
    output = ctx.output
    if output.is_json:
        output.json(properties)
        return EXIT_OK
    with output.paged():
        for key in SUMMARY:
            output.line(f"{key}={_text(properties[key])}")
        subscriptions = properties["Subscriptions"]
        output.line(f"Subscriptions={len(subscriptions)}")
        if ctx.options.verbose:
            for rule, count in sorted(subscriptions.items()):
                output.line(f"  {rule} (for {count} local rule{'s' if count != 1 else ''})")
        rows = name_rows(properties)
        if rows:
            output.line()
            output.table(NAME_COLUMNS, rows)
        nodes = node_rows(properties)
        if nodes:
            output.line()
            output.table(NODE_COLUMNS, nodes)
    return EXIT_OK
