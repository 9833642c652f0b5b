"""The router: one backend connection, its sending, reply waiting, signal dispatch and background tasks.

Everything else in busd_client (proxies, exported objects, name watchers, the
`Bus` facade) talks to the bus through one `Router`, using only the methods
and attributes below that have no leading underscore.  The router installs a
single message handler on the dbus-next/dbus-fast `MessageBus`: replies go to
the call waiting for them, signals to the routes whose rule they match, and
method calls to the one handler set with `serve_calls` (the object tree).  The
libraries' own high-level client and service layers are not used, so both
backends behave the same.

Theory: a call's waiter is registered before its message is sent and its
deadline sits in one shared heap, so a reply can never arrive unclaimed and a
call costs a heap push rather than a timer.  A signal route is installed
before its AddMatch is sent, so no signal is lost between the bus accepting
the rule and the subscriber hearing back.  A well-known sender is followed by
a `NameTracker`, whose GetNameOwner reply and NameOwnerChanged signals are
applied in arrival order, so routing never uses a stale owner.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from busd.wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH

from ._backend import Backend, get_backend, guard_writes
from .convert import Codec, close_fds, codec_for
from .errors import DBusError, Disconnected, NoReply
from .matching import MatchRule

log = logging.getLogger("busd_client")

ReplyCallback = Callable[[Any, BaseException | None], None]
"""Called with (reply message, None) or (None, error)."""

DriverCallback = Callable[[list[Any] | None, BaseException | None], None]
"""Called with (reply body, None) or (None, error)."""

OwnerListener = Callable[[str | None, str | None], None]
"""Called with (old owner, new owner) when a tracked name changes hands."""

CLOSE_PATIENCE = 5.0  # seconds close() waits for the library to report the disconnection


async def open_connection(address: str, backend: str | None, unix_fds: bool) -> tuple[Any, Backend]:
    """Connect and authenticate to the bus at `address` (a resolved D-Bus address); returns the
    library's connection and the backend it runs on.  Raises DBusError or Disconnected."""
    chosen = get_backend(backend)
    # File descriptors only travel over unix sockets.
    unix_only = unix_fds and all(part.startswith("unix:") for part in address.split(";") if part)
    try:
        connection = chosen.MessageBus(bus_address=address, negotiate_unix_fd=unix_only)
        await connection.connect()
        guard_writes(connection)
    except chosen.library_error as error:   # an error reply to Hello
        raise DBusError.from_reply(error.type, error.text) from error
    except Exception as error:   # socket errors, EOF, authentication refused
        raise Disconnected(f"cannot connect to the bus at {address}: {error}") from error
    return connection, chosen


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

    def __init__(self, router: Router, rule: str, route: Route, tracker: NameTracker | None) -> None:
        self.router = router
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
        self.router.remove_route(self._route)
        self._removal = self.router.release_rule(self.rule)
        if self._tracker is not None:
            self.router.release_tracker(self._tracker)
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


def owner_changed_rule(name: str) -> MatchRule:
    """The narrowest rule that reports ownership changes of `name`."""
    return MatchRule.for_signal(DRIVER_NAME, DRIVER_PATH, DRIVER_INTERFACE,
                                "NameOwnerChanged", arg0=name)


