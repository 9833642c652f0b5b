"""Bus names: owner tracking shared by subscriptions and watchers, the name watcher, and RequestName's flags and replies."""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import TYPE_CHECKING, Any, Callable

from busd.wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH

from .matching import MatchRule

if TYPE_CHECKING:
    from .bus import Bus

log = logging.getLogger("busd_client")

OwnerListener = Callable[[str | None, str | None], None]
"""Called with (old owner, new owner) when a tracked name changes hands."""


class NameFlag(enum.IntFlag):
    """RequestName flags (the D-Bus specification's DBUS_NAME_FLAG_*)."""

    NONE = 0
    ALLOW_REPLACEMENT = 1
    REPLACE_EXISTING = 2
    DO_NOT_QUEUE = 4


class RequestNameReply(enum.IntEnum):
    """RequestName's answer."""

    PRIMARY_OWNER = 1
    IN_QUEUE = 2
    EXISTS = 3
    ALREADY_OWNER = 4


class ReleaseNameReply(enum.IntEnum):
    """ReleaseName's answer."""

    RELEASED = 1
    NON_EXISTENT = 2
    NOT_OWNER = 3


def owner_changed_rule(name: str) -> MatchRule:
    """The narrowest rule that reports ownership changes of `name`."""
    return MatchRule.for_signal(DRIVER_NAME, DRIVER_PATH, DRIVER_INTERFACE,
                                "NameOwnerChanged", arg0=name)


class NameTracker:
    """Knows the current unique owner of one name, kept fresh by NameOwnerChanged.

    One tracker per name per bus, shared (reference-counted) by every
    subscription whose sender is that name and every watcher of it.  Its
    GetNameOwner reply and NameOwnerChanged signals are applied in the order
    they arrive on the connection, so the owner is never stale.
    """

    def __init__(self, bus: Bus, name: str) -> None:
        self.bus = bus
        self.name = name
        self.owner: str | None = None
        self.references = 0
        self.listeners: list[OwnerListener] = []
        self.ready: asyncio.Future[None] = bus._loop.create_future()
        self._subscription: Any = None

    async def start(self) -> None:
        """Add the NameOwnerChanged rule, then ask for the current owner."""
        try:
            self._subscription = await self.bus._subscribe(
                owner_changed_rule(self.name), self._on_owner_changed, before_ready=self._ask_owner)
        except BaseException as error:
            if not self.ready.done():
                self.ready.set_exception(error)
                self.ready.exception()  # retrieved: whoever awaits gets it, nobody else warns
            raise
        await self.ready

    def _ask_owner(self) -> None:
        # Sent right behind AddMatch, so every change after this reply arrives as a signal.
        def on_reply(reply: Any, error: BaseException | None) -> None:
            if self.ready.done():
                return
            if error is not None and not getattr(error, "name", "").endswith(".NameHasNoOwner"):
                self.ready.set_exception(error)
                self.ready.exception()
                return
            self._set_owner(reply[0] if error is None else None, notify=False)
            self.ready.set_result(None)

        self.bus._driver_call_soon("GetNameOwner", "s", [self.name], on_reply)

    def _on_owner_changed(self, message: Any) -> None:
        _, old_owner, new_owner = message.body
        self._set_owner(new_owner or None, notify=self.ready.done(), old=old_owner or None)

    def _set_owner(self, owner: str | None, notify: bool, old: str | None = None) -> None:
        previous = self.owner
        self.owner = owner
        if not notify:
            return
        if previous is None and old is not None and owner is not None:
            previous = old
        for listener in list(self.listeners):
            try:
                listener(previous, owner)
            except Exception:
                log.exception("name listener for %s failed", self.name)

    def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        if not self.ready.done():
            self.ready.cancel()


class NameWatcher:
    """Reports when a name gets an owner and when it loses it, like Qt's QDBusServiceWatcher.

    Right after it starts, exactly one of the callbacks reports the current
    state (as GDBus's g_bus_watch_name does); after that each change calls
    `on_vanished(name)` and/or `on_appeared(name, owner)` in order, a change of
    owner calling both.  Callbacks may be plain functions or coroutines.
    """

    def __init__(self, bus: Bus, name: str,
                 on_appeared: Callable[[str, str], Any] | None,
                 on_vanished: Callable[[str], Any] | None) -> None:
        self.bus = bus
        self.name = name
        self.on_appeared = on_appeared
        self.on_vanished = on_vanished
        self._tracker: NameTracker | None = None
        self._closed = False
        self._changed = asyncio.Event()
        self._task = bus._spawn(self._start())

    async def _start(self) -> None:
        tracker = self.bus._acquire_tracker(self.name)
        self._tracker = tracker
        try:
            await tracker.ready
        except Exception:
            log.exception("cannot watch name %s", self.name)
            raise
        if self._closed:
            return
        tracker.listeners.append(self._on_change)
        if tracker.owner is not None:
            self.bus._call_back(self.on_appeared, self.name, tracker.owner)
        else:
            self.bus._call_back(self.on_vanished, self.name)
        self._changed.set()

    def _on_change(self, old: str | None, new: str | None) -> None:
        if old is not None:
            self.bus._call_back(self.on_vanished, self.name)
        if new is not None:
            self.bus._call_back(self.on_appeared, self.name, new)
        self._changed.set()


    @property
    def owner(self) -> str | None:
        """The name's current unique owner, or None (also None until the watcher is ready)."""
        return self._tracker.owner if self._tracker is not None else None

    async def ready(self) -> None:
        """Wait until the watcher knows the current owner (and has reported it)."""
        await asyncio.shield(self._task)

    async def wait_for_owner(self, timeout: float | None = None) -> str:
        """Wait until the name has an owner and return it (at once if it already has one)."""
        return await asyncio.wait_for(self._wait(lambda owner: owner is not None), timeout)

    async def wait_vanished(self, timeout: float | None = None) -> None:
        """Wait until the name has no owner."""
        await asyncio.wait_for(self._wait(lambda owner: owner is None), timeout)

    async def _wait(self, condition: Callable[[str | None], bool]) -> Any:
        await self.ready()
        while not condition(self.owner):
            self._changed.clear()
            await self._changed.wait()
        return self.owner

    def close(self) -> None:
        """Stop watching; no callback runs after this."""
        if self._closed:
            return
        self._closed = True
        if self._tracker is not None:
            if self._on_change in self._tracker.listeners:
                self._tracker.listeners.remove(self._on_change)
            self.bus._release_tracker(self._tracker)
            self._tracker = None
        if not self._task.done():
            self._task.cancel()

    def __enter__(self) -> NameWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> NameWatcher:
        await self.ready()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
