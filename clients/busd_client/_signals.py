"""Signal routing: local routes, the match rules they share on the bus, and the owners of well-known senders.

A `Subscription` is a local `Route` plus one use of a match rule on the bus;
subscriptions asking for exactly the same rule share it, and the last one to
close removes it.  The routes need three things of the connection, declared
in `RouterServices`: its loop, background tasks and asynchronous calls of the
bus driver (the `Router` provides them).

Theory: a route is installed before its AddMatch is sent, so no signal is
lost between the bus accepting the rule and the subscriber hearing back.  A
well-known sender is followed by a `NameTracker`, whose GetNameOwner reply and
NameOwnerChanged signals are applied in arrival order, so routing never uses a
stale owner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from busd.wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH

from ._replies import DriverCallback
from .errors import DBusError, Disconnected
from .matching import SignalRule

log = logging.getLogger("busd_client")

OwnerListener = Callable[[str | None, str | None], None]
"""Called with (old owner, new owner) when a tracked name changes hands."""


class RouterServices(Protocol):
    """What signal routing needs of the connection it routes for."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def closed(self) -> bool: ...

    def spawn(self, awaitable: Awaitable[Any]) -> asyncio.Future[Any]: ...

    def call_driver_soon(self, member: str, signature: str, body: list[Any], callback: DriverCallback,
                         interface: str = DRIVER_INTERFACE) -> None: ...


class Route:
    """A local signal route: a predicate on messages and what to do with the ones it accepts."""

    __slots__ = ("matches", "deliver", "member")

    def __init__(self, matches: Callable[[Any], bool], deliver: Callable[[Any], None],
                 member: str | None) -> None:
        self.matches = matches
        self.deliver = deliver
        self.member = member


