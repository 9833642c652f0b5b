"""The user database (NSS) as the transport asks it: off the event loop, cached per uid until a reload.

A passwd/group lookup may go to LDAP or sssd and take seconds; on the loop it
would freeze the whole bus. So the transport resolves a peer's groups in a
thread while only that peer waits, and caches the answer per uid until the
configuration is reloaded (dbus-daemon keeps its user database cache just as
long). The bus's policy then decides from what was resolved.
"""

from __future__ import annotations

import asyncio
import os
import pwd
from concurrent.futures import Executor, ThreadPoolExecutor

MAX_CACHED_USERS = 1024  # uids come from the kernel or SASL, not from peers' whims; still, a bound
LOOKUP_THREADS = 4


def groups_of_user(uid: int) -> tuple[int, ...]:
    """Every group the user database lists for `uid` (its primary group first); () if there is no such user."""
    try:
        entry = pwd.getpwuid(uid)
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except (KeyError, OSError):
        return ()
    return (entry.pw_gid, *sorted(set(groups) - {entry.pw_gid}))


class UserDirectory:
    """Groups per uid, looked up in worker threads and cached until forget()."""

    def __init__(self, executor: Executor | None = None) -> None:
        self._executor = executor
        self._groups: dict[int, tuple[int, ...]] = {}
        self._asking: dict[int, asyncio.Future[tuple[int, ...]]] = {}  # one lookup per uid at a time

    def cached_groups(self, uid: int) -> tuple[int, ...] | None:
        """The groups of `uid` if known already (no lookup), else None."""
        return self._groups.get(uid)

    def groups(self, loop: asyncio.AbstractEventLoop, uid: int) -> asyncio.Future[tuple[int, ...]]:
        """The groups of `uid` (see groups_of_user), resolved in a worker thread; the answer is cached.

        Connections of a uid being looked up share that lookup, so one slow user
        takes at most one thread.
        """
        future = self._asking.get(uid)
        if future is not None and future.get_loop() is loop:
            return future
        if self._executor is None:
            self._executor = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="busd-users")
        future = self._asking[uid] = loop.run_in_executor(self._executor, groups_of_user, uid)
        future.add_done_callback(lambda done: self._remember(uid, done))
        return future

    def _remember(self, uid: int, done: asyncio.Future[tuple[int, ...]]) -> None:
        if self._asking.get(uid) is done:
            del self._asking[uid]
        if done.cancelled() or done.exception() is not None:
            return
        if len(self._groups) >= MAX_CACHED_USERS:
            self._groups.clear()
        self._groups[uid] = done.result()

    def close(self) -> None:
        """Stop the lookup threads (the daemon is stopping); lookups still running are abandoned."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def forget(self) -> None:
        """Look every user up again from now on (the configuration was reloaded)."""
        self._groups.clear()
        self._asking.clear()


__all__ = ["UserDirectory", "groups_of_user"]
