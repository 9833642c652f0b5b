"""The assembled daemon: the bus, its listeners and accept loop, the launcher, signals and reload."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from typing import Any, Callable

from .._extensions import mode as extension_mode
from ..bus.driver_policy import POLICY_INTERFACE, policy_mode
from ..bus.router import Bus
from ..bus.observers import BusObserver
from ..bus.ports import Credentials
from ..interfaces import introspection_xml
from ..launcher.activation import Activation, install_activation
from ..launcher.policy import compile_policy
from ..transport.connection import Connection, HandshakeDeadlines, Lookups
from ..transport.keyring import KeyringDirectory
from ..transport.listeners import Listener, ListenError, listen
from ..wire.sasl_server import ServerAuthenticator
from ..wire.wellknown import DRIVER_NAME
from .machine_id import read_machine_id
from .notify import Watchdog, notify_stopping
from .settings import DaemonSettings

try:
    import uvloop
except ImportError:
    uvloop = None

log = logging.getLogger("busd")

_KEYRING = KeyringDirectory()  # the bus user's keyrings: one for every connection (each lookup finds them anew)


class Daemon(BusObserver):
    """One bus: its listeners and the Bus object behind them."""

    def __init__(self, settings: DaemonSettings, reload_settings: Callable[[], DaemonSettings] | None = None):
        self.settings = settings
        self.reload_settings = reload_settings
        self.guid = os.urandom(16).hex()  # the server GUID: 128 random bits, as the uuid module's would be
        self.listeners: list[Listener] = []
        self.bus: Bus | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.deadlines: HandshakeDeadlines | None = None  # auth_timeout of incomplete connections, once serving
        self._stopped: asyncio.Future | None = None
        self._accept_paused: set[int] = set()
        self._full_of_incomplete = False  # max_incomplete_connections reached: not accepting
        self._serial = 0
        self.activation: Activation | None = None  # once serving
        self.watchdog: Watchdog | None = None  # when systemd asked for keep-alives
        self.bridge: Any = None  # the BridgeManager, made by process.start once the bus serves
        self.lookups = Lookups()  # the user database and the cookie keyring, asked in threads
        self.metrics: Any = None  # metrics.Metrics when --metrics or <busd:metrics> asks (metrics_setup.py)
        self.audit_mode = False  # <busd:policy mode="audit"/>: denials are logged, not enforced

    # ------------------------------------------------------------ before the loop

    def bind(self, addresses: list[str] | None = None) -> None:
        """Bind every listen address (before forking, so failures reach the caller)."""
        for text in addresses or self.settings.listen:
            self.listeners.extend(listen(text))

    def addresses(self) -> str:
        """The address to print: every listener's, each with the guid, ';'-separated."""
        return ";".join(f"{l.address},guid={self.guid}" for l in self.listeners if l.address)

    # ------------------------------------------------------------ the loop

    async def serve(self, ready: Callable[[], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.deadlines = HandshakeDeadlines(loop)
        self.bus = Bus(loop, self.guid, self.settings.limits, self.settings.bus_type,
                       machine_id=read_machine_id(), introspection=introspection_xml(DRIVER_NAME))
        self.bus.add_observer(self)  # ReloadConfig and room for incomplete connections
        if self.settings.config is not None:
            self.bus.set_policy(compile_policy(self.settings.config))
        self._policy_changed()
        settings = self.settings
        self.activation = install_activation(self.bus, settings.servicedirs, settings.servicehelper,
                                             self.addresses(), settings.systemd_activation)
        if self.metrics is not None:
            await self.metrics.start(self.bus)
        self._stopped = loop.create_future()
        loop.set_exception_handler(self._on_loop_error)
        for listener in self.listeners:
            loop.add_reader(listener.sock.fileno(), self._on_accept, listener)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop, signal.Signals(signum).name)
        loop.add_signal_handler(signal.SIGHUP, self._reload_from_signal)
        if ready is not None:
            ready()
        self.watchdog = Watchdog.from_environment(loop)
        log.info("busd ready on %s (per-message path: %s)", self.addresses(), extension_mode())
        try:
            await self._stopped
        finally:
            self.shutdown()

    def _policy_changed(self) -> None:
        """dev.busd.Policy1 is introspected while the bus enforces (or audits) a policy; audit mode is noted."""
        mode = policy_mode(self.bus)
        self.audit_mode = mode == "audit"
        driver = self.bus.driver
        if mode == "none":
            driver.remove_interface(POLICY_INTERFACE)
        else:
            text = introspection_xml(POLICY_INTERFACE)
            start = text.index("  <interface ")
            driver.add_interface(POLICY_INTERFACE, text[start:text.index("</interface>", start) + 13],
                                 driver.policy_methods.properties)

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """A callback raised: one log line says what (the bus carries on); --log-level=debug adds where."""
        exc = context.get("exception")
        what = context.get("message") or "unexpected error in the event loop"
        if exc is None:
            log.error("%s", what)
            return
        log.error("%s: %s: %s", what, type(exc).__name__, exc)
        log.debug("the error happened here", exc_info=exc)

    def stop(self, why: str = "stop requested") -> None:
        log.info("shutting down (%s)", why)
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def shutdown(self) -> None:
        loop = self.loop
        notify_stopping()
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.activation is not None:
            self.activation.close()
        for listener in self.listeners:
            try:
                loop.remove_reader(listener.sock.fileno())
            except (ValueError, OSError):
                pass
            listener.close()
        self.listeners = []
        if self.metrics is not None:
            self.metrics.close()
        if self.deadlines is not None:
            self.deadlines.close()
        if self.bus is not None:
            self.bus.close()
        self.lookups.close()

    # ------------------------------------------------------------ accepting

    def _make_authenticator(self, unix: bool) -> Callable[[Credentials], ServerAuthenticator]:
        settings = self.settings
        mechanisms = tuple(settings.auth) or ("EXTERNAL",)

        def make(creds: Credentials) -> ServerAuthenticator:
            return ServerAuthenticator(self.guid, mechanisms=mechanisms, peer_uid=creds.uid,
                                       allow_anonymous=settings.allow_anonymous, unix_fd_possible=unix,
                                       keyring=_KEYRING, defer_cookies=True)
        return make

    def _on_accept(self, listener: Listener) -> None:
        """One connection per readiness, as dbus-daemon: the listener stays readable while more wait, so a
        burst is taken one per loop turn, between other peers' reads, and a lone connection costs no
        accept() that finds the queue empty (an exception per connection under churn)."""
        bus = self.bus
        limits = bus.limits
        if bus.incomplete_connections >= limits.max_incomplete_connections:
            self._stop_accepting_incomplete()
            return
        try:
            sock = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self._pause_accepting(listener, exc)
                return
            log.warning("accept failed on %s: %s", listener.address, exc)
            return
        self._serial += 1
        try:
            conn = Connection(bus, sock, self._make_authenticator(listener.unix), f"#{self._serial}",
                              self.lookups, listener.unix)
        except OSError as exc:
            log.warning("could not set up a connection: %s", exc)
            sock.close()
            return
        if not conn.closed:
            self.deadlines.start(conn, limits.auth_timeout)

    def incomplete_room(self) -> None:
        self._resume_accepting_incomplete()

    def _stop_accepting_incomplete(self) -> None:
        """As dbus-daemon at max_incomplete_connections: leave new connections in the kernel's
        queue, dropping none, until an incomplete one says Hello or closes."""
        if not self._full_of_incomplete:
            self._full_of_incomplete = True
            log.warning("not accepting connections while max_incomplete_connections=%d are "
                        "authenticating or waiting to say Hello", self.bus.limits.max_incomplete_connections)
        for listener in self.listeners:  # (a listener resumed after EMFILE meanwhile too)
            self.loop.remove_reader(listener.sock.fileno())

    def _resume_accepting_incomplete(self) -> None:
        if not self._full_of_incomplete:
            return
        self._full_of_incomplete = False
        log.info("accepting connections again (below max_incomplete_connections)")
        for listener in self.listeners:
            if listener.sock.fileno() not in self._accept_paused:
                self.loop.add_reader(listener.sock.fileno(), self._on_accept, listener)

    def _pause_accepting(self, listener: Listener, exc: OSError) -> None:
        """Out of fds: stop accepting for a moment rather than spin on the listener."""
        fd = listener.sock.fileno()
        if fd in self._accept_paused:
            return
        log.warning("accept paused on %s for 1s: %s", listener.address, exc.strerror)
        self._accept_paused.add(fd)
        self.loop.remove_reader(fd)

        def resume() -> None:
            self._accept_paused.discard(fd)
            if listener in self.listeners:
                self.loop.add_reader(fd, self._on_accept, listener)
        self.loop.call_later(1.0, resume)

    # ------------------------------------------------------------ reload

    def reload_requested(self) -> None:
        self.reload()

    def _reload_from_signal(self) -> None:
        try:
            self.reload()
        except Exception as exc:
            log.error("reload failed, keeping the old configuration: %s", exc)

    def reload(self) -> None:
        """Re-read the configuration; every connection stays. Raises if the new one is invalid."""
        if self.reload_settings is None:
            return
        new = self.reload_settings()
        # Compile first: a policy that does not compile must leave everything as it was.
        policy = compile_policy(new.config) if new.config is not None else None
        self.settings.auth = new.auth
        self.settings.allow_anonymous = new.allow_anonymous
        self.settings.servicedirs = new.servicedirs
        self.settings.servicehelper = new.servicehelper
        self.settings.config = new.config
        self.bus.limits = new.limits
        self.settings.limits = new.limits
        self.lookups.users.forget()  # as dbus-daemon flushes its user database cache on reload
        if policy is not None:
            self.bus.set_policy(policy)
            self._policy_changed()
        self.bus.config_reloaded(new)
        if self.activation is not None:
            self.activation.reload(new.servicedirs, new.servicehelper)
        log.info("configuration reloaded")


def run(settings: DaemonSettings, daemon: Daemon, ready: Callable[[], None] | None = None) -> None:
    """Run the daemon's loop until it is stopped (uvloop when importable)."""
    if uvloop is not None:
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()
    with runner:
        runner.run(daemon.serve(ready))


__all__ = ["Daemon", "DaemonSettings", "ListenError", "run"]
