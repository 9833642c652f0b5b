"""Service activation, the bus side: messages held for names being started, in arrival order.

Theory (as dbus-broker's bus/activation.c). A message to an activatable name
nobody owns opens a `PendingStart` for that name: the message, and every later
one for the name, is held in arrival order while the launcher starts the
service (launcher/activation.py: .service files, spawning, systemd). When a
connection acquires the name, each held message is handed back to
`Bus.receive()`, so it takes the ordinary path (policy, reply tracking,
monitors) as if it had just arrived. When the start fails, every held caller
gets the error dbus-daemon would send. Nothing here reads a file or starts a
process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..wire.message import Header
from .core import _close

if TYPE_CHECKING:
    from .core import Bus, Peer

SYSTEMD_NAME = "org.freedesktop.systemd1"


class ActivationError(Exception):
    """A start that cannot go on: `name` is the D-Bus error every held caller receives."""

    def __init__(self, name: str, text: str):
        super().__init__(text)
        self.name = name
        self.text = text


class StartedProcess(Protocol):
    """The launcher's handle on a spawned service: killed when its start times out."""

    def kill(self) -> None: ...


class HeldMessage:
    """A message that triggered or joined an auto-start; re-dispatched once the name has an owner."""

    __slots__ = ("peer", "buf", "h", "fds")

    def __init__(self, peer: "Peer", buf: bytes, h: Header, fds: list[int] | None):
        self.peer, self.buf, self.h, self.fds = peer, buf, h, fds

    def deliver(self, bus: "Bus") -> None:
        if self.peer.conn.closed:
            _close(self.fds)
            return
        # Monitors saw the message when it arrived; as with dbus-daemon they do not see it a second time.
        bus.receive(self.peer, self.buf, self.h, self.fds, monitored=False)

    def fail(self, bus: "Bus", error: str, text: str) -> None:
        _close(self.fds)
        if not self.peer.conn.closed:
            bus.refuse(self.peer, self.h, error, text)  # monitors see it even when no reply is expected


class StartRequest:
    """A StartServiceByName call: answered SUCCESS once the name has an owner."""

    __slots__ = ("peer", "serial", "wants_reply")

    def __init__(self, peer: "Peer", h: Header):
        self.peer, self.serial, self.wants_reply = peer, h.serial, not h.no_reply_expected

    def deliver(self, bus: "Bus") -> None:
        if self.wants_reply and not self.peer.conn.closed:
            bus.send_reply(self.peer, self.serial, "u", [1])  # DBUS_START_REPLY_SUCCESS

    def fail(self, bus: "Bus", error: str, text: str) -> None:
        if self.wants_reply:
            bus.send_error(self.peer, self.serial, error, text)


class SystemdRequest:
    """The bus's own request to systemd, held until systemd connects and owns its name.

    Monitors saw it when it was made (as on dbus-daemon); delivering it later does not
    show it to them again.
    """

    __slots__ = ("message",)

    def __init__(self, message: bytes):
        self.message = message

    def deliver(self, bus: "Bus") -> None:
        systemd = bus.registry.owner(SYSTEMD_NAME)
        if systemd is not None and not systemd.conn.closed:
            systemd.conn.queue(self.message, b"")

    def fail(self, bus: "Bus", error: str, text: str) -> None:
        pass  # the start that asked for it has its own timeout


class PendingStart:
    """A name being started, and everything waiting for it in arrival order."""

    __slots__ = ("name", "service", "entries", "timer", "process", "systemd_unit")

    def __init__(self, name: str, service: Any):  # the launcher's ServiceFile, or None (systemd itself)
        self.name = name
        self.service = service
        self.entries: list[HeldMessage | StartRequest | SystemdRequest] = []
        self.timer: Any = None
        self.process: StartedProcess | None = None
        self.systemd_unit: str | None = None


__all__ = ["ActivationError", "HeldMessage", "PendingStart", "StartRequest", "StartedProcess", "SystemdRequest"]
