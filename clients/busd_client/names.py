"""Bus names: RequestName/ReleaseName with their flags and replies, the names this connection owns, and the name watcher."""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Any, Callable

from busd.wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME

from ._router import Router
from ._signals import NameTracker, Route

log = logging.getLogger("busd_client")


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


class NameOwnership:
    """The well-known names this connection asked for: RequestName/ReleaseName, the names it owns
    (kept by NameAcquired/NameLost) and the callbacks run when one is acquired or lost."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.owned: set[str] = set()
        self._callbacks: dict[str, tuple[Callable[..., Any] | None, Callable[..., Any] | None]] = {}
        # The bus sends NameAcquired/NameLost without a match rule: a local route is enough.
        for member in ("NameAcquired", "NameLost"):
            router.signals.add_route(Route(self._is_name_signal, self._on_name_signal, member))

    async def request(self, name: str, flags: NameFlag, on_acquired: Callable[[str], Any] | None,
                      on_lost: Callable[[str], Any] | None) -> RequestNameReply:
        # Registered before the request: NameAcquired may arrive ahead of the reply.
        self._callbacks[name] = (on_acquired, on_lost)
        try:
            reply = await self.router.call_driver("RequestName", name, int(flags), signature="su")
        except BaseException:
            self._callbacks.pop(name, None)
            raise
        result = RequestNameReply(reply)
        if result == RequestNameReply.EXISTS:
            self._callbacks.pop(name, None)
        return result

    async def release(self, name: str) -> ReleaseNameReply:
        self._callbacks.pop(name, None)
        result = ReleaseNameReply(await self.router.call_driver("ReleaseName", name, signature="s"))
        self.owned.discard(name)
        return result

    def release_soon(self, name: str) -> None:
        """Send ReleaseName now without waiting for the answer: it gives the name back or leaves its
        queue.  Usable where awaiting is not (a cancelled task); later messages on this connection
        reach the bus after it."""
        self._callbacks.pop(name, None)
        self.owned.discard(name)
        if self.router.closed:
            return

        def on_reply(body: list[Any] | None, error: BaseException | None) -> None:
            if error is not None:
                log.warning("ReleaseName %s failed: %s", name, error)

        self.router.call_driver_soon("ReleaseName", "s", [name], on_reply)

    def _is_name_signal(self, message: Any) -> bool:
        return (message.sender == DRIVER_NAME and message.interface == DRIVER_INTERFACE
                and message.destination == self.router.unique_name)

    def _on_name_signal(self, message: Any) -> None:
        (name,) = message.body
        acquired = message.member == "NameAcquired"
        if acquired:
            self.owned.add(name)
        else:
            self.owned.discard(name)
        on_acquired, on_lost = self._callbacks.get(name, (None, None))
        self.router.call_back(on_acquired if acquired else on_lost, name)


class NameWatcher:
    """Reports when a name gets an owner and when it loses it, like Qt's QDBusServiceWatcher.

    Right after it starts, exactly one of the callbacks reports the current
    state (as GDBus's g_bus_watch_name does); after that each change calls
    `on_vanished(name)` and/or `on_appeared(name, owner)` in order, a change of
    owner calling both.  Callbacks may be plain functions or coroutines.
    """

    def __init__(self, router: Router, name: str,
                 on_appeared: Callable[[str, str], Any] | None,
                 on_vanished: Callable[[str], Any] | None) -> None:
        self.router = router
        self.name = name
        self.on_appeared = on_appeared
        self.on_vanished = on_vanished
        self._tracker: NameTracker | None = None
        self._closed = False
        self._changed = asyncio.Event()
        self._task = router.spawn(self._start())

    async def _start(self) -> None:
        tracker = self.router.signals.acquire_tracker(self.name)
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
            self.router.call_back(self.on_appeared, self.name, tracker.owner)
        else:
            self.router.call_back(self.on_vanished, self.name)
        self._changed.set()

    def _on_change(self, old: str | None, new: str | None) -> None:
        if old is not None:
            self.router.call_back(self.on_vanished, self.name)
        if new is not None:
            self.router.call_back(self.on_appeared, self.name, new)
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
            self.router.signals.release_tracker(self._tracker)
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
