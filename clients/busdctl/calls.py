"""The `call`, `get-property`, `set-property` and `emit` verbs, with busctl's typed argument syntax."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dbus_next import MessageFlag, MessageType
from dbus_next.signature import Variant

from busd.wire.wellknown import PROPERTIES_INTERFACE

from .connection import make_message
from .context import Context
from .errors import EXIT_OK, INVALID_ARGS, BusError, CommandError
from .formatting import format_short, format_verbose, json_body, json_variant, variant_type, verbose_lines
from .objects import describe_object
from .typed_args import parse_arguments, parse_single_type


def print_body(ctx: Context, signature: str, body: Sequence[Any]) -> None:
    """A message body in the chosen form; busctl prints nothing at all for an empty one."""
    if not signature:
        return
    if ctx.output.is_json:
        ctx.output.json(json_body(signature, body))
    elif ctx.options.verbose:
        ctx.output.line(format_verbose(signature, body))
        ctx.output.line()
    else:
        ctx.output.line(format_short(signature, body))


def _call_flags(ctx: Context) -> MessageFlag:
    options = ctx.options
    flags = MessageFlag.NONE
    if not options.expect_reply:
        flags |= MessageFlag.NO_REPLY_EXPECTED
    if not options.auto_start:
        flags |= MessageFlag.NO_AUTOSTART
    if options.allow_interactive_authorization:
        flags |= MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
    return flags


async def _declared_signature(ctx: Context, service: str, path: str, interface: str, kind: str,
                              name: str) -> str | None:
    """What the object's introspection says `name` takes (a property: its type), if it says."""
    try:
        description = await describe_object(ctx.bus, service, path)
    except CommandError:
        return None
    declared = description.interface(interface)
    member = next((m for m in declared.members if m.kind == kind and m.name == name), None) if declared else None
    return member.signature if member else None


async def _explain_invalid_args(ctx: Context, error: BusError, service: str, path: str, interface: str | None,
                                kind: str, name: str, given: str) -> BusError:
    """InvalidArgs means a wrong signature or a refused value: hint at the signature only for the first."""
    if error.error_name != INVALID_ARGS or interface is None:
        return error
    declared = await _declared_signature(ctx, service, path, interface, kind, name)
    if declared is None or declared == given:
        return error
    return error.with_hint(f"{interface}.{name} takes '{declared}', not '{given}' "
                           f"(see 'busdctl introspect {service} {path}').")


async def call(ctx: Context, args: list[str]) -> int:
    service, path, interface, member = args[:4]
    signature = args[4] if len(args) > 4 else ""
    body = parse_arguments(signature, args[5:])
    try:
        reply = await ctx.bus.call(service, path, interface, member, signature, body, flags=_call_flags(ctx))
    except BusError as error:
        raise await _explain_invalid_args(ctx, error, service, path, interface, "method", member, signature) from None
    if reply is not None and not ctx.options.quiet:
        print_body(ctx, reply.signature, reply.body)
    return EXIT_OK


async def get_property(ctx: Context, args: list[str]) -> int:
    service, path, interface, *properties = args
    for name in properties:
        [value] = await ctx.bus.call_body(
            service, path, PROPERTIES_INTERFACE, "Get", "ss", [interface, name],
            action=f"Failed to get property {name} on interface {interface}")
        _print_property(ctx, value)
    return EXIT_OK


def _print_property(ctx: Context, value: Variant) -> None:
    if ctx.output.is_json:
        ctx.output.json(json_variant(value))
    elif ctx.options.verbose:
        ctx.output.line("\n".join(verbose_lines(variant_type(value), value.value)))
    else:
        ctx.output.line(format_short(value.signature, [value.value]))


async def set_property(ctx: Context, args: list[str]) -> int:
    service, path, interface, name, signature, *words = args
    parse_single_type(signature)
    [value] = parse_arguments(signature, words)
    try:
        await ctx.bus.call(service, path, PROPERTIES_INTERFACE, "Set", "ssv",
                           [interface, name, Variant(signature, value)],
                           action=f"Failed to set property {name} on interface {interface}")
    except BusError as error:
        raise await _explain_invalid_args(ctx, error, service, path, interface, "property", name, signature) from None
    return EXIT_OK


async def emit(ctx: Context, args: list[str]) -> int:
    path, interface, member = args[:3]
    signature = args[3] if len(args) > 3 else ""
    body = parse_arguments(signature, args[4:])
    flags = MessageFlag.NONE if ctx.options.auto_start else MessageFlag.NO_AUTOSTART
    message = make_message(message_type=MessageType.SIGNAL, destination=ctx.options.destination, path=path,
                           interface=interface, member=member, signature=signature, body=body, flags=flags)
    await ctx.bus.send(message)
    # The bus handles one connection's messages in order: once it answers this, it has routed the signal.
    await ctx.bus.driver("GetId")
    return EXIT_OK
