"""The federation's connection to NATS: connect (with backoff), authenticate, reconnect, one log line per change.

nats-py does the protocol, reconnection and re-subscription; this module turns
busd's settings into its options (TLS for tls://, a .creds file or an NKey seed
file), keeps trying until the first connection succeeds, and tells the
federation when the connection comes and goes. It is imported only when a
nats:// upstream is configured, and it is the only module that imports nats.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import MaxPayloadError

from .settings import BridgeSettings

log = logging.getLogger("busd.bridge")

INITIAL_BACKOFF = 0.2
MAX_BACKOFF = 5.0
RECONNECT_WAIT = 0.5  # between nats-py's reconnection attempts (a restarted server is back quickly)
PING_INTERVAL = 2  # a server that stops answering (cable pulled) is given up after 2 missed pings

__all__ = ["Msg", "NatsLink", "plaintext_remote_urls"]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plaintext_remote_urls(upstream: str) -> list[str]:
    """The nats:// URLs (no TLS) that name a host other than this machine."""
    return [url for url in upstream.split(",") if url.startswith("nats://")
            and not _loopback(urlsplit(url).hostname or "")]


def _auth_options(settings: BridgeSettings) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if settings.credentials:
        with open(settings.credentials, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if "BEGIN NATS USER JWT" in text:
            options["user_credentials"] = settings.credentials
        else:
            options["nkeys_seed"] = settings.credentials
    if any(url.startswith("tls://") for url in settings.upstream.split(",")):
        options["tls"] = ssl.create_default_context()
    return options


def _safe(url: str) -> str:
    """A URL for logs, without a password."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


class NatsLink:
    """The federation's NATS connection: `nc` once connected; `on_up(first)` and `on_down(reason)` on changes."""

    def __init__(self, settings: BridgeSettings, on_up: Callable[[bool], None], on_down: Callable[[str], None]):
        self.settings = settings
        self.servers = settings.upstream.split(",")
        self.shown = ",".join(_safe(url) for url in self.servers)
        self.on_up, self.on_down = on_up, on_down
        self.nc: Client | None = None
        self.connected = False
        self.connects = 0
        self.last_error = ""
        self.closing = False
        self.warned = False  # about failing to connect the first time

    async def run(self) -> None:
        """Connect, retrying with backoff until the first connection; nats-py reconnects after that."""
        for url in plaintext_remote_urls(self.settings.upstream):
            log.warning("federation: %s is not on this machine and not TLS: D-Bus messages cross the network in "
                        "plaintext; use tls://HOST:PORT", _safe(url))
        delay = INITIAL_BACKOFF
        while not self.closing:
            nc = nats.NATS()
            try:
                await nc.connect(
                    servers=self.servers, name=f"busd {self.settings.node_name}", connect_timeout=2,
                    allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=RECONNECT_WAIT,
                    ping_interval=PING_INTERVAL, max_outstanding_pings=2, dont_randomize=False,
                    error_cb=self._error, disconnected_cb=self._disconnected, reconnected_cb=self._reconnected,
                    **_auth_options(self.settings))
            except Exception as exc:  # nats-py raises its own errors and OSErrors alike
                self.last_error = str(exc) or type(exc).__name__
                await _quiet_close(nc)
                if not self.warned:
                    self.warned = True
                    log.warning("federation: cannot connect to NATS %s: %s; retrying with backoff up to %g s",
                                self.shown, self.last_error, MAX_BACKOFF)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            if self.closing:
                await _quiet_close(nc)
                return
            self.nc = nc
            self._up(first=True)
            return

    def _up(self, first: bool) -> None:
        self.connected = True
        self.connects += 1
        self.last_error = ""
        self.on_up(first)

    async def _error(self, exc: Exception) -> None:
        self.last_error = str(exc) or type(exc).__name__
        if not self.connects and not self.warned and not self.closing:
            # Not connected yet, and nats-py retries by itself (forever): one line until it succeeds (a
            # connection lost later has its own line).
            self.warned = True
            log.warning("federation: cannot connect to NATS %s: %s; retrying every %g s", self.shown,
                        self.last_error, RECONNECT_WAIT)
        else:
            log.debug("federation: NATS error: %s", self.last_error)

    async def _disconnected(self) -> None:
        if self.connected and not self.closing:
            self.connected = False
            self.on_down(self.last_error or "the connection closed")

    async def _reconnected(self) -> None:
        if not self.closing:
            self._up(first=False)

    def send(self, subject: str, data: bytes, reply: str = "") -> bool:
        """Publish now, without a task per message (nats-py's publish only queues bytes for its flusher,
        unless its buffer is full: then a task finishes it). `reply`: where the answer goes. False when not
        sent (the reason is logged)."""
        nc = self.nc
        if nc is None or not self.connected:
            return False
        coroutine = nc.publish(subject, data, reply=reply)
        try:
            waiting_on = coroutine.send(None)
        except StopIteration:
            return True
        except MaxPayloadError:
            log.warning("federation: a %d-byte message is over NATS's max_payload; not sent to %s", len(data),
                        subject)
            return False
        except Exception as exc:  # the connection went as we sent: heartbeats restore the rest
            log.debug("federation: cannot publish on %s: %s", subject, exc)
            return False
        asyncio.get_running_loop().create_task(_finish(_Resumed(coroutine, waiting_on)))
        return True

    async def close(self) -> None:
        self.closing = True
        nc, self.nc = self.nc, None
        self.connected = False
        if nc is not None:
            await _quiet_close(nc)


class _Resumed:
    """A coroutine already started by hand (NatsLink.send), awaitable from where it suspended."""

    def __init__(self, coroutine: Any, waiting_on: Any):
        self.coroutine, self.waiting_on = coroutine, waiting_on

    def __await__(self):
        value = self.waiting_on
        while True:
            try:
                sent = yield value  # the future it waits on goes up to the task, which wakes us when it is done
            except BaseException as exc:  # noqa: BLE001 - thrown in by the task (cancellation): pass it on
                try:
                    value = self.coroutine.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                value = self.coroutine.send(sent)
            except StopIteration as stop:
                return stop.value


async def _finish(resumed: _Resumed) -> None:
    try:
        await resumed
    except Exception as exc:  # the connection went while nats-py flushed
        log.debug("federation: a publish failed while NATS's buffer drained: %s", exc)


async def _quiet_close(nc: Client) -> None:
    try:
        await nc.close()
    except Exception:  # closing a connection that never opened, or is gone already
        pass
