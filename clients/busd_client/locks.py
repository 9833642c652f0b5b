"""System-wide locks and counting semaphores made of bus-name ownership (what QSystemSemaphore does with a key).

    async with bus.lock("org.example.Printer.Lock", timeout=30):
        print_page()

Theory: a well-known name has at most one owner, and RequestName without
DO_NOT_QUEUE puts a requester that cannot own it now at the end of the name's
FIFO queue; the bus gives the name to the head of the queue when the owner
releases it or disconnects.  So a lock is a name: acquiring is RequestName,
holding is owning, releasing is ReleaseName, and a holder that crashes
releases by disconnecting.  The bus tells the new owner with NameAcquired,
which may arrive before RequestName's reply: the waiter is registered first.
A waiter that gives up (timeout, cancellation) sends ReleaseName at once,
without awaiting it, which removes it from the queue (or passes the name on if
it was granted meanwhile); anything this connection sends afterwards reaches
the bus after it.  Ownership belongs to the connection, so tasks sharing one
connection also queue locally first.

A semaphore of N permits is N names, NAME.p0 ... NAME.p{N-1}: a holder owns one
of them, so at most N hold it at once.  Fairness: a free permit goes to
whoever asks first; when all are taken, a waiter queues on the permit with the
shortest queue and is served in that queue's order, and it also takes any
permit that becomes free with nobody queued on it.  There is no single queue
across permits: a waiter may be overtaken by one queued on a permit that
frees sooner.
"""

from __future__ import annotations

import asyncio
from typing import Any

from busd.wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH

from .errors import LockError, LockTimeout, NameHasNoOwner
from .matching import SignalRule
from .names import NameFlag, NameOwnership, RequestNameReply

MAX_PERMITS = 64  # a semaphore is that many bus names; the bus limits names per connection


def permit_names(name: str, permits: int) -> list[str]:
    """The bus names standing for a semaphore's permits: NAME.p0 ... NAME.p{permits-1}."""
    return [f"{name}.p{index}" for index in range(permits)]


def _deadline(loop: asyncio.AbstractEventLoop, timeout: float | None) -> float | None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be None or >= 0, got {timeout}")
    return None if timeout is None else loop.time() + timeout


class _Events:
    """NameAcquired and freed-permit events, in arrival order, for one waiter."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def acquired(self, name: str) -> None:
        self.queue.put_nowait(("acquired", name))

    def freed(self, name: str) -> None:
        self.queue.put_nowait(("freed", name))


class NameLocks:
    """One connection's locks and semaphores: the local queues in front of the bus's name queues."""

    def __init__(self, names: NameOwnership) -> None:
        self.names = names
        self.router = names.router
        self._local_locks: dict[str, asyncio.Lock] = {}
        self._local_permits: dict[str, tuple[int, asyncio.Semaphore, asyncio.Lock]] = {}
        self.held_permits: set[str] = set()
        """Permit names this connection holds now."""

    def lock(self, name: str, timeout: float | None = None) -> NameLock:
        return NameLock(self, name, timeout)

    def semaphore(self, name: str, permits: int, timeout: float | None = None) -> NameSemaphore:
        if not 1 <= permits <= MAX_PERMITS:
            raise ValueError(f"a semaphore has 1 to {MAX_PERMITS} permits, got {permits}")
        return NameSemaphore(self, name, permits, timeout)

    def local_lock(self, name: str) -> asyncio.Lock:
        return self._local_locks.setdefault(name, asyncio.Lock())

    def local_permits(self, name: str, permits: int) -> tuple[asyncio.Semaphore, asyncio.Lock]:
        """The local side of a semaphore: at most `permits` local holders, and one local task at a
        time asking the bus (so no two tasks of this connection claim the same permit name)."""
        known = self._local_permits.get(name)
        if known is None:
            known = self._local_permits[name] = (permits, asyncio.Semaphore(permits), asyncio.Lock())
        if known[0] != permits:
            raise LockError(f"semaphore {name} is used with {known[0]} permits in this process, not {permits}")
        return known[1], known[2]

    async def request(self, name: str, flags: NameFlag, events: _Events | None) -> RequestNameReply:
        """RequestName, with NameAcquired going to `events` (registered before the request is sent)."""
        return await self.names.request(name, flags, events.acquired if events is not None else None, None)

    def leave(self, name: str) -> None:
        """Leave `name`'s queue or give it back, without waiting (see the module docstring)."""
        self.names.release_soon(name)

    async def release(self, name: str) -> None:
        await self.names.release(name)


