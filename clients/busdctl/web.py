"""The `web` verb: a live page of the bus, served locally (the server is web_server.py, on aiohttp).

busdctl's link becomes the page's monitor (every message reaches the BusPicture); a second,
ordinary connection asks the driver who the peers are and makes the object browser's calls.
aiohttp is an optional dependency (`pip install 'busd[web]'`): without it, only this verb fails,
saying what to install.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import webbrowser

from .connection import DEFAULT_TIMEOUT, connect
from .context import Context
from .errors import EXIT_OK, BusError, CommandError, UsageError
from .link import WireLink
from .output import warn
from .traffic import become_monitor, run_until_stopped
from .web_bus import load_peers
from .web_model import BusPicture

DEFAULT_LISTEN = "127.0.0.1:0"
INSTALL_HINT = ("Hint: install it with pip install 'busd[web]' (or: python3 -m pip install aiohttp), "
                "from where busd is installed.")


def parse_listen(text: str) -> tuple[str, int]:
    """--listen=HOST:PORT, [IPV6]:PORT or PORT (on 127.0.0.1); port 0 takes any free port."""
    host, _, port_text = text.rpartition(":")
    host = host or "127.0.0.1"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise UsageError(f"Invalid --listen '{text}': give HOST:PORT, like 127.0.0.1:8080 (port 0: any free port)."
                         ) from None
    return host, port


def listen_option(text: str) -> tuple[str, int]:
    """--listen's argparse type: checked before busdctl connects to the bus."""
    try:
        return parse_listen(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("Invalid --listen ").rstrip(".")) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def web(ctx: Context[WireLink], args: list[str]) -> int:
    host, port = ctx.options.listen or parse_listen(DEFAULT_LISTEN)
    try:
        from .web_numbers import numbers_for
        from .web_server import WebSession, serve
    except ImportError as error:
        raise CommandError(f"busdctl web needs aiohttp, which is not installed ({error}).\n{INSTALL_HINT}") from None
    link = ctx.bus
    timeout = ctx.options.timeout if ctx.options.timeout is not None else DEFAULT_TIMEOUT
    bus = await connect(link.choice, timeout)
    try:
        picture = BusPicture()
        picture.set_own(bus.unique_name)
        picture.set_own(link.unique_name)
        await load_peers(bus, picture)
        session = WebSession(bus, picture, numbers=numbers_for(bus, picture))
        try:
            await become_monitor(link, [], picture.observe)
        except BusError as error:
            session.monitoring = (f"The bus does not let this user monitor it ({error.error_name}"
                                  f"{': ' + error.text if error.text else ''}). The map shows who is on the bus "
                                  "but no traffic, and the sequence stays empty; the browser and the numbers work.")
            warn(session.monitoring)
        try:
            served = await serve(session, host, port)
        except OSError as error:
            raise CommandError(f"Cannot listen on {host}:{port}: {error.strerror or error}.\n"
                               "Hint: pick another address with --listen=127.0.0.1:PORT.") from None
        try:
            _announce(ctx, served.url, host, link.choice.described)
            if ctx.options.open:
                await asyncio.get_running_loop().run_in_executor(None, webbrowser.open, served.url)
            await run_until_stopped(link, None)
        finally:
            await served.stop()
    finally:
        bus.close()
    return EXIT_OK


def _announce(ctx: Context[WireLink], url: str, host: str, bus: str) -> None:
    if ctx.output.is_json:
        ctx.output.json({"url": url, "bus": bus})
    else:
        ctx.output.line(url)
    ctx.output.flush()
    if not is_loopback(host):
        warn(f"Listening on {host}, not on loopback: anyone who can reach this machine and learns the URL's "
             "token can use the page with your bus rights.")
    if not ctx.options.quiet:
        warn(f"Serving a live page of {bus}; open the URL above (it carries the page's token). Ctrl-C stops.")
