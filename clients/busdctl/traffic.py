"""The `monitor` and `capture` verbs: every message on the bus, as text, JSON or pcapng."""

from __future__ import annotations

import asyncio
import platform
import signal
import sys
import time
from typing import Any

from dbus_next import Message, MessageType
from dbus_next.validators import is_bus_name_valid

from busd.wire.wellknown import DRIVER_NAME, DRIVER_PATH, MONITORING_INTERFACE

from . import __version__
from .connection import BusConnection, Tap, make_message
from .context import Context
from .errors import EXIT_OK, NOT_SUPPORTED, BusError, CommandError, UsageError
from .formatting import format_verbose, json_body
from .output import Output, warn
from .pcapng import enhanced_packet, interface_description, section_header

MONITORING_NOTICE = "Monitoring bus message stream."
BULLET = "‣"

# Message type -> the name busctl monitor shows.
TYPE_NAMES: dict[MessageType, str] = {
    MessageType.METHOD_CALL: "method_call",
    MessageType.METHOD_RETURN: "method_return",
    MessageType.ERROR: "error",
    MessageType.SIGNAL: "signal",
}
ADDRESS_FIELDS = (("Sender", "sender"), ("Destination", "destination"), ("Path", "path"),
                  ("Interface", "interface"), ("Member", "member"))


def match_rules(services: list[str], matches: list[str]) -> list[str]:
    """Monitor rules as busctl builds them: traffic from or to each service, plus every --match."""
    rules = []
    for service in services:
        if not is_bus_name_valid(service):
            raise UsageError(f"Invalid service name '{service}'.")
        rules += [f"sender='{service}'", f"destination='{service}'"]
    return rules + matches


async def become_monitor(bus: BusConnection, rules: list[str], tap: Tap) -> None:
    """Turn the connection into a monitor for `rules`; every message then goes to `tap`.

    A bus without the Monitoring interface gets eavesdropping match rules instead, as
    dbus-monitor does.
    """
    message = make_message(destination=DRIVER_NAME, path=DRIVER_PATH, interface=MONITORING_INTERFACE,
                           member="BecomeMonitor", signature="asu", body=[rules, 0], serial=bus.bus.next_serial())
    bus.bus.tap_after_reply(message.serial, tap)
    try:
        await bus.call_message(message, action="Failed to become a monitor")
        return
    except BusError as error:
        if error.error_name not in NOT_SUPPORTED:
            bus.bus.stop_tap()
            raise
    warn(f"The bus has no {MONITORING_INTERFACE}; falling back to eavesdropping match rules.")
    for rule in rules or [""]:
        await bus.driver("AddMatch", "s", [f"{rule},eavesdrop=true" if rule else "eavesdrop=true"])