class Subscription:
    """A slot connected to signals.  Closing it (or leaving its `with` block) disconnects the slot,
    and removes the match rule from the bus when no other subscription uses it."""

    def __init__(self, routes: SignalRoutes, rule: str, route: Route, tracker: NameTracker | None) -> None:
        self.routes = routes
        self.rule = rule
        self._route = route
        self._tracker = tracker
        self._closed = False
        self._removal: asyncio.Future[Any] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Disconnect now; the bus is told without waiting for its answer (see `aclose`)."""
        if self._closed:
            return
        self._closed = True
        self.routes.remove_route(self._route)
        self._removal = self.routes.release_rule(self.rule)
        if self._tracker is not None:
            self.routes.release_tracker(self._tracker)
            self._tracker = None

    async def aclose(self) -> None:
        """Disconnect and wait until the bus has removed the match rule (if this was its last user)."""
        self.close()
        if self._removal is not None:
            try:
                await self._removal
            except Disconnected:
                pass

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Subscription {state} {self.rule}>"


class _RuleEntry:
    """A match rule on the bus, shared by every subscription that asked for exactly that rule."""

    __slots__ = ("references", "added")

    def __init__(self, added: asyncio.Future[Any]) -> None:
        self.references = 0
        self.added = added


def owner_changed_rule(name: str) -> SignalRule:
    """The narrowest rule that reports ownership changes of `name`."""
    return SignalRule.for_signal(DRIVER_NAME, DRIVER_PATH, DRIVER_INTERFACE,
                                "NameOwnerChanged", arg0=name)


class NameTracker:
    """Knows the current unique owner of one name, kept fresh by NameOwnerChanged.

    One tracker per name per connection, shared (reference-counted) by every
    subscription whose sender is that name and every watcher of it.  `owner`,
    `ready` (set once the current owner is known) and `listeners` are its
    public face.
    """

    def __init__(self, routes: SignalRoutes, name: str) -> None:
        self.routes = routes
        self.name = name
        self.owner: str | None = None
        self.references = 0
        self.listeners: list[OwnerListener] = []
        self.ready: asyncio.Future[None] = routes.router.loop.create_future()
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        """Add the NameOwnerChanged rule, then ask for the current owner."""
        try:
            self._subscription = await self.routes.subscribe(
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
            if error is not None and not (isinstance(error, DBusError) and error.name.endswith(".NameHasNoOwner")):
                self.ready.set_exception(error)
                self.ready.exception()
                return
            self._set_owner(reply[0] if error is None else None, notify=False)
            self.ready.set_result(None)

        self.routes.router.call_driver_soon("GetNameOwner", "s", [self.name], on_reply)

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


class SignalRoutes:
    """One connection's signal routes, the match rules they use on the bus, and its name trackers."""

    def __init__(self, router: RouterServices) -> None:
        self.router = router
        self._routes: dict[str | None, tuple[Route, ...]] = {}
        self._rules: dict[str, _RuleEntry] = {}
        self._trackers: dict[str, NameTracker] = {}

    @property
    def match_rules(self) -> dict[str, int]:
        """The match rules added on the bus, with how many subscriptions share each."""
        return {rule: entry.references for rule, entry in self._rules.items()}

    def deliver(self, message: Any) -> None:
        """Hand a signal to every route that accepts it: those of its member first, then the catch-alls."""
        routes = self._routes
        for route in routes.get(message.member, ()):
            if route.matches(message):
                route.deliver(message)
        for route in routes.get(None, ()):
            if route.matches(message):
                route.deliver(message)

    # -- subscriptions and match rules ---------------------------------------------

    async def subscribe(self, rule: SignalRule, deliver: Callable[[Any], None], *,
                        before_ready: Callable[[], None] | None = None) -> Subscription:
        """Route signals matching `rule` to `deliver` and add the rule on the bus; returns once the bus
        has it (and, for a well-known sender, once its owner is known).  `before_ready` runs right
        after AddMatch is sent."""
        text = rule.to_string()
        tracker = self.acquire_tracker(rule.sender) if rule.sender_is_well_known else None  # type: ignore[arg-type]
        # The route goes in before AddMatch so no signal is lost between AddMatch's reply and our return.
        route = Route(rule.compile(tracker), deliver, rule.member)
        self.add_route(route)
        subscription = Subscription(self, text, route, tracker)
        try:
            added = self._acquire_rule(text)
            if before_ready is not None:
                before_ready()
            waits = [added] + ([asyncio.shield(tracker.ready)] if tracker is not None else [])
            await asyncio.gather(*waits)
        except BaseException:
            subscription.close()
            raise
        return subscription

    def _acquire_rule(self, text: str) -> asyncio.Future[Any]:
        entry = self._rules.get(text)
        if entry is None:
            added: asyncio.Future[Any] = self.router.loop.create_future()
            entry = self._rules[text] = _RuleEntry(added)

            def on_added(body: list[Any] | None, error: BaseException | None) -> None:
                if added.done():
                    return
                if error is not None:
                    added.set_exception(error)
                    added.exception()  # failure is reported to each waiter, not as "never retrieved"
                    if self._rules.get(text) is entry and entry.references == 0:
                        del self._rules[text]
                else:
                    added.set_result(None)

            self.router.call_driver_soon("AddMatch", "s", [text], on_added)
        entry.references += 1
        return asyncio.shield(entry.added)

    def release_rule(self, text: str) -> asyncio.Future[Any] | None:
        """Drop one use of a match rule; returns a future of RemoveMatch's answer when this was the last."""
        entry = self._rules.get(text)
        if entry is None:
            return None
        entry.references -= 1
        if entry.references > 0:
            return None
        del self._rules[text]
        if self.router.closed:
            return None
        removed: asyncio.Future[Any] = self.router.loop.create_future()

        def on_removed(body: list[Any] | None, error: BaseException | None) -> None:
            if removed.done():
                return
            if error is not None and not isinstance(error, Disconnected):
                log.warning("RemoveMatch %s failed: %s", text, error)
            removed.set_result(None)

        if entry.added.done() and entry.added.exception() is not None:
            removed.set_result(None)  # it never got onto the bus
            return removed
        self.router.call_driver_soon("RemoveMatch", "s", [text], on_removed)
        return removed

    def add_route(self, route: Route) -> None:
        """Deliver matching signals to `route` (no match rule is added on the bus)."""
        self._routes[route.member] = self._routes.get(route.member, ()) + (route,)

    def remove_route(self, route: Route) -> None:
        remaining = tuple(r for r in self._routes.get(route.member, ()) if r is not route)
        if remaining:
            self._routes[route.member] = remaining
        else:
            self._routes.pop(route.member, None)

    # -- name owners ----------------------------------------------------------------

    def acquire_tracker(self, name: str) -> NameTracker:
        """The shared tracker of `name`'s owner, started if new; pair with `release_tracker`."""
        tracker = self._trackers.get(name)
        if tracker is None:
            tracker = self._trackers[name] = NameTracker(self, name)
            self.router.spawn(self._start_tracker(tracker))
        tracker.references += 1
        return tracker

    async def _start_tracker(self, tracker: NameTracker) -> None:
        try:
            await tracker.start()
        except (asyncio.CancelledError, Exception):
            if self._trackers.get(tracker.name) is tracker:
                del self._trackers[tracker.name]

    def release_tracker(self, tracker: NameTracker) -> None:
        tracker.references -= 1
        if tracker.references <= 0 and self._trackers.get(tracker.name) is tracker:
            del self._trackers[tracker.name]
            tracker.stop()
