"""Well-known name ownership: owners, queues, flags and the signals each change causes.

Theory. Every well-known name has a queue of (peer, flags); the head is the
primary owner. A request by a peer already in the queue updates its flags. The
registry does no I/O: each operation returns the reply code and a list of
`NameEvent`s (in the order dbus-daemon emits them) for the bus to turn into
NameOwnerChanged, NameLost and NameAcquired signals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

# RequestName flags
ALLOW_REPLACEMENT = 0x1
REPLACE_EXISTING = 0x2
DO_NOT_QUEUE = 0x4

# RequestName replies
PRIMARY_OWNER = 1
IN_QUEUE = 2
EXISTS = 3
ALREADY_OWNER = 4

# ReleaseName replies
RELEASED = 1
NON_EXISTENT = 2
NOT_OWNER = 3


@dataclass(frozen=True, slots=True)
class NameEvent:
    """A change to announce: kind is "owner_changed", "lost" or "acquired"."""

    kind: str
    name: str
    old_owner: Hashable | None = None
    new_owner: Hashable | None = None


class _Entry:
    __slots__ = ("peer", "flags")

    def __init__(self, peer: Hashable, flags: int):
        self.peer = peer
        self.flags = flags


class NameRegistry:
    """Owners and queues of well-known names. Peers are any hashable objects."""

    def __init__(self) -> None:
        self._queues: dict[str, list[_Entry]] = {}
        self._names_of: dict[Hashable, set[str]] = {}

    def owner(self, name: str) -> Hashable | None:
        queue = self._queues.get(name)
        return queue[0].peer if queue else None

    def queued_owners(self, name: str) -> list[Hashable]:
        return [entry.peer for entry in self._queues.get(name, ())]

    def names(self) -> list[str]:
        return list(self._queues)

    def owned_by(self, peer: Hashable) -> list[str]:
        """Names `peer` is the primary owner of."""
        return [name for name in self._names_of.get(peer, ()) if self._queues[name][0].peer is peer]

    def queued_count(self, peer: Hashable) -> int:
        """Names `peer` owns or waits for (what max_names_per_connection counts)."""
        return len(self._names_of.get(peer, ()))

    def request(self, name: str, peer: Hashable, flags: int) -> tuple[int, list[NameEvent]]:
        queue = self._queues.get(name)
        if not queue:
            self._queues[name] = [_Entry(peer, flags)]
            self._names_of.setdefault(peer, set()).add(name)
            return PRIMARY_OWNER, [NameEvent("owner_changed", name, None, peer),
                                   NameEvent("acquired", name, None, peer)]
        primary = queue[0]
        if primary.peer is peer:
            primary.flags = flags
            return ALREADY_OWNER, []
        mine = next((e for e in queue if e.peer is peer), None)
        if (flags & REPLACE_EXISTING) and (primary.flags & ALLOW_REPLACEMENT):
            if mine is not None:
                queue.remove(mine)
            queue.insert(0, _Entry(peer, flags))
            self._names_of.setdefault(peer, set()).add(name)
            events = [NameEvent("owner_changed", name, primary.peer, peer),
                      NameEvent("lost", name, primary.peer, peer),
                      NameEvent("acquired", name, primary.peer, peer)]
            if primary.flags & DO_NOT_QUEUE:
                queue.remove(primary)
                self._forget(primary.peer, name)
            return PRIMARY_OWNER, events
        if flags & DO_NOT_QUEUE:
            if mine is not None:
                queue.remove(mine)
                self._forget(peer, name)
            return EXISTS, []
        if mine is not None:
            mine.flags = flags
        else:
            queue.append(_Entry(peer, flags))
            self._names_of.setdefault(peer, set()).add(name)
        return IN_QUEUE, []

    def release(self, name: str, peer: Hashable) -> tuple[int, list[NameEvent]]:
        queue = self._queues.get(name)
        if not queue:
            return NON_EXISTENT, []
        index = next((i for i, e in enumerate(queue) if e.peer is peer), None)
        if index is None:
            return NOT_OWNER, []
        return RELEASED, self._remove_at(name, queue, index)

    def remove_peer(self, peer: Hashable) -> list[NameEvent]:
        """Drop every name and queue place of a disconnected peer."""
        events: list[NameEvent] = []
        for name in sorted(self._names_of.get(peer, ())):
            queue = self._queues[name]
            index = next(i for i, e in enumerate(queue) if e.peer is peer)
            events.extend(self._remove_at(name, queue, index, disconnected=True))
        self._names_of.pop(peer, None)
        return events

    def _remove_at(self, name: str, queue: list[_Entry], index: int, disconnected: bool = False) -> list[NameEvent]:
        entry = queue.pop(index)
        self._forget(entry.peer, name)
        if index != 0:
            return []
        if not queue:
            del self._queues[name]
            events = [NameEvent("owner_changed", name, entry.peer, None)]
            if not disconnected:
                events.append(NameEvent("lost", name, entry.peer, None))
            return events
        successor = queue[0].peer
        events = [NameEvent("owner_changed", name, entry.peer, successor)]
        if not disconnected:
            events.append(NameEvent("lost", name, entry.peer, successor))
        events.append(NameEvent("acquired", name, entry.peer, successor))
        return events

    def _forget(self, peer: Hashable, name: str) -> None:
        names = self._names_of.get(peer)
        if names is not None:
            names.discard(name)
            if not names:
                del self._names_of[peer]
