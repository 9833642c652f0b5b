"""Replies: the calls waiting for their answer, their shared deadline heap, and error replies as DBusError.

Theory: a call's waiter is registered before its message is sent and its
deadline sits in one shared heap, so a reply can never arrive unclaimed and a
call costs a heap push rather than a timer.  Entries of answered calls stay in
the heap and are dropped lazily when their deadline comes up (or when the heap
grows well past the calls still waiting).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable, Sequence
from typing import Any

from .errors import DBusError, NoReply

log = logging.getLogger("busd_client")

ReplyCallback = Callable[[Any, BaseException | None], None]
"""Called with (reply message, None) or (None, error)."""

DriverCallback = Callable[[list[Any] | None, BaseException | None], None]
"""Called with (reply body, None) or (None, error)."""


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


class PendingCalls:
    """The calls of one connection that wait for a reply: who waits, and until when."""

    def __init__(self, loop: asyncio.AbstractEventLoop, error_type: Any) -> None:
        self.loop = loop
        self.error_type = error_type
        """The backend's ERROR message type: a future waiting for such a reply gets a DBusError."""
        # serial -> (future or callback, deadline, the call message, timeout)
        self._pending: dict[int, tuple[Any, float, Any, float]] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_timer_when = 0.0
        self._future_type = type(loop.create_future())

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, serial: int, waiter: asyncio.Future[Any] | ReplyCallback, deadline: float,
            message: Any, timeout: float) -> None:
        """Wait for the reply to call `serial` (before it is sent); `arm` its deadline once it is."""
        self._pending[serial] = (waiter, deadline, message, timeout)

    def forget(self, serial: int) -> None:
        """Stop waiting for the reply to call `serial` (it was not sent, or its caller gave up)."""
        self._pending.pop(serial, None)

    def reply_arrived(self, reply: Any) -> bool:
        """Hand a reply to its waiter; False if no call waits for it."""
        entry = self._pending.pop(reply.reply_serial, None)
        if entry is None:
            return False
        self.resolve(entry[0], reply, None)
        return True

    def fail_all(self, error: DBusError) -> None:
        """Answer every waiting call with `error` (the connection ended)."""
        pending, self._pending = self._pending, {}
        self._deadlines.clear()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        for waiter, *_ in pending.values():
            self.resolve(waiter, None, error)

    def resolve(self, waiter: asyncio.Future[Any] | ReplyCallback, reply: Any,
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

    # Timeouts share one timer: a heap of (deadline, serial), entries of answered calls dropped
    # lazily, so a call costs a heap push rather than a timer of its own.

    def arm(self, deadline: float, serial: int) -> None:
        """Fail call `serial` with NoReply at `deadline` unless its reply comes first."""
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
                self.resolve(waiter, None, NoReply(
                    f"no reply to {message.interface}.{message.member} from {message.destination} "
                    f"within {delay:g} s"))
        if deadlines:
            self._deadline_timer_when = deadlines[0][0]
            self._deadline_timer = self.loop.call_at(self._deadline_timer_when, self._expire_calls)