class NameTracker:
    """Knows the current unique owner of one name, kept fresh by NameOwnerChanged.

    One tracker per name per router, shared (reference-counted) by every
    subscription whose sender is that name and every watcher of it.  `owner`,
    `ready` (set once the current owner is known) and `listeners` are its
    public face.
    """

    def __init__(self, router: Router, name: str) -> None:
        self.router = router
        self.name = name
        self.owner: str | None = None
        self.references = 0
        self.listeners: list[OwnerListener] = []
        self.ready: asyncio.Future[None] = router.loop.create_future()
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        """Add the NameOwnerChanged rule, then ask for the current owner."""
        try:
            self._subscription = await self.router.subscribe(
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

        self.router.call_driver_soon("GetNameOwner", "s", [self.name], on_reply)

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


def error_from_message(reply: Any) -> DBusError:
    body = reply.body
    text = body[0] if body and isinstance(body[0], str) else ""
    return DBusError.from_reply(reply.error_name, text)


def unpack_reply(values: Sequence[Any]) -> Any:
    """A reply's values as a call returns them: None, the one value, or a tuple."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return tuple(values)


def _message_error(error: Exception, fds: Sequence[int]) -> Exception:
    """The error to raise when the library refuses to build a message (bad name, path...)."""
    close_fds(fds)
    return ValueError(f"cannot build the D-Bus message: {error}")


def _marshal_error(message: Any, error: Exception) -> Exception:
    where = f"{message.interface}.{message.member}" if message.member else "the message"
    return TypeError(f"cannot marshal {where} with signature {message.signature!r}: {error}")


class Router:
    """One bus connection's traffic (see the module docstring).  Must be created in the loop it runs on."""

    def __init__(self, connection: Any, backend: Backend, timeout: float) -> None:
        self.connection = connection
        self.backend = backend
        self.codec: Codec = codec_for(backend)
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        """The default timeout of calls, in seconds."""
        self._thread_id = threading.get_ident()
        self._closed = False
        # serial -> (future or callback, deadline, the call message, timeout)
        self._pending: dict[int, tuple[Any, float, Any, float]] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_timer_when = 0.0
        self._future_type = type(self.loop.create_future())
        self._routes: dict[str | None, tuple[Route, ...]] = {}
        self._rules: dict[str, _RuleEntry] = {}
        self._trackers: dict[str, NameTracker] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._serve_call: Callable[[Any], None] | None = None
        message_type = backend.MessageType
        self.signal_type = message_type.SIGNAL
        self.call_type = message_type.METHOD_CALL
        self.return_type = message_type.METHOD_RETURN
        self.error_type = message_type.ERROR
        self.no_reply_flag = backend.MessageFlag.NO_REPLY_EXPECTED
        connection.add_message_handler(self._on_message)
        self._disconnected = self.loop.create_future()
        self.spawn(self._watch_disconnect())

    # -- state ---------------------------------------------------------------

    @property
    def unique_name(self) -> str:
        return self.connection.unique_name

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending_calls(self) -> int:
        """How many calls are waiting for their reply."""
        return len(self._pending)

    @property
    def match_rules(self) -> dict[str, int]:
        """The match rules added on the bus, with how many subscriptions share each."""
        return {rule: entry.references for rule, entry in self._rules.items()}

    def serve_calls(self, handler: Callable[[Any], None]) -> None:
        """Send every incoming method call to `handler` (the object tree); without one they are ignored."""
        self._serve_call = handler

    # -- lifetime --------------------------------------------------------------

    async def close(self) -> None:
        """Disconnect, fail calls still waiting with `Disconnected`, cancel background tasks."""
        if self._closed:
            return
        self._closed = True
        self.connection.disconnect()
        try:
            await asyncio.wait_for(asyncio.shield(self._disconnected), CLOSE_PATIENCE)
        except Exception:
            pass
        self._fail_pending(Disconnected("the connection was closed"))
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    async def wait_closed(self) -> None:
        """Wait until the connection ends (closed by us or by the bus)."""
        await asyncio.shield(self._disconnected)

    async def _watch_disconnect(self) -> None:
        error: BaseException | None = None
        try:
            await self.connection.wait_for_disconnect()
        except asyncio.CancelledError:
            return
        except Exception as caught:
            error = caught
        self._closed = True
        self._fail_pending(Disconnected(f"the bus connection ended{f': {error}' if error else ''}"))
        if not self._disconnected.done():
            self._disconnected.set_result(None)

    def _fail_pending(self, error: DBusError) -> None:
        pending, self._pending = self._pending, {}
        self._deadlines.clear()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        for waiter, *_ in pending.values():
            self._resolve(waiter, None, error)

    # -- background work ---------------------------------------------------------

    def spawn(self, awaitable: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run a background coroutine, keeping it referenced and logging its failure; close() cancels it."""
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def call_back(self, callback: Callable[..., Any] | None, *args: Any) -> None:
        """Run a user callback (function or coroutine function); its failure is logged, not raised."""
        if callback is None:
            return
        try:
            result = callback(*args)
        except Exception:
            log.exception("callback %r failed", callback)
            return
        if result is not None and inspect.isawaitable(result):
            self.spawn(result)

    # -- the one message handler ------------------------------------------------

    def _on_message(self, message: Any) -> bool:
        message_type = message.message_type
        if message_type == self.signal_type:
            routes = self._routes
            for route in routes.get(message.member, ()):
                if route.matches(message):
                    route.deliver(message)
            for route in routes.get(None, ()):
                if route.matches(message):
                    route.deliver(message)
            return True
        if message_type == self.call_type:
            if self._serve_call is not None:
                self._serve_call(message)
            return True
        entry = self._pending.pop(message.reply_serial, None)
        if entry is None:
            return False
        self._resolve(entry[0], message, None)
        return True

    def _resolve(self, waiter: asyncio.Future[Any] | ReplyCallback, reply: Any,
                 error: BaseException | None) -> None:
        """Hand a reply (or the error standing for it) to whoever waits: a future or a callback."""
        if type(waiter) is self._future_type:
            if waiter.done():
                return
            if error is not None:
                waiter.set_exception(error)
            elif reply.message_type == self.error_type:
                waiter.set_exception(error_from_message(reply))
            else:
                waiter.set_result(reply)
            return
        try:
            waiter(reply, error)  # type: ignore[operator]
        except Exception:
            log.exception("a reply callback failed")

    # -- sending -----------------------------------------------------------------

    def send(self, message: Any, fds: Sequence[int] = ()) -> None:
        """Send `message` (from any thread); close our duplicates of its fds once written."""
        if self._closed:
            close_fds(fds)
            raise Disconnected("the connection is closed; connect again")
        if threading.get_ident() != self._thread_id:
            self.loop.call_soon_threadsafe(self._send_from_loop, message, fds)
            return
        try:
            written = self.connection.send(message)
        except Exception as error:
            close_fds(fds)
            raise _marshal_error(message, error) from error
        if fds:
            written.add_done_callback(lambda _: close_fds(fds))

    def _send_from_loop(self, message: Any, fds: Sequence[int]) -> None:
        try:
            self.send(message, fds)
        except Exception:
            log.exception("cannot send %s.%s queued from another thread", message.interface, message.member)

    def new_message(self, **fields: Any) -> Any:
        """A backend Message with these fields; a refused field raises ValueError (and closes `unix_fds`)."""
        try:
            return self.backend.Message(**fields)
        except Exception as error:
            raise _message_error(error, fields.get("unix_fds", ())) from error

    def emit(self, path: str, interface: str, member: str, signature: str, body: list[Any],
             fds: list[int], destination: str | None = None) -> None:
        """Send a signal whose body is already encoded."""
        message = self.new_message(message_type=self.signal_type, path=path, interface=interface,
                                   member=member, signature=signature, body=body, unix_fds=fds,
                                   destination=destination)
        self.send(message, fds)

    def start_call(self, destination: str | None, path: str, interface: str | None, member: str,
                   signature: str, body: list[Any], fds: list[int],
                   waiter: asyncio.Future[Any] | ReplyCallback, timeout: float | None) -> int:
        """Send a method call whose reply (or error) goes to `waiter`: a future of this loop, or a
        callback run in arrival order.  Returns the call's serial (see `forget_call`)."""
        try:
            message = self.backend.Message(destination=destination, path=path, interface=interface,
                                           member=member, signature=signature, body=body, unix_fds=fds)
        except Exception as error:
            raise _message_error(error, fds) from error
        serial = message.serial = self.connection.next_serial()
        delay = self.timeout if timeout is None else timeout
        deadline = self.loop.time() + delay
        self._pending[serial] = (waiter, deadline, message, delay)
        try:
            self.send(message, fds)
        except BaseException:
            del self._pending[serial]
            raise
        self._add_deadline(deadline, serial)
        return serial

    def forget_call(self, serial: int) -> None:
        """Stop waiting for the reply to call `serial` (its caller gave up)."""
        self._pending.pop(serial, None)

    # Timeouts share one timer: a heap of (deadline, serial), entries of answered calls dropped
    # lazily, so a call costs a heap push rather than a timer of its own.

    def _add_deadline(self, deadline: float, serial: int) -> None:
        heapq.heappush(self._deadlines, (deadline, serial))
        timer = self._deadline_timer
        if timer is None or deadline < self._deadline_timer_when:
            if timer is not None:
                timer.cancel()
            self._deadline_timer = self.loop.call_at(deadline, self._expire_calls)
            self._deadline_timer_when = deadline
        elif len(self._deadlines) > 2 * len(self._pending) + 256:
            self._deadlines = [(entry[1], serial) for serial, entry in self._pending.items()]
            heapq.heapify(self._deadlines)

    def _expire_calls(self) -> None:
        self._deadline_timer = None
        now = self.loop.time()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, serial = heapq.heappop(deadlines)
            entry = self._pending.pop(serial, None)
            if entry is not None:
                waiter, _, message, delay = entry
                self._resolve(waiter, None, NoReply(
                    f"no reply to {message.interface}.{message.member} from {message.destination} "
                    f"within {delay:g} s"))
        if deadlines:
            self._deadline_timer_when = deadlines[0][0]
            self._deadline_timer = self.loop.call_at(self._deadline_timer_when, self._expire_calls)

    async def call_raw(self, destination: str | None, path: str, interface: str | None, member: str,
                       signature: str = "", body: list[Any] | None = None,
                       fds: list[int] | None = None, timeout: float | None = None) -> Any:
        """Call a method and return the reply message; an error reply raises DBusError."""
        future: asyncio.Future[Any] = self.loop.create_future()
        serial = self.start_call(destination, path, interface, member, signature,
                                 body or [], fds or [], future, timeout)
        try:
            return await future
        except asyncio.CancelledError:
            self._pending.pop(serial, None)
            raise

    def call_driver_soon(self, member: str, signature: str, body: list[Any], callback: DriverCallback,
                         interface: str = DRIVER_INTERFACE) -> None:
        """Call a bus driver method; `callback` runs synchronously in arrival order with (body, error)."""
        def on_reply(reply: Any, error: BaseException | None) -> None:
            if error is None and reply.message_type == self.error_type:
                error = error_from_message(reply)
            callback(None if error is not None else reply.body, error)

        self.start_call(DRIVER_NAME, DRIVER_PATH, interface, member, signature, body, [], on_reply, None)

    async def call_driver(self, member: str, *args: Any, signature: str = "",
                          interface: str = DRIVER_INTERFACE, timeout: float | None = None) -> Any:
        """Call a method of the bus itself (org.freedesktop.DBus) and return its reply's value(s)."""
        reply = await self.call_raw(DRIVER_NAME, DRIVER_PATH, interface, member, signature,
                                    list(args), None, timeout)
        return unpack_reply(self.decode_reply(reply, ()))

    def decode_reply(self, reply: Any, hints: Sequence[Any]) -> list[Any]:
        """A reply's body as Python values, converted by `hints` where given."""
        decode = self.codec.body_decoder(reply.signature, hints)
        return decode(reply.body, reply.unix_fds) if decode else reply.body

    # -- signal routes and match rules ---------------------------------------------

    async def subscribe(self, rule: MatchRule, deliver: Callable[[Any], None], *,
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
            added: asyncio.Future[Any] = self.loop.create_future()
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

            self.call_driver_soon("AddMatch", "s", [text], on_added)
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
        if self._closed:
            return None
        removed: asyncio.Future[Any] = self.loop.create_future()

        def on_removed(body: list[Any] | None, error: BaseException | None) -> None:
            if removed.done():
                return
            if error is not None and not isinstance(error, Disconnected):
                log.warning("RemoveMatch %s failed: %s", text, error)
            removed.set_result(None)

        if entry.added.done() and entry.added.exception() is not None:
            removed.set_result(None)  # it never got onto the bus
            return removed
        self.call_driver_soon("RemoveMatch", "s", [text], on_removed)
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
            self.spawn(self._start_tracker(tracker))
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
