"""The `wait` verb: block until a name has an owner, or until a signal arrives."""

from __future__ import annotations

import asyncio

from dbus_next import Message, MessageType
from dbus_next.validators import (is_bus_name_valid, is_interface_name_valid, is_member_name_valid,
                                  is_object_path_valid)

from busd.wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME

from .calls import print_body
from .context import Context
from .errors import EXIT_OK, GONE, BusError, CommandError, UsageError
from .formatting import json_body
from .output import warn

NAME_OWNER_CHANGED_RULE = (f"type='signal',sender='{DRIVER_NAME}',interface='{DRIVER_INTERFACE}',"
                           "member='NameOwnerChanged',arg0='{name}'")


async def _until(future: asyncio.Future, timeout: float | None, what: str) -> object:
    try:
        return await asyncio.wait_for(future, timeout)
    except asyncio.TimeoutError:
        raise CommandError(f"Timed out after {timeout:g} s waiting for {what}.") from None


async def wait_for_name(ctx: Context, name: str) -> int:
    if not is_bus_name_valid(name):
        raise UsageError(f"Invalid bus name '{name}'.")
    appeared: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_message(message: Message) -> None:
        if (message.message_type == MessageType.SIGNAL and message.member == "NameOwnerChanged"
                and message.sender == DRIVER_NAME and message.body[0] == name and message.body[2]
                and not appeared.done()):
            appeared.set_result(message.body[2])

    ctx.bus.bus.add_message_handler(on_message)
    # Subscribe first, then ask: an owner arriving in between is seen either way.
    await ctx.bus.driver("AddMatch", "s", [NAME_OWNER_CHANGED_RULE.format(name=name)])
    try:
        [owner] = await ctx.bus.driver("GetNameOwner", "s", [name])
        if not appeared.done():
            appeared.set_result(owner)
    except BusError as error:
        if error.error_name not in GONE:
            raise
    if not appeared.done() and not ctx.options.quiet:
        warn(f"Waiting for name {name} to appear.")
    owner = await _until(appeared, ctx.options.timeout, f"name {name} to appear")
    if ctx.output.is_json:
        ctx.output.json({"name": name, "owner": owner})
    else:
        ctx.output.line(str(owner))
    return EXIT_OK


def _signal_rule(service: str | None, path: str, interface: str, member: str) -> str:
    rule = f"type='signal',path='{path}',interface='{interface}',member='{member}'"
    return f"{rule},sender='{service}'" if service else rule


async def wait_for_signal(ctx: Context, service: str | None, path: str, interface: str, member: str) -> int:
    checks = ((service is None or is_bus_name_valid(service), f"Invalid service name '{service}'."),
              (is_object_path_valid(path), f"Invalid object path '{path}'."),
              (is_interface_name_valid(interface), f"Invalid interface name '{interface}'."),
              (is_member_name_valid(member), f"Invalid signal name '{member}'."))
    for valid, complaint in checks:
        if not valid:
            raise UsageError(complaint)
    arrived: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

    def on_message(message: Message) -> None:
        # The match rule already filters by sender; unicast signals to us skip it, so check again.
        if (message.message_type == MessageType.SIGNAL and message.path == path
                and message.interface == interface and message.member == member
                and (service is None or not service.startswith(":") or message.sender == service)
                and not arrived.done()):
            arrived.set_result(message)

    ctx.bus.bus.add_message_handler(on_message)
    await ctx.bus.driver("AddMatch", "s", [_signal_rule(service, path, interface, member)])
    if not ctx.options.quiet:
        warn(f"Waiting for signal {interface}.{member} on {path}.")
    message = await _until(arrived, ctx.options.timeout, f"signal {interface}.{member} on {path}")
    if ctx.output.is_json:
        ctx.output.json({"sender": message.sender, "path": message.path, "interface": message.interface,
                         "member": message.member, "payload": json_body(message.signature, message.body)})
    else:
        print_body(ctx, message.signature, message.body)
    return EXIT_OK


async def wait(ctx: Context, args: list[str]) -> int:
    if len(args) == 1:
        return await wait_for_name(ctx, args[0])
    if len(args) == 3:
        return await wait_for_signal(ctx, None, *args)
    if len(args) == 4:
        return await wait_for_signal(ctx, *args)
    raise UsageError("Usage: busdctl wait NAME  or  busdctl wait [SERVICE] OBJECT INTERFACE SIGNAL")
