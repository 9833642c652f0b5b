"""The connection: method calls with timeouts, signal subscriptions with shared match rules, names and exports.

One `Bus` wraps one dbus-next/dbus-fast `MessageBus` and installs a single
message handler that routes everything itself: replies to the call that
waits for them, signals to the subscriptions whose rule they match, and
method calls to exported objects.  The libraries' own high-level client and
service layers are not used, so both backends behave the same.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from busd.wire.address import AddressError, session_bus_address, system_bus_address
from busd.wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH, PEER_INTERFACE

from ._backend import Backend, get_backend, guard_writes
from .convert import Codec, close_fds, codec_for
from .dbus_types import MessageInfo, guess_signature, is_message_info, resolve_hints
from .errors import DBusError, Disconnected, NoReply
from .matching import MatchRule
from .names import NameFlag, NameTracker, NameWatcher, ReleaseNameReply, RequestNameReply

log = logging.getLogger("busd_client")

DEFAULT_TIMEOUT = 25.0  # seconds, libdbus's default

ReplyCallback = Callable[[Any, BaseException | None], None]
"""Called with (reply message, None) or (None, error)."""


def resolve_address(address: str | None) -> str:
    """Turn connect()'s `address` (None, "session", "system" or a D-Bus address) into a D-Bus address."""
    if address is None or address == "session":
        try:
            return session_bus_address()
        except AddressError:
            raise Disconnected(
                "no session bus: DBUS_SESSION_BUS_ADDRESS is not set and there is no $XDG_RUNTIME_DIR/bus; "
                "start one (e.g. `dbus-run-session -- python3 ...` or busd) or pass an address to connect()") from None
    if address == "system":
        return system_bus_address()
    if ":" not in address:
        raise ValueError(
            f"{address!r} is not a D-Bus address; use None, 'session', 'system' or an "
            f"address such as 'unix:path=/run/user/1000/bus'")
    return address


async def connect(address: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                  backend: str | None = None, unix_fds: bool = True) -> Bus:
    """Connect to a bus and return a `Bus` (also an async context manager that closes it).

    `address`: None or "session" for the session bus from the environment,
    "system" for the system bus, or any D-Bus address.  `timeout` is the
    default for every call made on this bus.  `backend` picks "dbus_fast"
    or "dbus_next" (default: $BUSD_CLIENT_BACKEND, else dbus_fast if installed).
    `unix_fds=False` skips negotiating fd passing, which makes every message a
    little cheaper to receive, for programs that never send or receive fds.
    """
    resolved = resolve_address(address)
    chosen = get_backend(backend)
    # File descriptors only travel over unix sockets.
    unix_only = unix_fds and all(part.startswith("unix:") for part in resolved.split(";") if part)
    try:
        connection = chosen.MessageBus(bus_address=resolved, negotiate_unix_fd=unix_only)
        await connection.connect()
        guard_writes(connection)
    except chosen.library_error as error:   # an error reply to Hello
        raise DBusError.from_reply(error.type, error.text) from error
    except Exception as error:   # socket errors, EOF, authentication refused
        raise Disconnected(f"cannot connect to the bus at {resolved}: {error}") from error
    return Bus(connection, chosen, resolved, timeout)


class Subscription:
    """A slot connected to signals.  Closing it (or leaving its `with` block) disconnects the slot,
    and removes the match rule from the bus when no other subscription uses it."""

    def __init__(self, bus: Bus, rule: str, route: _Route, tracker: NameTracker | None) -> None:
        self.bus = bus
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
        self.bus._remove_route(self._route)
        self._removal = self.bus._release_rule(self.rule)
        if self._tracker is not None:
            self.bus._release_tracker(self._tracker)
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


class _Route:
    """A local signal route: a predicate on messages and what to do with the ones it accepts."""

    __slots__ = ("matches", "deliver", "member")

    def __init__(self, matches: Callable[[Any], bool], deliver: Callable[[Any], None],
                 member: str | None) -> None:
        self.matches = matches
        self.deliver = deliver
        self.member = member


class _RuleEntry:
    """A match rule on the bus, shared by every subscription that asked for exactly that rule."""

    __slots__ = ("references", "added")

    def __init__(self, added: asyncio.Future[Any]) -> None:
        self.references = 0
        self.added = added


