"""Service activation, the bus side: messages held for names being started, in arrival order.

Theory (as dbus-broker's bus/activation.c). A message to an activatable name
nobody owns opens a `PendingStart` for that name in `PendingStarts`: the
message, and every later one for the name, is held in arrival order, a timer
runs (service_start_timeout), and the `Activator` (the launcher: .service files,
spawning, systemd) is asked to start the name. When a connection acquires the
name, each held message is handed back to `Bus.receive()`, so it takes the
ordinary path (policy, reply tracking, monitors) as if it had just arrived. When
the start fails or times out, every held caller gets the error dbus-daemon would
send. A held message's bytes and fds stay charged to its sender's user (ledger
IncomingBytes/IncomingFDs) until it goes on or fails: past the quota, the
sender gets LimitsExceeded instead of the bus holding it. Nothing here reads a
file or starts a process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from ..wire.message import Header
from . import errors
from .fds import close_fds
from .histogram import START_BOUNDS, Histogram
from .observers import BusObserver

if TYPE_CHECKING:
    from .ledger import Ledger, UserLedger
    from .limits import Limits
    from .outbox import DriverOutbox
    from .ownership import NameEvent, NameRegistry
    from .peer import Peer
    from .policy import BusPolicy

log = logging.getLogger("busd.activation")

SYSTEMD_NAME = "org.freedesktop.systemd1"


class ActivationError(Exception):
    """A start that cannot go on: `name` is the D-Bus error every held caller receives."""

    def __init__(self, name: str, text: str):
        super().__init__(text)
        self.name = name
        self.text = text


class Activator(Protocol):
    """What the bus asks of the launcher: which names can start, and starting them."""

    def is_activatable(self, name: str, *, auto_start: bool = True) -> bool:
        """Whether `name` can be started: by a message to it (`auto_start`), or else by StartServiceByName,
        which needs a .service file (systemd itself, with systemd activation, starts only by message)."""

    def activatable_names(self) -> list[str]:
        """The names ListActivatableNames returns (without the bus's own)."""

    def start(self, name: str, requester: Peer | None) -> None:
        """Begin starting `name` for `requester`; raise ActivationError if it cannot. The launcher
        reports a failure later with PendingStarts.fail(); success is the name getting an owner.
        `requester` None is the bus itself waiting for systemd to connect: nothing is started then."""

    def cancel(self, name: str) -> None:
        """The bus stopped waiting for `name` (its start timed out): stop what was started."""

    def environment_updated(self, env: dict[str, str]) -> None:
        """UpdateActivationEnvironment added `env` to Driver.activation_environment."""


class ActivationHost(Protocol):
    """What pending starts need of the bus (busd.bus.router.Bus is one)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def limits(self) -> Limits: ...

    @property
    def policy(self) -> BusPolicy: ...

    @property
    def registry(self) -> NameRegistry: ...

    @property
    def outbox(self) -> DriverOutbox: ...

    @property
    def ledger(self) -> Ledger: ...

    def receive(self, peer: Peer, buf: bytes, h: Header, fds: list[int] | None, monitored: bool = True) -> None:
        """Route a held message as if it had just arrived (`monitored=False`: monitors saw it already)."""


class HeldMessage:
    """A message that triggered or joined an auto-start; re-dispatched once the name has an owner."""

    __slots__ = ("peer", "buf", "h", "fds", "charged_to")

    def __init__(self, peer: Peer, buf: bytes, h: Header, fds: list[int] | None):
        self.peer, self.buf, self.h, self.fds = peer, buf, h, fds
        self.charged_to: UserLedger | None = None  # while held: the user its bytes and fds are charged to

    def deliver(self, bus: ActivationHost) -> None:
        if self.peer.conn.closed:
            close_fds(self.fds)
            return
        # Monitors saw the message when it arrived; as with dbus-daemon they do not see it a second time.
        bus.receive(self.peer, self.buf, self.h, self.fds, monitored=False)

    def fail(self, bus: ActivationHost, error: str, text: str) -> None:
        close_fds(self.fds)
        if not self.peer.conn.closed:
            bus.outbox.refuse(self.peer, self.h, error, text)  # monitors see it even when no reply is expected


class StartRequest:
    """A StartServiceByName call: answered SUCCESS once the name has an owner."""

    __slots__ = ("peer", "serial", "wants_reply")

    def __init__(self, peer: Peer, h: Header):
        self.peer, self.serial, self.wants_reply = peer, h.serial, not h.no_reply_expected

    def deliver(self, bus: ActivationHost) -> None:
        if self.wants_reply and not self.peer.conn.closed:
            bus.outbox.send_reply(self.peer, self.serial, "u", [1])  # DBUS_START_REPLY_SUCCESS

    def fail(self, bus: ActivationHost, error: str, text: str) -> None:
        if self.wants_reply:
            bus.outbox.send_error(self.peer, self.serial, error, text)


class SystemdRequest:
    """The bus's own request to systemd, held until systemd connects and owns its name.

    Monitors saw it when it was made (as on dbus-daemon); delivering it later does not
    show it to them again.
    """

    __slots__ = ("message",)

    def __init__(self, message: bytes):
        self.message = message

    def deliver(self, bus: ActivationHost) -> None:
        systemd = bus.registry.owner(SYSTEMD_NAME)
        if systemd is not None and not systemd.conn.closed:
            systemd.conn.queue(self.message, b"")

    def fail(self, bus: ActivationHost, error: str, text: str) -> None:
        pass  # the start that asked for it has its own timeout


Entry = HeldMessage | StartRequest | SystemdRequest


class PendingStart:
    """A name being started, and everything waiting for it in arrival order."""

    __slots__ = ("name", "entries", "timer", "started")

    def __init__(self, name: str):
        self.name = name
        self.entries: list[Entry] = []
        self.timer: Any = None
        self.started = time.monotonic()


class PendingStarts(BusObserver):
    """The names being started on a bus, their held messages and timers; the `activator` starts them."""

    def __init__(self, bus: ActivationHost, activator: Activator):
        self.bus = bus
        self.activator = activator
        self.pending: dict[str, PendingStart] = {}
        self.held = 0  # entries in all pending starts, against max_pending_service_starts
        # For the metrics: how each start ended, by name ("activated", or the error's last word), and how
        # long the ones that succeeded took. Names are those of .service files only, so the labels stay few.
        self.outcomes: dict[tuple[str, str], int] = {}
        self.durations = Histogram(START_BOUNDS)

    def waiting_for(self, name: str) -> bool:
        return name in self.pending

    def auto_start(self, peer: Peer, h: Header, buf: bytes, fds: list[int] | None) -> bool:
        """A message to a well-known name nobody owns: hold it and start the name. False: not activatable."""
        name = h.destination
        if not self.activator.is_activatable(name):
            return False
        bus = self.bus
        if bus.policy.enforced:
            verdict = peer.policy.can_send(h, (name,), False, len(fds) if fds else 0)
            if not verdict.allowed:
                log.warning("policy denied auto-starting %s for %s (uid %s) by send rule %s", name,
                            peer.unique_name, peer.credentials.uid, verdict.rule or "(default deny)")
                HeldMessage(peer, buf, h, fds).fail(bus, errors.ACCESS_DENIED,
                                                    f"Rejected send message: {h.describe()} "
                                                    f"(send rule {verdict.rule or 'default deny'})")
                return True
        self.hold(name, HeldMessage(peer, buf, h, fds), peer)
        return True

    def start_by_name(self, peer: Peer, h: Header, name: str) -> None:
        """StartServiceByName for an unowned activatable name: SUCCESS once it has an owner, or the error."""
        self.hold(name, StartRequest(peer, h), peer)

    def hold(self, name: str, entry: Entry, requester: Peer | None) -> None:
        """Hold `entry` until `name` has an owner, asking the activator to start it if nobody has yet."""
        bus = self.bus
        limit = bus.limits.max_pending_service_starts
        if self.held >= limit:
            entry.fail(bus, errors.LIMITS_EXCEEDED,
                       f"The maximum number of pending activations has been reached, activation of {name} "
                       f"failed (max_pending_service_starts={limit})")
            return
        if isinstance(entry, HeldMessage) and not self._charge(name, entry):
            return
        self.held += 1
        pending = self.pending.get(name)
        if pending is not None:
            pending.entries.append(entry)
            return
        pending = self.pending[name] = PendingStart(name)
        pending.entries.append(entry)
        timeout_ms = bus.limits.service_start_timeout
        pending.timer = bus.loop.call_later(timeout_ms / 1000, self._timed_out, pending, timeout_ms)
        try:
            self.activator.start(name, requester)
        except ActivationError as exc:
            self._fail(pending, exc.name, exc.text)

    def _charge(self, name: str, entry: HeldMessage) -> bool:
        """Charge a held message to its sender's user; False (and the sender told) when over the quota."""
        ledger = self.bus.ledger
        user = entry.peer.user
        if user is None:
            return True
        nfds = len(entry.fds) if entry.fds else 0
        over = ledger.hold_input(user, len(entry.buf), nfds)
        if over is not None:
            quota = ledger.quotas.of(over)
            ledger.refused(entry.peer, over, quota, f"messages held until {name} starts")
            entry.fail(self.bus, errors.LIMITS_EXCEEDED,
                       f"uid {user.uid} is at its {over} quota ({quota}): the bus will not hold more of its "
                       f"messages until {name} starts")
            return False
        entry.charged_to = user
        return True

    def _release(self, entries: list) -> None:
        ledger = self.bus.ledger
        for entry in entries:
            if isinstance(entry, HeldMessage) and entry.charged_to is not None:
                ledger.release_held(entry.charged_to, len(entry.buf), len(entry.fds) if entry.fds else 0)
                entry.charged_to = None

    def fail(self, name: str, error: str, text: str) -> None:
        """The launcher says the start of `name` failed: every held caller gets `error`."""
        pending = self.pending.get(name)
        if pending is not None:
            self._fail(pending, error, text)

    def names_changed(self, events: list[NameEvent]) -> None:
        """A name being started got its owner: what waited for it goes on."""
        if not self.pending:
            return
        for event in events:
            if event.kind == "owner_changed" and event.new_owner is not None:
                pending = self.pending.get(event.name)
                if pending is not None:
                    self._succeeded(pending)

    def close(self) -> None:
        for pending in self.pending.values():
            if pending.timer is not None:
                pending.timer.cancel()
            self._release(pending.entries)
            for entry in pending.entries:
                if isinstance(entry, HeldMessage):
                    close_fds(entry.fds)
        self.pending.clear()
        self.held = 0

    def _finish(self, pending: PendingStart) -> None:
        if self.pending.get(pending.name) is pending:
            del self.pending[pending.name]
        self.held -= len(pending.entries)
        self._release(pending.entries)
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None

    def _succeeded(self, pending: PendingStart) -> None:
        self._finish(pending)
        self.durations.observe(time.monotonic() - pending.started)
        key = (pending.name, "activated")
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        log.info("Successfully activated service '%s'", pending.name)
        for entry in pending.entries:
            entry.deliver(self.bus)

    def _fail(self, pending: PendingStart, error: str, text: str) -> None:
        self._finish(pending)
        key = (pending.name, error.rsplit(".", 1)[-1])
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        log.warning("Activated service '%s' failed: %s", pending.name, text)
        for entry in pending.entries:
            entry.fail(self.bus, error, text)

    def _timed_out(self, pending: PendingStart, timeout_ms: int) -> None:
        pending.timer = None
        self.activator.cancel(pending.name)
        self._fail(pending, errors.TIMED_OUT,
                   f"Failed to activate service '{pending.name}': timed out (service_start_timeout={timeout_ms}ms)")


__all__ = ["ActivationError", "ActivationHost", "Activator", "HeldMessage", "PendingStart", "PendingStarts",
           "StartRequest", "SystemdRequest"]
