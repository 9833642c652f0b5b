"""What the driver (org.freedesktop.DBus) needs of the bus that owns it: the DriverHost port.

The driver modules are typed against this Protocol instead of importing the
router, so the bus owns its driver without the two importing each other.
busd.bus.router.Bus is the one implementation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Collection, Protocol

if TYPE_CHECKING:
    from ..wire.message import Header
    from .limits import Limits
    from .ledger import Ledger
    from .match_index import MatchIndex
    from .observers import BusObserver
    from .outbox import DriverOutbox
    from .ownership import NameEvent, NameRegistry
    from .peer import Peer
    from .policy import BusPolicy


class DriverHost(Protocol):
    """The bus, as its driver sees it."""

    @property
    def guid(self) -> str: ...

    @property
    def bus_type(self) -> str:
        """The configuration's <type>: UpdateActivationEnvironment is refused on a "system" bus."""

    @property
    def limits(self) -> Limits: ...

    @property
    def peers(self) -> dict[str, Peer]:
        """Registered peers by unique name (monitors are not: they gave theirs up)."""

    @property
    def registry(self) -> NameRegistry: ...

    @property
    def matches(self) -> MatchIndex: ...

    @property
    def monitors(self) -> list[Peer]: ...

    @property
    def observers(self) -> list[BusObserver]: ...

    @property
    def outbox(self) -> DriverOutbox:
        """Where the driver's replies, errors and signals go out."""

    @property
    def incomplete_connections(self) -> int: ...

    @property
    def policy(self) -> BusPolicy:
        """The compiled policy (dev.busd.Policy1 asks it about messages nobody sent)."""

    @property
    def ledger(self) -> Ledger:
        """The per-user ledger: what the driver queues and what it lets peers keep is charged there."""

    def admit(self, peer: Peer) -> str | None:
        """`peer` says Hello: complete its connection and count it; or, when a connection limit refuses it, why."""

    def assign_unique_name(self, peer: Peer) -> str: ...

    def emit_name_events(self, events: list[NameEvent]) -> None:
        """Announce name changes (the driver's signals) and tell the observers."""

    def deliver_to_monitors(self, sender: Peer, buf: bytes, h: Header, fds: list[int] | None,
                            destination_names: Collection[str] | None = None) -> None: ...


__all__ = ["DriverHost"]
