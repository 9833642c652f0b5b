"""The server side of one client connection: a Stream that authenticates its peer, then hands messages to the bus.

The reading, framing, fd passing and batched writing are busd.transport.stream's,
the hand-over of each message to the bus busd.transport.served's (ServedStream);
this adds the server's SASL side (fed in bounded slices), the peer's kernel
credentials and the rest of the PeerLink members the bus reads. What may take long runs in
a thread while that peer's input alone waits: the user database and the cookie
keyring during authentication, and the body check of every message over
LARGE_MESSAGE that walks its elements (a 30 MiB body of tiny mixed variants
walks for seconds; a byte array of any size is checked in a few steps, in place).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import logging
import os
import socket
import concurrent.futures
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Generic

from ..bus.ports import BusEntry, Credentials, PeerT
from ..wire.errors import ProtocolError
from ..wire.message import Header, check_message_body
from ..wire.sasl import Cookie
from ..wire.sasl_server import ServerAuthenticator, cookie_for_identity
from .served import MAX_PEER_GROUPS, SO_PEERGROUPS, ServedStream, peer_credentials
from .stream import HELD_FOR_THREAD
from .users import UserDirectory

log = logging.getLogger("busd.connection")

MAX_AUTH_BUFFER = 16384  # dbus-daemon's cap on unsent handshake replies (and on an unfinished line)
# Bodies over this are checked in a thread. Below it the inline walk costs the loop at most ~0.3 s
# (1 MiB of empty-string variants, the worst shape; ordinary data microseconds); above it the hand-off
# (a loop turn, and up to the GIL's 5 ms switch interval when the loop is busy) is noise, where for
# messages of tens of KiB it would throttle a peer that streams them.
LARGE_MESSAGE = 1 << 20


def credentials_of(sock: socket.socket, unix: bool | None = None) -> Credentials:
    """What the kernel says about the process at the other end of a unix socket (nothing for TCP).
    `unix`: whether it is one, when the caller knows (socket.family converts to an enum each time)."""
    if not (sock.family == socket.AF_UNIX if unix is None else unix):
        return Credentials()
    try:
        pid, uid, gid, supplementary = peer_credentials(sock)
    except OSError:
        return Credentials()
    if supplementary is None:  # more than 256 groups
        try:
            supplementary = _peer_groups(sock)
        except OSError:
            supplementary = []
    groups = {gid, *supplementary}  # the kernel lists only supplementary groups; dbus-daemon reports the primary too
    return Credentials(pid or None, uid, gid, tuple(sorted(groups)))


def _peer_groups(sock: socket.socket) -> list[int]:
    """The supplementary groups of a peer with more than 256 (a <policy group> rule must see them all):
    Python's getsockopt() cannot pass a larger buffer, libc's can, and on ERANGE the kernel says the
    size it needs (the group list may grow meanwhile)."""
    size = 8 * MAX_PEER_GROUPS
    while True:
        buffer = (ctypes.c_uint32 * (size // 4))()
        length = ctypes.c_uint32(size)
        if _libc().getsockopt(sock.fileno(), socket.SOL_SOCKET, SO_PEERGROUPS, buffer, ctypes.byref(length)) == 0:
            return list(buffer[: length.value // 4])
        error = ctypes.get_errno()
        if error != errno.ERANGE:
            raise OSError(error, os.strerror(error))
        size = max(2 * size, length.value)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _keyring_thread() -> Executor:
    # One thread: the keyring is one file under one lock, so its users queue anyway.
    return ThreadPoolExecutor(1, thread_name_prefix="busd-keyring")


def _check_thread() -> Executor:
    # One thread: the check is Python, so more threads would not run at once under the GIL; they would
    # only take the GIL from the loop more often (each of its system calls gives it up).
    return ThreadPoolExecutor(1, thread_name_prefix="busd-check")


def body_error(message: bytes, h: Header) -> ProtocolError | None:
    """What is wrong with the body of `message` (run in a thread), or None."""
    try:
        check_message_body(message, h)
    except ProtocolError as exc:
        return exc
    return None


@dataclass
class Lookups:
    """Where connections run what may block or take long (the user database, the cookie keyring, the
    checks of large bodies): never on the event loop."""

    users: UserDirectory = field(default_factory=UserDirectory)
    keyring: Executor = field(default_factory=_keyring_thread)
    checks: Executor = field(default_factory=_check_thread)

    def close(self) -> None:
        self.keyring.shutdown(wait=False, cancel_futures=True)
        self.checks.shutdown(wait=False, cancel_futures=True)
        self.users.close()


_SHARED_LOOKUPS = Lookups()  # for connections made without a daemon's own (tests)


class HandshakeDeadlines:
    """Drops each connection that has not said Hello by its deadline (auth_timeout after it was accepted),
    with one timer for all of them: a timer per connection, made at accept and cancelled at Hello, was
    about 2% of a connection's CPU under churn.

    Deadlines are kept in the order they were set, which is the order they fall due while auth_timeout
    stays the same; once a reload shortens it, expiry looks through them all until the queue next empties.
    """

    # uvloop keeps its clock in milliseconds: a timer may run up to one early.
    SLACK = 0.001

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._due: dict[Connection, tuple[float, int]] = {}  # (deadline, auth_timeout in ms), in order set
        self._in_order = True
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def __len__(self) -> int:
        return len(self._due)

    def start(self, conn: Connection, timeout_ms: int) -> None:
        """`conn` must say Hello within `timeout_ms` or be dropped."""
        deadline = self.loop.time() + timeout_ms / 1000
        if deadline < self._last:
            self._in_order = False
        self._last = deadline
        self._due[conn] = (deadline, timeout_ms)
        conn.deadlines = self
        if deadline < self._timer_at:
            self._arm(deadline)

    def stop(self, conn: Connection) -> None:
        """`conn` said Hello or closed. (The timer stays: when it runs, it finds nothing due and moves on.)"""
        self._due.pop(conn, None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        now = self.loop.time() + self.SLACK
        expired = []
        for conn, (deadline, timeout_ms) in self._due.items():
            if deadline <= now:
                expired.append((conn, timeout_ms))
            elif self._in_order:
                break
        for conn, _ in expired:
            del self._due[conn]
        if self._due:
            self._arm(next(iter(self._due.values()))[0] if self._in_order
                      else min(deadline for deadline, _ in self._due.values()))
        else:
            self._in_order, self._last = True, 0.0
        for conn, timeout_ms in expired:
            conn.drop(f"no Hello within auth_timeout={timeout_ms}ms")


class Connection(ServedStream, Generic[PeerT]):
    """The I/O side of one peer, a PeerLink. The bus side (a PeerT) is the bus's, made once SASL succeeds."""

    # No __dict__ over the compiled ServedStream: less memory per connection, and the bus's attribute reads
    # on its links find the methods without probing an instance dict first.
    __slots__ = ("lookups", "credentials", "looking_up", "_waiting_input", "deadlines")
    large_message_size = LARGE_MESSAGE
    bus: BusEntry[PeerT]
    auth: ServerAuthenticator | None
    peer: PeerT | None

    def __init__(self, bus: BusEntry[PeerT], sock: socket.socket,
                 make_auth: Callable[[Credentials], ServerAuthenticator], label: str,
                 lookups: Lookups | None = None, unix: bool | None = None):
        super().__init__(bus, label)
        self.attach(sock)
        self.lookups = lookups or _SHARED_LOOKUPS
        self.credentials = credentials_of(sock, unix)
        self.auth = make_auth(self.credentials)
        # A lookup or a body check for this peer runs in a thread: its input waits (held), with what it
        # sent meanwhile (in _waiting_input during authentication, then in the stream's buffer).
        self.looking_up = False
        self._waiting_input = b""
        # Incomplete until Hello, as in dbus-daemon: the bus counts it against
        # max_incomplete_connections, and the daemon's HandshakeDeadlines drop it when auth_timeout expires first.
        self.deadlines: HandshakeDeadlines | None = None
        bus.link_opened(self)
        self.start_reading()

    # ------------------------------------------------------------ reading (data_received: ServedStream's)

    def feed_handshake(self, data: bytes) -> None:
        """Feed the handshake in slices, dropping a peer that leaves over MAX_AUTH_BUFFER of replies unread.

        Each junk line is answered with an ERROR up to 8 times its size, so a
        peer that writes lines and never reads would make the bus buffer without
        bound. dbus-daemon disconnects it once 16 KiB of replies are unsent.
        """
        pos = 0
        while pos < len(data) and self.auth is not None and not self.looking_up:
            chunk = data[pos:pos + MAX_AUTH_BUFFER] if pos or len(data) > MAX_AUTH_BUFFER else data
            pos += len(chunk)
            self._auth_replied(self._auth_step(self.auth.receive_data, chunk))
            if self.closed:
                return
        if pos < len(data) and not self.closed:
            if self.peer is not None:
                self.feed(data[pos:])  # the first messages, after BEGIN in the same read (or behind a check)
            elif self.looking_up:
                self._waiting_input += data[pos:]  # handshake lines or first messages: after the lookup

    def _auth_step(self, step: Callable, *args: object) -> bytes | None:
        """One step of the SASL machine: its replies, or None when it failed (the connection is dropped)."""
        try:
            return step(*args)
        except ProtocolError as exc:
            last_words = getattr(exc, "reply", b"")
            if last_words:
                self.send_now(last_words)
            self.drop(f"authentication failed: {exc.reason}")
            return None

    def _auth_replied(self, reply: bytes | None) -> None:
        """Send the machine's replies and move on: wait for a cookie, or for the peer's groups once done."""
        auth = self.auth
        if reply is None or auth is None:
            return
        if reply:
            # Written at the end of this read, with what else it queued: after a pipelined BEGIN and Hello,
            # the OK and the Hello reply go in one write. At once if the peer lets replies pile up.
            self.queue_bytes(reply)
            if self.out_bytes > MAX_AUTH_BUFFER:
                self.flush()
            if self.closed:
                return
        if auth.cookie_wanted is not None:
            self._look_up(self.lookups.keyring.submit(cookie_for_identity, auth.keyring, auth.cookie_wanted),
                          self._cookie_found, "looking up who it is")
        elif auth.done:
            self.auth = None
            self.can_pass_fds = bool(auth.unix_fd)
            self._waiting_input = bytes(auth.leftover)
            self._authenticated_as(auth.uid)
        elif self.out_bytes > MAX_AUTH_BUFFER:
            self.drop(f"does not read its authentication replies: {self.out_bytes} bytes unsent, "
                      f"the limit is {MAX_AUTH_BUFFER}")

    # ------------------------------------------------------------ lookups off the loop

    def _look_up(self, future: concurrent.futures.Future | asyncio.Future, then: Callable[[Any], None],
                 what: str) -> None:
        """Hold this peer's input until `future` (a thread's work: `what`) is done, then call `then` with its
        result and frame what waited. Back-pressure holds it on its own account meanwhile."""
        self.looking_up = True
        self.hold_input(HELD_FOR_THREAD)
        asyncio.wrap_future(future, loop=self.loop).add_done_callback(lambda done: self._looked_up(done, then, what))

    def _looked_up(self, done: asyncio.Future, then: Callable[[Any], None], what: str) -> None:
        if self.closed:
            return
        self.looking_up = False
        pending, self._waiting_input = self._waiting_input, b""
        self.bus.input_started()
        try:
            error = done.exception() if not done.cancelled() else asyncio.CancelledError()
            if error is not None:
                self.drop(f"{what} failed: {type(error).__name__}: {error}")
                return
            then(done.result())
            if self.closed:
                return
            if self.looking_up:  # another lookup, for what was buffered before `pending` came
                self._waiting_input += pending
                return
            self.release_input(HELD_FOR_THREAD)
            if self.auth is not None:
                if pending:
                    self.feed_handshake(pending)
            elif self.peer is not None:
                self.feed(pending)  # (b"" too: what waited behind a large body is in the stream's buffer)
        except Exception as exc:  # noqa: BLE001 - as in data_received: this peer alone pays
            self.input_failed(exc)
        finally:
            self.input_ended()

    def _cookie_found(self, cookie: Cookie | None) -> None:
        assert self.auth is not None
        self._auth_replied(self._auth_step(self.auth.cookie_found, cookie))

    def _authenticated_as(self, uid: int | None) -> None:
        """SASL succeeded as `uid`: know its groups (a thread asks the user database if need be), then tell the bus."""
        if uid is None:
            self._admit(None)
            return
        groups = self.lookups.users.cached_groups(uid)
        if groups is not None:
            self._admit((uid, groups))
        else:
            self._look_up(self.lookups.users.groups(self.loop, uid),
                          lambda found: self._admit((uid, found)), "looking up who it is")

    def _admit(self, identity: tuple[int, tuple[int, ...]] | None) -> None:
        """Hand the authenticated peer to the bus, with credentials naming the uid SASL authenticated.

        As dbus-daemon: a TCP peer authenticated by DBUS_COOKIE_SHA1 is that user
        (GetConnectionUnixUser, <policy user>, max_connections_per_user); its
        <policy group> rules see the user database's groups, the kernel giving none.
        """
        if identity is not None:
            uid, user_groups = identity
            kernel = self.credentials
            if kernel.uid == uid:
                self.credentials = Credentials(kernel.pid, uid, kernel.gid, kernel.groups, user_groups)
            else:
                self.credentials = Credentials(kernel.pid, uid, user_groups[0] if user_groups else None, (),
                                               user_groups)
            auth_uid: int | None = uid
        else:
            auth_uid = None
        peer = self.bus.peer_authenticated(self, auth_uid)
        if peer is None:
            return
        self.peer = peer
        pending, self._waiting_input = self._waiting_input, b""
        if pending:
            self.feed(pending)  # what followed BEGIN: the first messages

    def check_body_later(self, message: bytes, h: Header) -> None:
        """A body over LARGE_MESSAGE is checked in a thread; this peer's input waits, other peers' does not."""
        self._look_up(self.lookups.checks.submit(body_error, message, h), self.body_checked,
                      "checking its message")

    def registered(self) -> None:
        """The peer said Hello: the connection is complete and may stay past auth_timeout."""
        if self.deadlines is not None:
            self.deadlines.stop(self)
            self.deadlines = None

    # ------------------------------------------------------------ closing

    def drop(self, reason: str, level: int = logging.WARNING) -> None:
        """Drop the connection; the bus forgets the peer and tells whoever must know."""
        if self.closed:
            return
        who = self.peer.unique_name if self.peer is not None and self.peer.unique_name else self.label
        log.log(level, "dropping connection %s (uid=%s pid=%s): %s", who,
                self.credentials.uid, self.credentials.pid, reason)
        self.shut()
        if self.deadlines is not None:
            self.deadlines.stop(self)
        self.auth = None
        self.bus.link_closed(self)
        # The bus is done with the peer: without the cycle (peer.conn, conn.peer) both go by their reference
        # counts as soon as the bus lets go, not at the next collection of the oldest generation (under churn
        # the collector walked every live connection to find the departed ones: a third of the loop's time).
        self.peer = None