class SlotInvoker:
    """Calls one slot with a signal's arguments, converted by the slot's (or the interface's) type hints."""

    def __init__(self, bus: Bus, slot: Callable[..., Any], interface_hints: Sequence[Any] = ()) -> None:
        if not callable(slot):
            raise TypeError(f"a slot must be callable, got {slot!r}")
        self.bus = bus
        self.slot = slot
        self.info_parameter: str | None = None
        self.positional_limit: int | None = None
        hints = list(interface_hints)
        try:
            parameters = list(inspect.signature(slot).parameters.values())
        except (TypeError, ValueError):  # some builtins have no signature: pass everything
            parameters = []
            self.positional_limit = None
        else:
            try:
                resolved = resolve_hints(slot)
            except TypeError:
                resolved = {}
            positional = []
            variadic = False
            for parameter in parameters:
                annotation = resolved.get(parameter.name, parameter.annotation)
                if is_message_info(annotation):
                    self.info_parameter = parameter.name
                elif parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
                    positional.append(resolved.get(parameter.name))
                elif parameter.kind is parameter.VAR_POSITIONAL:
                    variadic = True
            # Like Qt, a slot may take fewer arguments than the signal carries.
            self.positional_limit = None if variadic else len(positional)
            for index, hint in enumerate(positional):
                if hint is not None:
                    if index < len(hints):
                        hints[index] = hint
                    else:
                        hints.extend([None] * (index - len(hints)) + [hint])
        self.hints = tuple(hints)
        self._codec: Codec = bus._codec
        self._decoders: dict[str, Any] = {}

    def __call__(self, message: Any) -> None:
        signature = message.signature
        try:
            try:
                decode = self._decoders[signature]
            except KeyError:
                decode = self._decoders[signature] = self._codec.body_decoder(signature, self.hints)
            args = decode(message.body, message.unix_fds) if decode else message.body
        except Exception:
            log.exception("cannot convert the arguments of %s.%s for slot %r",
                          message.interface, message.member, self.slot)
            return
        if self.positional_limit is not None and len(args) > self.positional_limit:
            args = args[:self.positional_limit]
        try:
            if self.info_parameter is None:
                result = self.slot(*args)
            else:
                result = self.slot(*args, **{self.info_parameter: message_info(message)})
        except Exception:
            log.exception("slot %r raised on %s.%s", self.slot, message.interface, message.member)
            return
        if result is not None and inspect.isawaitable(result):
            self.bus._spawn(result)


def message_info(message: Any) -> MessageInfo:
    return MessageInfo(sender=message.sender, destination=message.destination, path=message.path,
                       interface=message.interface, member=message.member,
                       signature=message.signature, serial=message.serial)


