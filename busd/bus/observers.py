"""What the bus tells the rooms around it: one observer interface, registered explicitly.

The bus keeps a list of `BusObserver`s (`Bus.add_observer`); whoever assembles the
daemon registers them (the daemon itself, the launcher's activation, the bridge).
Every method is a no-op here, so an observer overrides only what it reacts to.
Observers are called in registration order, after the bus has done its own part
(for name changes: after the driver's signals are queued).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..wire.message import Header
    from .peer import Peer
    from .match import MatchRule
    from .ownership import NameEvent


class BusObserver:
    """Events of a bus, for the daemon, the launcher and the bridge."""

    def names_changed(self, events: list["NameEvent"]) -> None:
        """Names changed owner, were acquired or lost (every change: Hello, RequestName, disconnects, ...)."""

    def match_added(self, peer: "Peer", rule: "MatchRule") -> None:
        """`peer` added a match rule with AddMatch."""

    def match_removed(self, peer: "Peer", rule: "MatchRule") -> None:
        """`peer` removed a match rule with RemoveMatch."""

    def driver_signal(self, peer: "Peer", buf: bytes, h: "Header") -> None:
        """A signal addressed to the bus itself arrived (systemd's ActivationFailure), before monitors see it."""

    def reload_requested(self) -> None:
        """A peer called ReloadConfig: re-read the configuration now; raise if it is invalid (the caller
        gets Failed with the reason and the old configuration stays)."""

    def config_reloaded(self, settings: Any) -> None:
        """The daemon re-read its configuration; `settings` are the daemon's own, opaque to the bus."""

    def incomplete_room(self) -> None:
        """Incomplete connections dropped below max_incomplete_connections: accepting may resume."""


__all__ = ["BusObserver"]
