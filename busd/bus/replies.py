"""Expected replies: the calls whose answer the bus lets through, each with its deadline.

Theory. A METHOD_RETURN or ERROR passes only when a call is pending for it:
`pending` maps (caller, serial, callee) to the call's deadline, kept in
insertion order so expiry is a sweep from the front. As in dbus-daemon, a
caller may reuse a serial for calls to different callees, but a call that
would duplicate a key still pending is refused. Each callee keeps the keys it
must answer (Peer.expecting), so its departure answers them with NoReply; each
caller counts its calls still unanswered (Peer.replies_outstanding) against
max_replies_per_connection, and its user's ledger line PendingReplies against
the per-user quota; it keeps their keys (Peer.calling), so its departure drops
them, as dbus-daemon drops a departed caller's pending replies.

The router reads `pending` and settles an answered call inline on its
per-message path (what forget() does), to spend no call per reply.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from . import errors
from .histogram import REPLY_BOUNDS, Histogram

if TYPE_CHECKING:
    from .ledger import Ledger
    from .limits import Limits
    from .peer import Peer

ReplyKey = tuple["Peer", int, "Peer"]  # (caller, serial of its call, callee)


class ReplyTracker:
    """The pending calls of one bus."""

    __slots__ = ("pending", "ledger")

    def __init__(self, ledger: Ledger) -> None:
        self.pending: dict[ReplyKey, float] = {}  # key -> deadline (time.monotonic()), oldest first
        self.ledger = ledger

    def expect(self, caller: Peer, serial: int, callee: Peer, limits: Limits) -> tuple[str, str] | None:
        """Track the reply to a call; or, when the bus will not, why: the error name and text for the caller."""
        key = (caller, serial, callee)
        pending = self.pending
        if key in pending:
            return (errors.ACCESS_DENIED,
                    "Message has the same reply serial as a currently-outstanding existing method call")
        if caller.replies_outstanding >= limits.max_replies_per_connection:
            return (errors.LIMITS_EXCEEDED, "The maximum number of pending replies per connection has been reached")
        user = caller.user
        if user is not None:
            quota = self.ledger.quotas.pending_replies
            if user.replies >= quota:
                self.ledger.refused(caller, "PendingReplies", quota)
                return (errors.LIMITS_EXCEEDED, f"The maximum number of pending replies for UID {user.uid} "
                                                f"has been reached (max_replies_per_user={quota})")
            user.replies += 1
        caller.replies_outstanding += 1
        if caller.replies_outstanding > caller.peak_replies:
            caller.peak_replies = caller.replies_outstanding
        now = time.monotonic()
        pending[key] = now + limits.reply_timeout / 1000
        callee.expecting[key] = None
        caller.calling[key] = now
        return None

    def forget(self, key: ReplyKey) -> bool:
        """Stop tracking a call (answered, or never delivered); False if it was not tracked."""
        if self.pending.pop(key, None) is None:
            return False
        caller, _, callee = key
        callee.expecting.pop(key, None)
        unanswered(caller, key)
        return True

    def callee_gone(self, callee: Peer) -> list[tuple[Peer, int]]:
        """`callee` left: stop tracking the calls it did not answer, and return them as (caller, serial)."""
        calls = []
        for key in list(callee.expecting):
            if self.pending.pop(key, None) is not None:
                caller, serial, _ = key
                unanswered(caller, key)
                calls.append((caller, serial))
        callee.expecting.clear()
        return calls

    def caller_gone(self, caller: Peer) -> None:
        """`caller` left: its calls no longer wait for an answer (a late one is dropped as unexpected)."""
        pending = self.pending
        for key in caller.calling:
            if pending.pop(key, None) is not None:
                callee = key[2]
                callee.expecting.pop(key, None)
        if caller.user is not None:
            caller.user.replies -= caller.replies_outstanding
        caller.replies_outstanding = 0
        caller.calling.clear()

    def expired(self, now: float) -> list[tuple[Peer, int]]:
        """Stop tracking the calls whose deadline passed, and return them as (caller, serial), oldest first."""
        pending = self.pending
        keys = []
        for key, deadline in pending.items():
            if deadline > now:
                break
            keys.append(key)
        for key in keys:
            del pending[key]
            caller, _, callee = key
            callee.expecting.pop(key, None)
            unanswered(caller, key)
        return [(caller, serial) for caller, serial, _ in keys]


class ReplyTimes:
    """How long answered calls took through the bus (call queued to reply routed): one histogram, and per
    callee its total and count (Peer.reply_seconds, Peer.replies_answered). Kept only once the daemon asks
    for it with measure_reply_times() (metrics enabled): otherwise a reply costs no clock read."""

    def __init__(self) -> None:
        self.histogram = Histogram(REPLY_BOUNDS)

    def answered(self, callee: Peer, started: float) -> None:
        seconds = time.monotonic() - started
        self.histogram.observe(seconds)
        callee.reply_seconds += seconds
        callee.replies_answered += 1


_reply_times: ReplyTimes | None = None


def measure_reply_times() -> ReplyTimes:
    """Start timing every answered call in this process (the daemon's metrics ask once) and return the record."""
    global _reply_times
    if _reply_times is None:
        _reply_times = ReplyTimes()
    return _reply_times


def settled(caller: Peer, key: ReplyKey) -> None:
    """The call `key` of `caller` is answered: its counts and its user's ledger line go down (the router
    calls this inline for each reply it lets through)."""
    started = caller.calling.get(key) if _reply_times is not None else None
    unanswered(caller, key)
    if started is not None:
        _reply_times.answered(key[2], started)


def unanswered(caller: Peer, key: ReplyKey) -> None:
    """The call `key` of `caller` no longer waits, unanswered (undeliverable, timed out, callee gone)."""
    caller.calling.pop(key, None)
    caller.replies_outstanding -= 1
    user = caller.user
    if user is not None:
        if user.replies > user.replies_peak:
            user.replies_peak = user.replies
        user.replies -= 1


__all__ = ["ReplyKey", "ReplyTimes", "ReplyTracker", "measure_reply_times", "settled", "unanswered"]
