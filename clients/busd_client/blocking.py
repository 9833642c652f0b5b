"""A blocking facade for scripts without an event loop: the async Bus runs on a private background thread.

    with busd_client.connect_blocking() as bus:
        example = bus.proxy("dev.busd.Example1", "/dev/busd/Example1")
        print(example.Greet("world"))        # methods block until the reply
        example.Interval = 0.5               # properties are plain attributes
        bus.connect_signal(None, None, "dev.busd.Example1", "Tick", print)

Slots and name-watcher callbacks run on the background thread; do not call
the blocking API from inside them (use the async API there).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from .bus import DEFAULT_TIMEOUT, Bus, Subscription, connect
from .locks import NameLock, NameSemaphore
from .names import NameFlag, NameWatcher, ReleaseNameReply, RequestNameReply
from .proxy import Proxy, ProxyInterface, ProxyMethod, ProxyProperty, ProxySignal
from .shared_buffer import SharedBuffer
from .shared_memory import PublishedMemory


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class BlockingBus:
    """A bus connection with blocking methods; see the module docstring."""

    def __init__(self, address: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 backend: str | None = None, unix_fds: bool = True) -> None:
        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="busd_client-loop", daemon=True)
        self._thread.start()
        try:
            self.bus: Bus = self.run(connect(address, timeout=timeout, backend=backend, unix_fds=unix_fds))
        except BaseException:
            self._stop_loop()
            raise

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run a coroutine of the async API on the bus thread and return its result."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("blocking busd_client calls cannot be made from a slot or callback; "
                               "use the async API (the `bus` attribute) there")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except BaseException:
            # Interrupted (Ctrl-C) or out of time: cancel the coroutine too, so that, for instance,
            # a lock waiter leaves the name's queue instead of being granted the lock later.
            future.cancel()
            raise

    def call_in_loop(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run a plain function of the async API on the bus thread and return its result."""
        async def call() -> Any:
            return function(*args)
        return self.run(call())

    @property
    def running(self) -> bool:
        """True until close(): the bus thread's loop is running."""
        return self._loop.is_running()

    @property
    def unique_name(self) -> str:
        return self.bus.unique_name

    def call(self, destination: str, path: str, interface: str | None, member: str, *args: Any,
             **options: Any) -> Any:
        """Blocking `Bus.call`."""
        return self.run(self.bus.call(destination, path, interface, member, *args, **options))

    def emit_signal(self, path: str, interface: str, member: str, *args: Any, **options: Any) -> None:
        self.call_in_loop(lambda: self.bus.emit_signal(path, interface, member, *args, **options))

    def connect_signal(self, sender: str | None, path: str | None, interface: str | None,
                       member: str | None, slot: Callable[..., Any], **arg_filters: str) -> BlockingSubscription:
        """Blocking `Bus.connect_signal`; the slot runs on the bus thread."""
        subscription = self.run(self.bus.connect_signal(sender, path, interface, member, slot, **arg_filters))
        return BlockingSubscription(self, subscription)

    def watch_name(self, name: str, on_appeared: Callable[[str, str], Any] | None = None,
                   on_vanished: Callable[[str], Any] | None = None) -> BlockingNameWatcher:
        async def start() -> NameWatcher:
            watcher = self.bus.watch_name(name, on_appeared, on_vanished)
            await watcher.ready()
            return watcher
        return BlockingNameWatcher(self, self.run(start()))

    def request_name(self, name: str, flags: NameFlag = NameFlag.NONE, **options: Any) -> RequestNameReply:
        return self.run(self.bus.request_name(name, flags, **options))

    def release_name(self, name: str) -> ReleaseNameReply:
        return self.run(self.bus.release_name(name))

    def get_name_owner(self, name: str) -> str | None:
        return self.run(self.bus.get_name_owner(name))

    def lock(self, name: str, *, timeout: float | None = None) -> BlockingLock:
        """Blocking `Bus.lock`: `with bus.lock("org.example.Printer.Lock", timeout=30):`."""
        return BlockingLock(self, self.call_in_loop(lambda: self.bus.lock(name, timeout=timeout)))

    def semaphore(self, name: str, permits: int, *, timeout: float | None = None) -> BlockingLock:
        """Blocking `Bus.semaphore`: `with bus.semaphore("org.example.Scanners", 2):`."""
        return BlockingLock(self, self.call_in_loop(lambda: self.bus.semaphore(name, permits, timeout=timeout)))

    def publish_shared_memory(self, name: str, source: Any, *, writable: bool = False,
                              allow: Callable[[str], bool] | None = None) -> BlockingPublishedMemory:
        """Blocking `Bus.publish_shared_memory`; `allow` runs on the bus thread."""
        published = self.run(self.bus.publish_shared_memory(name, source, writable=writable, allow=allow))
        return BlockingPublishedMemory(self, published)

    def shared_memory(self, name: str, size: int | None = None, *, writable: bool = False) -> SharedBuffer:
        """Blocking `Bus.shared_memory`: the mapped SharedBuffer (a plain context manager)."""
        return self.run(self.bus.shared_memory(name, size, writable=writable))

    def export(self, path: str, obj: Any) -> Any:
        """Export an Interface instance; its signals may then be emitted from any thread."""
        return self.call_in_loop(self.bus.export, path, obj)

    def unexport(self, path: str, obj: Any = None) -> None:
        self.call_in_loop(self.bus.unexport, path, obj)

    def proxy(self, name: str, path: str, interface: Any = None, *, timeout: float | None = None
              ) -> BlockingProxy:
        return BlockingProxy(self, self.run(self.bus.proxy(name, path, interface, timeout=timeout)))

    def close(self) -> None:
        if not self.running:
            return
        try:
            self.run(self.bus.close(), timeout=10)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> BlockingBus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect_blocking(address: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                     backend: str | None = None, unix_fds: bool = True) -> BlockingBus:
    """Connect without an event loop; same arguments as `busd_client.connect`."""
    return BlockingBus(address, timeout=timeout, backend=backend, unix_fds=unix_fds)