class Bus:
    """A connection to a D-Bus bus.  Create it with `await busd_client.connect(...)`."""

    def __init__(self, connection: Any, backend: Backend, address: str, timeout: float) -> None:
        from .service import ObjectTree  # service imports bus for typing; avoid the cycle

        self._connection = connection
        self._backend = backend
        self._codec = codec_for(backend)
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self.address = address
        self.timeout = timeout
        self._closed = False
        # serial -> (future or callback, deadline, the call message, timeout)
        self._pending: dict[int, tuple[Any, float, Any, float]] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_timer_when = 0.0
        self._future_type = type(self._loop.create_future())
        self._routes: dict[str | None, tuple[_Route, ...]] = {}
        self._rules: dict[str, _RuleEntry] = {}
        self._trackers: dict[str, NameTracker] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._name_callbacks: dict[str, tuple[Callable[..., Any] | None, Callable[..., Any] | None]] = {}
        self.owned_names: set[str] = set()
        self.objects = ObjectTree(self)
        message_type = backend.MessageType
        self._signal_type = message_type.SIGNAL
        self._call_type = message_type.METHOD_CALL
        self._error_type = message_type.ERROR
        self._no_reply_flag = backend.MessageFlag.NO_REPLY_EXPECTED
        self._add_route(_Route(self._is_name_signal, self._on_name_signal, "NameAcquired"))
        self._add_route(_Route(self._is_name_signal, self._on_name_signal, "NameLost"))
        connection.add_message_handler(self._on_message)
        self._disconnected = self._loop.create_future()
        self._spawn(self._watch_disconnect())

    # -- identity ------------------------------------------------------------

    @property
    def unique_name(self) -> str:
        """This connection's unique name, e.g. ":1.42"."""
        return self._connection.unique_name

    @property
    def backend(self) -> str:
        """"dbus_fast" or "dbus_next"."""
        return self._backend.name

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def match_rules(self) -> dict[str, int]:
        """The match rules this connection has added, with how many subscriptions share each."""
        return {rule: entry.references for rule, entry in self._rules.items()}

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.unique_name
        return f"<busd_client.Bus {state} on {self.address} via {self.backend}>"

    # -- lifetime --------------------------------------------------------------

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Unexport everything, disconnect, and fail calls still waiting with `Disconnected`."""
        if self._closed:
            return
        self._closed = True
        self.objects.clear()
        self._connection.disconnect()
        try:
            await asyncio.wait_for(asyncio.shield(self._disconnected), 5)
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
            await self._connection.wait_for_disconnect()
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

    def _spawn(self, awaitable: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run a background coroutine, keeping it referenced and logging its failure."""
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # -- the one message handler ------------------------------------------------

    def _on_message(self, message: Any) -> bool:
        message_type = message.message_type
        if message_type == self._signal_type:
            routes = self._routes
            for route in routes.get(message.member, ()):
                if route.matches(message):
                    route.deliver(message)
            for route in routes.get(None, ()):
                if route.matches(message):
                    route.deliver(message)
            return True
        if message_type == self._call_type:
            self.objects.handle_call(message)
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
            elif reply.message_type == self._error_type:
                waiter.set_exception(error_from_message(reply))
            else:
                waiter.set_result(reply)
            return
        try:
            waiter(reply, error)  # type: ignore[operator]
        except Exception:
            log.exception("a reply callback failed")

    # -- sending -----------------------------------------------------------------

    def _send(self, message: Any, fds: Sequence[int] = ()) -> None:
        """Send `message` (from any thread); close our duplicates of its fds once written."""
        if self._closed:
            close_fds(fds)
            raise Disconnected("the connection is closed; connect again")
        if threading.get_ident() != self._thread_id:
            self._loop.call_soon_threadsafe(self._send_from_loop, message, fds)
            return
        try:
            written = self._connection.send(message)
        except Exception as error:
            close_fds(fds)
            raise _marshal_error(message, error) from error
        if fds:
            written.add_done_callback(lambda _: close_fds(fds))

    def _send_from_loop(self, message: Any, fds: Sequence[int]) -> None:
        try:
            self._send(message, fds)
        except Exception:
            log.exception("cannot send %s.%s queued from another thread", message.interface, message.member)

    def _new_message(self, **fields: Any) -> Any:
        try:
            return self._backend.Message(**fields)
        except Exception as error:
            raise _message_error(error, fields.get("unix_fds", ())) from error

    def _start_call(self, destination: str | None, path: str, interface: str | None, member: str,
                    signature: str, body: list[Any], fds: list[int],
                    waiter: asyncio.Future[Any] | ReplyCallback, timeout: float | None) -> int:
        """Send a method call whose reply (or error) goes to `waiter`: a future of this loop, or a
        callback run in arrival order.  Returns the call's serial."""
        try:
            message = self._backend.Message(destination=destination, path=path, interface=interface,
                                            member=member, signature=signature, body=body, unix_fds=fds)
        except Exception as error:
            raise _message_error(error, fds) from error
        serial = message.serial = self._connection.next_serial()
        delay = self.timeout if timeout is None else timeout
        deadline = self._loop.time() + delay
        self._pending[serial] = (waiter, deadline, message, delay)
        try:
            self._send(message, fds)
        except BaseException:
            del self._pending[serial]
            raise
        self._add_deadline(deadline, serial)
        return serial

    # Timeouts share one timer: a heap of (deadline, serial), entries of answered calls dropped
    # lazily, so a call costs a heap push rather than a timer of its own.

    def _add_deadline(self, deadline: float, serial: int) -> None:
        heapq.heappush(self._deadlines, (deadline, serial))
        timer = self._deadline_timer
        if timer is None or deadline < self._deadline_timer_when:
            if timer is not None:
                timer.cancel()
            self._deadline_timer = self._loop.call_at(deadline, self._expire_calls)
            self._deadline_timer_when = deadline
        elif len(self._deadlines) > 2 * len(self._pending) + 256:
            self._deadlines = [(entry[1], serial) for serial, entry in self._pending.items()]
            heapq.heapify(self._deadlines)

    def _expire_calls(self) -> None:
        self._deadline_timer = None
        now = self._loop.time()
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
            self._deadline_timer = self._loop.call_at(self._deadline_timer_when, self._expire_calls)

    async def _call_raw(self, destination: str | None, path: str, interface: str | None, member: str,
                        signature: str = "", body: list[Any] | None = None,
                        fds: list[int] | None = None, timeout: float | None = None) -> Any:
        """Call a method and return the reply message; an error reply raises DBusError."""
        future: asyncio.Future[Any] = self._loop.create_future()
        serial = self._start_call(destination, path, interface, member, signature,
                                  body or [], fds or [], future, timeout)
        try:
            return await future
        except asyncio.CancelledError:
            self._pending.pop(serial, None)
            raise

    def _driver_call_soon(self, member: str, signature: str, body: list[Any],
                          callback: Callable[[list[Any] | None, BaseException | None], None],
                          interface: str = DRIVER_INTERFACE) -> None:
        """Call a bus driver method; `callback` runs synchronously in arrival order with (body, error)."""
        def on_reply(reply: Any, error: BaseException | None) -> None:
            if error is None and reply.message_type == self._error_type:
                error = error_from_message(reply)
            callback(None if error is not None else reply.body, error)

        self._start_call(DRIVER_NAME, DRIVER_PATH, interface, member, signature, body, [], on_reply, None)

    async def call_driver(self, member: str, *args: Any, signature: str = "",
                          interface: str = DRIVER_INTERFACE, timeout: float | None = None) -> Any:
        """Call a method of the bus itself (org.freedesktop.DBus) and return its reply's value(s)."""
        reply = await self._call_raw(DRIVER_NAME, DRIVER_PATH, interface, member, signature,
                                     list(args), None, timeout)
        return unpack_reply(self._decode_reply(reply, ()))

    # -- method calls ------------------------------------------------------------

    async def call(self, destination: str, path: str, interface: str | None, member: str, *args: Any,
                   signature: str | None = None, timeout: float | None = None,
                   no_reply: bool = False, returns: Sequence[Any] = ()) -> Any:
        """Call a remote method and return its result: None, the value, or a tuple of out values.

        `signature` is the in-signature; without it, it is guessed from the
        arguments (int -> i, str -> s, ...).  `returns` optionally gives type
        hints for the out values (e.g. a pydantic model).  Errors replied by
        the service raise `DBusError` subclasses; no reply within `timeout`
        seconds (default: the bus's) raises `NoReply`.
        """
        if signature is None:
            signature = "".join(guess_signature(arg) for arg in args)
        body, fds = self._codec.body_encoder(signature, member=f"{interface}.{member}")(args)
        if no_reply:
            message = self._new_message(destination=destination, path=path, interface=interface,
                                        member=member, signature=signature, body=body, unix_fds=fds,
                                        flags=self._no_reply_flag)
            self._send(message, fds)
            return None
        reply = await self._call_raw(destination, path, interface, member, signature, body, fds, timeout)
        return unpack_reply(self._decode_reply(reply, returns))

    def _decode_reply(self, reply: Any, hints: Sequence[Any]) -> list[Any]:
        decode = self._codec.body_decoder(reply.signature, hints)
        return decode(reply.body, reply.unix_fds) if decode else reply.body

    # -- signals -----------------------------------------------------------------

    async def connect_signal(self, sender: str | None, path: str | None, interface: str | None,
                             member: str | None, slot: Callable[..., Any], **arg_filters: str
                             ) -> Subscription:
        """Connect a remote signal to a local slot; returns a `Subscription` (close it to disconnect).

        Any of sender/path/interface/member may be None to match anything.
        `arg_filters` are argN="...", argNpath="...", arg0namespace="..."
        (plus path_namespace= and destination=).  The slot, a function or
        coroutine function, receives the signal's arguments as Python values
        (converted by its type hints, e.g. to pydantic models) and, if one of
        its parameters is annotated `MessageInfo`, the message's header
        fields.  When `sender` is a well-known name the subscription follows
        the name to whichever process owns it, across restarts.
        """
        rule = MatchRule.for_signal(sender, path, interface, member, **arg_filters)
        return await self._subscribe(rule, SlotInvoker(self, slot))

    async def _subscribe(self, rule: MatchRule, deliver: Callable[[Any], None], *,
                         before_ready: Callable[[], None] | None = None
                         ) -> Subscription:
        text = rule.to_string()
        tracker = self._acquire_tracker(rule.sender) if rule.sender_is_well_known else None
        # The route goes in before AddMatch so no signal is lost between AddMatch's reply and our return.
        route = _Route(rule.compile(tracker), deliver, rule.member)
        self._add_route(route)
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
            added: asyncio.Future[Any] = self._loop.create_future()
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

            self._driver_call_soon("AddMatch", "s", [text], on_added)
        entry.references += 1
        return asyncio.shield(entry.added)

    def _release_rule(self, text: str) -> asyncio.Future[Any] | None:
        entry = self._rules.get(text)
        if entry is None:
            return None
        entry.references -= 1
        if entry.references > 0:
            return None
        del self._rules[text]
        if self._closed:
            return None
        removed: asyncio.Future[Any] = self._loop.create_future()

        def on_removed(body: list[Any] | None, error: BaseException | None) -> None:
            if removed.done():
                return
            if error is not None and not isinstance(error, Disconnected):
                log.warning("RemoveMatch %s failed: %s", text, error)
            removed.set_result(None)

        if entry.added.done() and entry.added.exception() is not None:
            removed.set_result(None)  # it never got onto the bus
            return removed
        self._driver_call_soon("RemoveMatch", "s", [text], on_removed)
        return removed

    def _add_route(self, route: _Route) -> None:
        self._routes[route.member] = self._routes.get(route.member, ()) + (route,)

    def _remove_route(self, route: _Route) -> None:
        remaining = tuple(r for r in self._routes.get(route.member, ()) if r is not route)
        if remaining:
            self._routes[route.member] = remaining
        else:
            self._routes.pop(route.member, None)

    def emit_signal(self, path: str, interface: str, member: str, *args: Any,
                    signature: str | None = None, destination: str | None = None) -> None:
        """Emit a signal (a broadcast unless `destination` is given).  Exported objects emit by calling
        their `@signal` methods instead."""
        if signature is None:
            signature = "".join(guess_signature(arg) for arg in args)
        body, fds = self._codec.body_encoder(signature, member=f"{interface}.{member}")(args)
        self._emit(path, interface, member, signature, body, fds, destination)

    def _emit(self, path: str, interface: str, member: str, signature: str, body: list[Any],
              fds: list[int], destination: str | None = None) -> None:
        message = self._new_message(message_type=self._signal_type, path=path, interface=interface,
                                    member=member, signature=signature, body=body, unix_fds=fds,
                                    destination=destination)
        self._send(message, fds)

    # -- names -------------------------------------------------------------------

    def _acquire_tracker(self, name: str) -> NameTracker:
        tracker = self._trackers.get(name)
        if tracker is None:
            tracker = self._trackers[name] = NameTracker(self, name)
            self._spawn(self._start_tracker(tracker))
        tracker.references += 1
        return tracker

    async def _start_tracker(self, tracker: NameTracker) -> None:
        try:
            await tracker.start()
        except (asyncio.CancelledError, Exception):
            if self._trackers.get(tracker.name) is tracker:
                del self._trackers[tracker.name]

    def _release_tracker(self, tracker: NameTracker) -> None:
        tracker.references -= 1
        if tracker.references <= 0 and self._trackers.get(tracker.name) is tracker:
            del self._trackers[tracker.name]
            tracker.stop()

    def watch_name(self, name: str, on_appeared: Callable[[str, str], Any] | None = None,
                   on_vanished: Callable[[str], Any] | None = None) -> NameWatcher:
        """Watch a name: `on_appeared(name, owner)` / `on_vanished(name)` on each change, one of them
        at the start for the current state.  Returns a NameWatcher (close it to stop;
        `await watcher.wait_for_owner()` waits for the name to appear)."""
        return NameWatcher(self, name, on_appeared, on_vanished)

    async def request_name(self, name: str, flags: NameFlag = NameFlag.NONE, *,
                           allow_replacement: bool = False, replace_existing: bool = False,
                           do_not_queue: bool = False,
                           on_acquired: Callable[[str], Any] | None = None,
                           on_lost: Callable[[str], Any] | None = None) -> RequestNameReply:
        """Ask the bus for a well-known name; returns the RequestNameReply.

        The keyword flags mirror NameFlag.  Without `do_not_queue` a request
        that cannot be granted now is queued (IN_QUEUE) and `on_acquired(name)`
        runs when the name comes our way; `on_lost(name)` runs when it is
        taken from us.
        """
        flags = NameFlag(flags)
        if allow_replacement:
            flags |= NameFlag.ALLOW_REPLACEMENT
        if replace_existing:
            flags |= NameFlag.REPLACE_EXISTING
        if do_not_queue:
            flags |= NameFlag.DO_NOT_QUEUE
        # Registered before the request: NameAcquired may arrive ahead of the reply.
        self._name_callbacks[name] = (on_acquired, on_lost)
        try:
            reply = await self.call_driver("RequestName", name, int(flags), signature="su")
        except BaseException:
            self._name_callbacks.pop(name, None)
            raise
        result = RequestNameReply(reply)
        if result == RequestNameReply.EXISTS:
            self._name_callbacks.pop(name, None)
        return result

    async def release_name(self, name: str) -> ReleaseNameReply:
        """Give a name back (or leave its queue)."""
        self._name_callbacks.pop(name, None)
        result = ReleaseNameReply(await self.call_driver("ReleaseName", name, signature="s"))
        self.owned_names.discard(name)
        return result

    async def get_name_owner(self, name: str) -> str | None:
        """The unique name owning `name`, or None if nobody does."""
        try:
            return await self.call_driver("GetNameOwner", name, signature="s")
        except DBusError as error:
            if error.name.endswith(".NameHasNoOwner"):
                return None
            raise

    async def list_names(self) -> list[str]:
        return await self.call_driver("ListNames")

    async def ping(self, destination: str = DRIVER_NAME, timeout: float | None = None) -> None:
        """Round-trip a Peer.Ping; also waits until everything sent before it has been processed."""
        path = DRIVER_PATH if destination == DRIVER_NAME else "/"
        await self._call_raw(destination, path, PEER_INTERFACE, "Ping", timeout=timeout)

    def _is_name_signal(self, message: Any) -> bool:
        return (message.sender == DRIVER_NAME and message.interface == DRIVER_INTERFACE
                and message.destination == self.unique_name)

    def _on_name_signal(self, message: Any) -> None:
        (name,) = message.body
        acquired = message.member == "NameAcquired"
        if acquired:
            self.owned_names.add(name)
        else:
            self.owned_names.discard(name)
        on_acquired, on_lost = self._name_callbacks.get(name, (None, None))
        self._call_back(on_acquired if acquired else on_lost, name)

    def _call_back(self, callback: Callable[..., Any] | None, *args: Any) -> None:
        """Run a user callback (function or coroutine function); its failure is logged, not raised."""
        if callback is None:
            return
        try:
            result = callback(*args)
        except Exception:
            log.exception("callback %r failed", callback)
            return
        if result is not None and inspect.isawaitable(result):
            self._spawn(result)

    # -- objects -----------------------------------------------------------------

    def export(self, path: str, obj: Any) -> Any:
        """Export `obj` (an `Interface` instance) at `path`; returns a handle whose close() unexports it."""
        return self.objects.export(path, obj)

    def unexport(self, path: str, obj: Any = None) -> None:
        """Remove `obj` (or, if None, every object) exported at `path`."""
        self.objects.unexport(path, obj)

    async def proxy(self, name: str, path: str, interface: Any = None, *,
                    timeout: float | None = None) -> Any:
        """A proxy for the object `name` exports at `path`, built from its introspection data.

        With `interface` (an `Interface` subclass, or a list of them) no
        introspection call is made and the class's type hints (pydantic
        models, enums...) type the arguments, results and signals.
        """
        from .proxy import Proxy

        return await Proxy.create(self, name, path, interface, timeout)


def error_from_message(reply: Any) -> DBusError:
    body = reply.body
    text = body[0] if body and isinstance(body[0], str) else ""
    return DBusError.from_reply(reply.error_name, text)


def unpack_reply(values: Sequence[Any]) -> Any:
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


def run_coroutine(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)