class NameLock:
    """A lock on one bus name, shared by every process on the bus; an async context manager.

    `timeout` (seconds, None for no limit) bounds each acquire; running out
    raises LockTimeout, and cancellation works the same, leaving the queue.
    Not reentrant.
    """

    def __init__(self, locks: NameLocks, name: str, timeout: float | None) -> None:
        self.locks = locks
        self.name = name
        self.timeout = timeout
        self._local = locks.local_lock(name)
        self._held = False

    @property
    def held(self) -> bool:
        """True between a successful acquire and release."""
        return self._held

    async def acquire(self, timeout: float | None = None) -> None:
        """Wait until this connection owns the name: at once, or when the bus hands it over."""
        if self._held:
            raise LockError(f"lock {self.name} is already held by this NameLock (it is not reentrant)")
        deadline = _deadline(self.locks.router.loop, self.timeout if timeout is None else timeout)
        try:
            async with asyncio.timeout_at(deadline):
                await self._local.acquire()
                try:
                    await self._acquire_name()
                except BaseException:
                    self._local.release()
                    raise
        except TimeoutError:
            raise LockTimeout(f"lock {self.name} not acquired within {self.timeout if timeout is None else timeout} s"
                              ) from None
        self._held = True

    async def _acquire_name(self) -> None:
        events = _Events()
        try:
            reply = await self.locks.request(self.name, NameFlag.NONE, events)
            if reply == RequestNameReply.IN_QUEUE:
                while (await events.queue.get()) != ("acquired", self.name):
                    pass
            elif reply == RequestNameReply.ALREADY_OWNER:
                raise LockError(f"lock {self.name}: this connection already owns the name, outside the lock")
            elif reply != RequestNameReply.PRIMARY_OWNER:
                raise LockError(f"lock {self.name}: RequestName answered {reply.name}")
        except LockError:
            raise
        except BaseException:
            self.locks.leave(self.name)
            raise

    async def release(self) -> None:
        """Give the name back; the bus hands it to the next waiter in its queue."""
        if not self._held:
            raise LockError(f"lock {self.name} is not held")
        self._held = False
        try:
            await self.locks.release(self.name)
        finally:
            self._local.release()

    async def __aenter__(self) -> NameLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()

    def __repr__(self) -> str:
        return f"<NameLock {self.name} {'held' if self._held else 'free'}>"


class NameSemaphore:
    """A counting semaphore of `permits` holders across the bus, on names NAME.p0 ... (see the module docstring).

    `async with bus.semaphore(name, 3):` holds one permit inside the block;
    `permit` is the name held.
    """

    def __init__(self, locks: NameLocks, name: str, permits: int, timeout: float | None) -> None:
        self.locks = locks
        self.name = name
        self.permits = permits
        self.timeout = timeout
        self.permit_names = permit_names(name, permits)
        self._local, self._asking = locks.local_permits(name, permits)
        self.permit: str | None = None
        """The permit name held now, or None."""

    async def acquire(self, timeout: float | None = None) -> str:
        """Wait for a permit and return its name."""
        if self.permit is not None:
            raise LockError(f"semaphore {self.name}: this NameSemaphore already holds {self.permit}")
        limit = self.timeout if timeout is None else timeout
        deadline = _deadline(self.locks.router.loop, limit)
        try:
            async with asyncio.timeout_at(deadline):
                await self._local.acquire()
                try:
                    async with self._asking:
                        permit = await self._acquire_permit()
                        self.locks.held_permits.add(permit)
                except BaseException:
                    self._local.release()
                    raise
        except TimeoutError:
            raise LockTimeout(f"semaphore {self.name}: no permit within {limit} s") from None
        self.permit = permit
        return permit

    async def _acquire_permit(self) -> str:
        events = _Events()
        rule = SignalRule.for_signal(DRIVER_NAME, DRIVER_PATH, DRIVER_INTERFACE, "NameOwnerChanged",
                                     arg0namespace=self.name)
        ours = set(self.permit_names)

        def on_owner_changed(message: Any) -> None:
            name, _, new_owner = message.body
            if name in ours and not new_owner:
                events.freed(name)

        asked: set[str] = set()  # names that may be ours or have us queued, left again on failure
        try:
            # Subscribed before trying, so a permit freed between a try and queueing is seen.
            async with await self.locks.router.signals.subscribe(rule, on_owner_changed):
                for permit in self._candidates():
                    asked.add(permit)
                    if await self._try(permit):
                        return permit
                    asked.discard(permit)
                queued = await self._shortest_queue()
                asked.add(queued)
                reply = await self.locks.request(queued, NameFlag.NONE, events)
                if reply == RequestNameReply.PRIMARY_OWNER:
                    return queued
                if reply != RequestNameReply.IN_QUEUE:
                    raise LockError(f"semaphore {self.name}: RequestName {queued} answered {reply.name}")
                while True:
                    kind, name = await events.queue.get()
                    if kind == "acquired" and name == queued:
                        return queued
                    if kind == "freed" and name != queued and name not in self.locks.held_permits:
                        asked.add(name)
                        if await self._try(name):
                            asked.discard(queued)
                            self.locks.leave(queued)  # out of the queue, or the permit passes on
                            return name
                        asked.discard(name)
        except BaseException:
            for name in asked:
                self.locks.leave(name)
            raise

    def _candidates(self) -> list[str]:
        return [name for name in self.permit_names if name not in self.locks.held_permits]

    async def _try(self, permit: str) -> bool:
        reply = await self.locks.request(permit, NameFlag.DO_NOT_QUEUE, None)
        return reply == RequestNameReply.PRIMARY_OWNER

    async def _shortest_queue(self) -> str:
        candidates = self._candidates()
        queues = await asyncio.gather(*(self._queue_length(name) for name in candidates))
        return min(zip(queues, candidates))[1]

    async def _queue_length(self, name: str) -> int:
        try:
            return len(await self.locks.router.call_driver("ListQueuedOwners", name, signature="s"))
        except NameHasNoOwner:  # freed meanwhile: the shortest queue of all
            return 0

    async def release(self) -> None:
        """Give the permit back: to the head of its queue, or free for anyone."""
        permit = self.permit
        if permit is None:
            raise LockError(f"semaphore {self.name}: no permit held")
        self.permit = None
        self.locks.held_permits.discard(permit)
        try:
            await self.locks.release(permit)
        finally:
            self._local.release()

    async def __aenter__(self) -> NameSemaphore:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()

    def __repr__(self) -> str:
        return f"<NameSemaphore {self.name} of {self.permits} holding {self.permit}>"
