"""The Bus facade: connect(), and the one object that assembles a connection's router, names and exported objects.

`connect()` opens the backend connection and hands it to a `Router` (see
`_router`), which carries every message; `Bus` puts the public API on top:
calls, signal subscriptions, names (`names.NameOwnership`), exported objects
(`object_tree.ObjectTree`) and proxies (`proxy.Proxy`), each of which talks to the
router, not to the Bus.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from busd.wire.address import AddressError, session_bus_address, system_bus_address
from busd.wire.wellknown import (
    DRIVER_INTERFACE,
    DRIVER_NAME,
    DRIVER_PATH,
    PEER_INTERFACE,
)

from ._replies import unpack_reply
from ._router import Router, open_connection
from ._signals import Subscription
from ._slots import SlotInvoker
from .dbus_types import guess_signature
from .errors import DBusError, Disconnected
from .matching import SignalRule
from .names import (
    NameFlag,
    NameOwnership,
    NameWatcher,
    ReleaseNameReply,
    RequestNameReply,
)
from .proxy import Proxy
from .locks import NameLock, NameLocks, NameSemaphore
from .object_tree import Export, ObjectTree
from .service import Interface
from .shared_buffer import SharedBuffer
from .shared_memory import PublishedMemory, attach, publish

__all__ = ["DEFAULT_TIMEOUT", "Bus", "Subscription", "connect", "resolve_address", "run_coroutine"]

DEFAULT_TIMEOUT = 25.0  # seconds, libdbus's default


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
    connection, chosen = await open_connection(resolved, backend, unix_fds)
    return Bus(Router(connection, chosen, timeout), resolved)


class Bus:
    """A connection to a D-Bus bus.  Create it with `await busd_client.connect(...)`."""

    def __init__(self, router: Router, address: str) -> None:
        self._router = router
        self.address = address
        self._names = NameOwnership(router)
        self.owned_names: set[str] = self._names.owned
        """The well-known names this connection owns now."""
        self.objects = ObjectTree(router, self)
        router.serve_calls(self.objects.handle_call)
        self._locks = NameLocks(self._names)

    # -- identity ------------------------------------------------------------

    @property
    def unique_name(self) -> str:
        """This connection's unique name, e.g. ":1.42"."""
        return self._router.unique_name

    @property
    def backend(self) -> str:
        """"dbus_fast" or "dbus_next"."""
        return self._router.backend.name

    @property
    def timeout(self) -> float:
        """The default timeout of calls, in seconds."""
        return self._router.timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._router.timeout = seconds

    @property
    def closed(self) -> bool:
        return self._router.closed

    @property
    def match_rules(self) -> dict[str, int]:
        """The match rules this connection has added, with how many subscriptions share each."""
        return self._router.signals.match_rules

    @property
    def pending_calls(self) -> int:
        """How many calls made on this bus are waiting for their reply."""
        return self._router.pending_calls

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.unique_name
        return f"<busd_client.Bus {state} on {self.address} via {self.backend}>"

    # -- lifetime --------------------------------------------------------------

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Unexport everything, disconnect, and fail calls still waiting with `Disconnected`."""
        if self._router.closed:
            return
        self.objects.clear()
        await self._router.close()

    async def wait_closed(self) -> None:
        """Wait until the connection ends (closed by us or by the bus)."""
        await self._router.wait_closed()

    async def call_driver(self, member: str, *args: Any, signature: str = "",
                          interface: str = DRIVER_INTERFACE, timeout: float | None = None) -> Any:
        """Call a method of the bus itself (org.freedesktop.DBus) and return its reply's value(s)."""
        return await self._router.call_driver(member, *args, signature=signature, interface=interface,
                                              timeout=timeout)

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
        body, fds = self._router.codec.body_encoder(signature, member=f"{interface}.{member}")(args)
        if no_reply:
            router = self._router
            message = router.new_message(destination=destination, path=path, interface=interface,
                                         member=member, signature=signature, body=body, unix_fds=fds,
                                         flags=router.no_reply_flag)
            router.send(message, fds)
            return None
        reply = await self._router.call_raw(destination, path, interface, member, signature, body, fds, timeout)
        return unpack_reply(self._router.decode_reply(reply, returns))

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
        rule = SignalRule.for_signal(sender, path, interface, member, **arg_filters)
        return await self._router.signals.subscribe(rule, SlotInvoker(self._router, slot))

    def emit_signal(self, path: str, interface: str, member: str, *args: Any,
                    signature: str | None = None, destination: str | None = None) -> None:
        """Emit a signal (a broadcast unless `destination` is given).  Exported objects emit by calling
        their `@signal` methods instead."""
        if signature is None:
            signature = "".join(guess_signature(arg) for arg in args)
        body, fds = self._router.codec.body_encoder(signature, member=f"{interface}.{member}")(args)
        self._router.emit(path, interface, member, signature, body, fds, destination)

    # -- names -------------------------------------------------------------------

    def watch_name(self, name: str, on_appeared: Callable[[str, str], Any] | None = None,
                   on_vanished: Callable[[str], Any] | None = None) -> NameWatcher:
        """Watch a name: `on_appeared(name, owner)` / `on_vanished(name)` on each change, one of them
        at the start for the current state.  Returns a NameWatcher (close it to stop;
        `await watcher.wait_for_owner()` waits for the name to appear)."""
        return NameWatcher(self._router, name, on_appeared, on_vanished)

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
        return await self._names.request(name, flags, on_acquired, on_lost)

    async def release_name(self, name: str) -> ReleaseNameReply:
        """Give a name back (or leave its queue)."""
        return await self._names.release(name)

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
        await self._router.call_raw(destination, path, PEER_INTERFACE, "Ping", timeout=timeout)

    # -- locks and shared memory (QSystemSemaphore and QSharedMemory, on names) ----------

    def lock(self, name: str, *, timeout: float | None = None) -> NameLock:
        """A lock every process on the bus shares, on the well-known name `name`: `async with bus.lock(...)`.

        Waiters are served in the order they asked (the bus's queue of owners
        for the name); a holder that crashes releases it; `timeout` (seconds)
        raises `errors.LockTimeout` and, like cancellation, leaves the queue.
        """
        return self._locks.lock(name, timeout)

    def semaphore(self, name: str, permits: int, *, timeout: float | None = None) -> NameSemaphore:
        """At most `permits` holders at once across the bus, on the names NAME.p0 ... (see `locks`)."""
        return self._locks.semaphore(name, permits, timeout)

    async def publish_shared_memory(self, name: str, source: bytes | bytearray | memoryview | int | SharedBuffer,
                                    *, writable: bool = False,
                                    allow: Callable[[str], bool] | None = None) -> PublishedMemory:
        """Own `name` and hand a memfd holding `source` (bytes, a size when `writable`, or a SharedBuffer)
        to processes that attach to it; sealed read-only unless `writable`.  `allow(unique_name)`, if
        given, decides who may attach (on top of the bus policy).  Raises `errors.SharedMemoryError` if
        the name is owned already."""
        return await publish(self, name, source, writable, allow)

    async def shared_memory(self, name: str, size: int | None = None, *, writable: bool = False) -> SharedBuffer:
        """Attach to the block published as `name` and map it (a SharedBuffer; close it when done).

        Raises `errors.SharedMemoryNotFound` when nobody publishes `name`, and
        `errors.SharedMemoryError` when `size` is given and differs, or the
        publisher refuses.  A read-only block is checked to be sealed against
        writes; `writable=True` maps a writable block shared.
        """
        return await attach(self, name, size, writable)

    # -- objects -----------------------------------------------------------------

    def export(self, path: str, obj: Interface) -> Export:
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
        return await Proxy.create(self._router, name, path, interface, timeout, self)


def run_coroutine(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)