async def run_until_stopped(bus: BusConnection, notice: str | None) -> None:
    """Wait for SIGINT or SIGTERM (a normal end), or for the bus to hang up (a failure).

    `notice` is shown once the signals are handled, so that whoever waits for it
    may interrupt at once and still get a clean end.
    """
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: stopped.done() or stopped.set_result(None))
    if notice:
        warn(notice)
    disconnected = asyncio.ensure_future(bus.bus.wait_for_disconnect())
    try:
        await asyncio.wait([stopped, disconnected], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    if stopped.done():
        disconnected.cancel()
        return
    if isinstance(disconnected.exception(), BrokenPipeError):
        raise disconnected.exception()  # our reader went away (busdctl monitor | head): a quiet end
    raise CommandError(f"{bus.choice.label[0].upper()}{bus.choice.label[1:]} closed the connection.")


# ---- monitor ----

def format_timestamp(timestamp: float) -> str:
    """A time as busctl monitor shows it: 'Sun 2026-11-29 13:45:27.210294 UTC'."""
    seconds = int(timestamp)
    micros = int(round((timestamp - seconds) * 1_000_000))
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    return time.strftime("%a %Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{micros:06d} UTC"


def message_text(message: Message, raw: bytes, timestamp: float, output: Output) -> str:
    """One message as a busctl monitor block: header lines, then the body tree."""
    is_error = message.message_type == MessageType.ERROR
    bullet = output.red(BULLET) if is_error else output.highlight(BULLET)
    header = (f"{bullet} Type={output.highlight(TYPE_NAMES[message.message_type])}  Endian={chr(raw[0])}"
              f"  Flags={raw[2]}  Version={raw[3]} Cookie={message.serial}")
    if message.reply_serial:
        header += f"  ReplyCookie={message.reply_serial}"
    lines = [header + f'  Timestamp="{format_timestamp(timestamp)}"']
    addresses = "".join(f"  {label}={output.highlight(getattr(message, attribute))}"
                        for label, attribute in ADDRESS_FIELDS if getattr(message, attribute))
    if addresses:
        lines.append(addresses)
    if is_error:
        text = message.body[0] if message.body and isinstance(message.body[0], str) else ""
        quoted = '"' + text + '"'
        lines.append(f"  ErrorName={output.red(message.error_name)}  ErrorMessage={output.red(quoted)}")
    if message.sender and message.sender.startswith(":"):
        lines.append(f"  UniqueName={message.sender}")
    lines.append(format_verbose(message.signature, message.body, prefix="  "))
    return "\n".join(lines) + "\n"


def message_json(message: Message, raw: bytes, timestamp: float) -> dict[str, Any]:
    """One message as busctl monitor --json shows it."""
    data: dict[str, Any] = {"type": TYPE_NAMES[message.message_type], "endian": chr(raw[0]), "flags": raw[2],
                            "version": raw[3], "cookie": message.serial}
    if message.reply_serial:
        data["reply_cookie"] = message.reply_serial
    data["timestamp-realtime"] = int(timestamp * 1_000_000)
    for _, attribute in ADDRESS_FIELDS:
        if getattr(message, attribute):
            data[attribute] = getattr(message, attribute)
    if message.error_name:
        data["error_name"] = message.error_name
    data["payload"] = json_body(message.signature, message.body)
    return data


def _monitor_printer(output: Output) -> Tap:
    def show(message: Message, raw: bytes, timestamp: float) -> None:
        if output.is_json:
            output.json(message_json(message, raw, timestamp))
        else:
            output.line(message_text(message, raw, timestamp, output))
        output.flush()
    return show


async def _watch(ctx: Context, services: list[str], tap: Tap) -> int:
    rules = match_rules(services, ctx.options.match)
    await become_monitor(ctx.bus, rules, tap)
    await run_until_stopped(ctx.bus, None if ctx.options.quiet else MONITORING_NOTICE)
    return EXIT_OK


async def monitor(ctx: Context, args: list[str]) -> int:
    return await _watch(ctx, args, _monitor_printer(ctx.output))


# ---- capture ----

def _capture_writer(stream: Any, snaplen: int) -> Tap:
    def write(message: Message, raw: bytes, timestamp: float) -> None:
        stream.write(enhanced_packet(raw, timestamp, snaplen))
        stream.flush()
    return write


async def capture(ctx: Context, args: list[str]) -> int:
    if ctx.output.stream.isatty():
        raise CommandError("Refusing to write binary capture data to a terminal.\n"
                           "Hint: redirect it, as in 'busdctl capture > bus.pcapng', or pipe it to 'tshark -r -'.")
    stream = ctx.output.stream.buffer if hasattr(ctx.output.stream, "buffer") else sys.stdout.buffer
    snaplen = ctx.options.size
    system = f"{platform.system()} {platform.release()}"
    stream.write(section_header(f"busdctl {__version__}", system))
    stream.write(interface_description(snaplen, ctx.bus.choice.address))
    stream.flush()
    return await _watch(ctx, args, _capture_writer(stream, snaplen))

