"""The `monitor` and `capture` verbs: every message on the bus, as text, JSON or pcapng.

Both run on busdctl's own link (link.WireLink): each message reaches the tap as its busd.wire header
and its bytes exactly as the bus sent them, which capture writes as they are.
"""

from __future__ import annotations

import asyncio
import platform
import signal
import sys
import time
from typing import Any

from dbus_next.validators import is_bus_name_valid

from busd.wire.message import ERROR, METHOD_CALL, METHOD_RETURN, SIGNAL, Header, read_body
from busd.wire.wellknown import DRIVER_NAME, DRIVER_PATH, MONITORING_INTERFACE

from . import __version__
from .context import Context
from .errors import EXIT_OK, NOT_SUPPORTED, BusError, CommandError, UsageError
from .formatting import format_verbose, json_body
from .link import Tap, WireLink
from .output import Output, warn
from .pcapng import enhanced_packet, interface_description, section_header

MONITORING_NOTICE = "Monitoring bus message stream."
BULLET = "‣"

# Message type -> the name busctl monitor shows.
TYPE_NAMES: dict[int, str] = {
    METHOD_CALL: "method_call",
    METHOD_RETURN: "method_return",
    ERROR: "error",
    SIGNAL: "signal",
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


async def become_monitor(link: WireLink, rules: list[str], tap: Tap) -> None:
    """Turn the connection into a monitor for `rules`; every message then goes to `tap`.

    A bus without the Monitoring interface gets eavesdropping match rules instead, as
    dbus-monitor does.
    """
    serial = link.next_serial()
    link.tap_after_reply(serial, tap)
    try:
        await link.call(DRIVER_NAME, DRIVER_PATH, MONITORING_INTERFACE, "BecomeMonitor", "asu", [rules, 0],
                        serial=serial, action="Failed to become a monitor")
        return
    except BusError as error:
        if error.error_name not in NOT_SUPPORTED:
            link.stop_tap()
            raise
    warn(f"The bus has no {MONITORING_INTERFACE}; falling back to eavesdropping match rules.")
    for rule in rules or [""]:
        await link.driver("AddMatch", "s", [f"{rule},eavesdrop=true" if rule else "eavesdrop=true"])


async def run_until_stopped(link: WireLink, notice: str | None) -> None:
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
    disconnected = asyncio.ensure_future(link.wait_closed())
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
    raise CommandError(f"{link.choice.label[0].upper()}{link.choice.label[1:]} closed the connection.")


# ---- monitor ----

def format_timestamp(timestamp: float) -> str:
    """A time as busctl monitor shows it: 'Sun 2026-11-29 13:45:27.210294 UTC'."""
    seconds = int(timestamp)
    micros = int(round((timestamp - seconds) * 1_000_000))
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    return time.strftime("%a %Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{micros:06d} UTC"


def message_text(message: Header, raw: bytes, timestamp: float, output: Output) -> str:
    """One message as a busctl monitor block: header lines, then the body tree."""
    is_error = message.type == ERROR
    body = read_body(raw, message)
    bullet = output.red(BULLET) if is_error else output.highlight(BULLET)
    header = (f"{bullet} Type={output.highlight(TYPE_NAMES[message.type])}  Endian={chr(raw[0])}"
              f"  Flags={raw[2]}  Version={raw[3]} Cookie={message.serial}")
    if message.reply_serial:
        header += f"  ReplyCookie={message.reply_serial}"
    lines = [header + f'  Timestamp="{format_timestamp(timestamp)}"']
    addresses = "".join(f"  {label}={output.highlight(getattr(message, attribute))}"
                        for label, attribute in ADDRESS_FIELDS if getattr(message, attribute))
    if addresses:
        lines.append(addresses)
    if is_error:
        text = body[0] if body and isinstance(body[0], str) else ""
        quoted = '"' + text + '"'
        lines.append(f"  ErrorName={output.red(message.error_name)}  ErrorMessage={output.red(quoted)}")
    if message.sender and message.sender.startswith(":"):
        lines.append(f"  UniqueName={message.sender}")
    lines.append(format_verbose(message.signature, body, prefix="  "))
    return "\n".join(lines) + "\n"


def message_json(message: Header, raw: bytes, timestamp: float) -> dict[str, Any]:
    """One message as busctl monitor --json shows it."""
    data: dict[str, Any] = {"type": TYPE_NAMES[message.type], "endian": chr(raw[0]), "flags": raw[2],
                            "version": raw[3], "cookie": message.serial}
    if message.reply_serial:
        data["reply_cookie"] = message.reply_serial
    data["timestamp-realtime"] = int(timestamp * 1_000_000)
    for _, attribute in ADDRESS_FIELDS:
        if getattr(message, attribute):
            data[attribute] = getattr(message, attribute)
    if message.error_name:
        data["error_name"] = message.error_name
    data["payload"] = json_body(message.signature, read_body(raw, message))
    return data


def _monitor_printer(output: Output) -> Tap:
    def show(message: Header, raw: bytes, timestamp: float) -> None:
        if output.is_json:
            output.json(message_json(message, raw, timestamp))
        else:
            output.line(message_text(message, raw, timestamp, output))
        output.flush()
    return show


async def _watch(ctx: Context[WireLink], services: list[str], tap: Tap) -> int:
    rules = match_rules(services, ctx.options.match)
    await become_monitor(ctx.bus, rules, tap)
    await run_until_stopped(ctx.bus, None if ctx.options.quiet else MONITORING_NOTICE)
    return EXIT_OK


async def monitor(ctx: Context[WireLink], args: list[str]) -> int:
    return await _watch(ctx, args, _monitor_printer(ctx.output))


# ---- capture ----

def _capture_writer(stream: Any, snaplen: int) -> Tap:
    def write(message: Header, raw: bytes, timestamp: float) -> None:
        stream.write(enhanced_packet(raw, timestamp, snaplen))
        stream.flush()
    return write


async def capture(ctx: Context[WireLink], args: list[str]) -> int:
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