class BlockingSubscription:
    """A subscription of the blocking facade; close() waits until the bus removed the rule."""

    def __init__(self, owner: BlockingBus, subscription: Subscription) -> None:
        self.owner = owner
        self.subscription = subscription

    @property
    def closed(self) -> bool:
        return self.subscription.closed

    def close(self) -> None:
        if self.owner.running:
            self.owner.run(self.subscription.aclose())

    def __enter__(self) -> BlockingSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BlockingLock:
    """A lock or semaphore of the blocking facade: a plain context manager, or acquire()/release()."""

    def __init__(self, owner: BlockingBus, lock: NameLock | NameSemaphore) -> None:
        self.owner = owner
        self.lock = lock

    def acquire(self, timeout: float | None = None) -> Any:
        """Block until acquired; LockTimeout after `timeout` (or the one given at creation)."""
        return self.owner.run(self.lock.acquire(timeout))

    def release(self) -> None:
        self.owner.run(self.lock.release())

    def __enter__(self) -> BlockingLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class BlockingPublishedMemory:
    """A block published by the blocking facade; close() withdraws it."""

    def __init__(self, owner: BlockingBus, published: PublishedMemory) -> None:
        self.owner = owner
        self.published = published

    @property
    def buffer(self) -> SharedBuffer:
        return self.published.buffer

    def close(self) -> None:
        if self.owner.running:
            self.owner.run(self.published.close())

    def __enter__(self) -> BlockingPublishedMemory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BlockingNameWatcher:
    def __init__(self, owner: BlockingBus, watcher: NameWatcher) -> None:
        self.owner = owner
        self.watcher = watcher

    @property
    def name_owner(self) -> str | None:
        return self.watcher.owner

    def wait_for_owner(self, timeout: float | None = None) -> str:
        return self.owner.run(self.watcher.wait_for_owner(timeout))

    def wait_vanished(self, timeout: float | None = None) -> None:
        self.owner.run(self.watcher.wait_vanished(timeout))

    def close(self) -> None:
        if self.owner.running:
            self.owner.call_in_loop(self.watcher.close)

    def __enter__(self) -> BlockingNameWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _BlockingMembers:
    """Blocking access to proxy members: methods block, properties are attributes, signals connect."""

    def __init__(self, owner: BlockingBus, lookup: Callable[[str], Any]) -> None:
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_lookup", lookup)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        member = self._lookup(name)
        owner: BlockingBus = self._owner
        if isinstance(member, ProxyMethod):
            def call(*args: Any, **options: Any) -> Any:
                return owner.run(member(*args, **options))
            call.__doc__ = member.__doc__
            return call
        if isinstance(member, ProxyProperty):
            return owner.run(member.get())
        if isinstance(member, ProxySignal):
            return BlockingSignal(owner, member)
        return member

    def __setattr__(self, name: str, value: Any) -> None:
        member = self._lookup(name)
        if not isinstance(member, ProxyProperty):
            raise AttributeError(f"{name} is not a property of the remote object")
        self._owner.run(member.set(value))

    def connect_property(self, name: str, slot: Callable[[Any], Any]) -> BlockingSubscription:
        """Call `slot(new_value)` (on the bus thread) whenever property `name` changes."""
        member = self._lookup(name)
        if not isinstance(member, ProxyProperty):
            raise TypeError(f"{name} is not a property")
        return BlockingSubscription(self._owner, self._owner.run(member.connect(slot)))


class BlockingProxy(_BlockingMembers):
    """A remote object for blocking code.  `proxy["iface"]` narrows to one interface."""

    def __init__(self, owner: BlockingBus, proxy: Proxy) -> None:
        super().__init__(owner, lambda name: getattr(proxy, name))
        object.__setattr__(self, "proxy", proxy)

    def __getitem__(self, interface: str) -> _BlockingMembers:
        view: ProxyInterface = self.proxy[interface]
        return _BlockingMembers(self._owner, lambda name: getattr(view, name))

    def get_all(self, interface: str | None = None) -> dict[str, Any]:
        return self._owner.run(self.proxy.get_all(interface))


class BlockingSignal:
    def __init__(self, owner: BlockingBus, signal: ProxySignal) -> None:
        self.owner = owner
        self.signal = signal

    def connect(self, slot: Callable[..., Any], **arg_filters: str) -> BlockingSubscription:
        """Connect `slot`; it runs on the bus thread."""
        return BlockingSubscription(self.owner, self.owner.run(self.signal.connect(slot, **arg_filters)))
