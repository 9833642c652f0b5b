"""The router: one backend connection, its sending, reply waiting, signal dispatch and background tasks.

Everything else in busd_client (proxies, exported objects, name watchers, the
`Bus` facade) talks to the bus through one `Router`, using only the methods
and attributes below that have no leading underscore, and its `signals`
(`_signals.SignalRoutes`: subscriptions, match rules and name trackers).  The
router installs a single message handler on the dbus-next/dbus-fast
`MessageBus`: replies go to the call waiting for them (`_replies.PendingCalls`),
signals to the routes whose rule they match, and method calls to the one
handler set with `serve_calls` (the object tree).  The libraries' own
high-level client and service layers are not used, so both backends behave
the same.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from busd.wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH

from ._backend import Backend, get_backend, guard_writes
from ._replies import DriverCallback, PendingCalls, ReplyCallback, error_from_message, unpack_reply
from ._signals import SignalRoutes
from .convert import Codec, close_fds, codec_for
from .errors import DBusError, Disconnected

log = logging.getLogger("busd_client")

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
        self._tasks: set[asyncio.Future[Any]] = set()
        self._serve_call: Callable[[Any], None] | None = None
        message_type = backend.MessageType
        self.signal_type = message_type.SIGNAL
        self.call_type = message_type.METHOD_CALL
        self.return_type = message_type.METHOD_RETURN
        self.error_type = message_type.ERROR
        self.no_reply_flag = backend.MessageFlag.NO_REPLY_EXPECTED
        self._pending = PendingCalls(self.loop, self.error_type)
        self.signals = SignalRoutes(self)
        """Signal subscriptions, the match rules they share and the owners of well-known senders."""
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
        self._pending.fail_all(Disconnected("the connection was closed"))
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
        self._pending.fail_all(Disconnected(f"the bus connection ended{f': {error}' if error else ''}"))
        if not self._disconnected.done():
            self._disconnected.set_result(None)

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
            self.signals.deliver(message)
            return True
        if message_type == self.call_type:
            if self._serve_call is not None:
                self._serve_call(message)
            return True
        return self._pending.reply_arrived(message)

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
        self._pending.add(serial, waiter, deadline, message, delay)
        try:
            self.send(message, fds)
        except BaseException:
            self._pending.forget(serial)
            raise
        self._pending.arm(deadline, serial)
        return serial

    def forget_call(self, serial: int) -> None:
        """Stop waiting for the reply to call `serial` (its caller gave up)."""
        self._pending.forget(serial)

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
            self._pending.forget(serial)
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
