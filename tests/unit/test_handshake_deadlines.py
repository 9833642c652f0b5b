"""HandshakeDeadlines: one timer drops every connection that has not said Hello within auth_timeout.

The connections here are stand-ins that record the drop; the loop is a real one, and each test waits
for the drops it expects (a future each), not for time to pass.
"""

from __future__ import annotations

import asyncio

import pytest

from busd.transport.connection import HandshakeDeadlines


class StandIn:
    """What HandshakeDeadlines uses of a Connection: `deadlines`, and drop() (recorded, with when)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, label: str):
        self.loop = loop
        self.label = label
        self.deadlines: HandshakeDeadlines | None = None
        self.dropped: asyncio.Future = loop.create_future()

    def drop(self, reason: str) -> None:
        self.dropped.set_result((self.loop.time(), reason))


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest):
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def run(loop: asyncio.AbstractEventLoop, *futures: asyncio.Future) -> list:
    return loop.run_until_complete(asyncio.wait_for(asyncio.gather(*futures), 10))


def test_each_connection_is_dropped_at_its_deadline_in_order(loop: asyncio.AbstractEventLoop) -> None:
    deadlines = HandshakeDeadlines(loop)
    first, second = StandIn(loop, "first"), StandIn(loop, "second")
    started = loop.time()
    deadlines.start(first, 30)
    deadlines.start(second, 60)
    assert first.deadlines is deadlines and len(deadlines) == 2
    (first_at, first_reason), (second_at, second_reason) = run(loop, first.dropped, second.dropped)
    assert first_reason == "no Hello within auth_timeout=30ms"
    assert second_reason == "no Hello within auth_timeout=60ms"
    assert started + 0.030 - HandshakeDeadlines.SLACK <= first_at <= second_at
    assert second_at >= started + 0.060 - HandshakeDeadlines.SLACK
    assert len(deadlines) == 0


def test_a_connection_that_said_hello_is_not_dropped(loop: asyncio.AbstractEventLoop) -> None:
    deadlines = HandshakeDeadlines(loop)
    hello, silent = StandIn(loop, "hello"), StandIn(loop, "silent")
    deadlines.start(hello, 20)
    deadlines.start(silent, 40)
    deadlines.stop(hello)
    run(loop, silent.dropped)  # expired after the stopped one's deadline
    assert not hello.dropped.done()
    assert len(deadlines) == 0


def test_a_shorter_timeout_after_a_reload_is_kept_out_of_order(loop: asyncio.AbstractEventLoop) -> None:
    # The old timeout's connection comes first in the queue but falls due last: the timer follows the earliest.
    deadlines = HandshakeDeadlines(loop)
    old, new = StandIn(loop, "old"), StandIn(loop, "new")
    deadlines.start(old, 5000)
    deadlines.start(new, 20)
    (new_at, reason), = run(loop, new.dropped)
    assert reason == "no Hello within auth_timeout=20ms"
    assert not old.dropped.done() and len(deadlines) == 1
    deadlines.close()
    assert len(deadlines) == 0


def test_after_the_queue_empties_deadlines_are_in_order_again(loop: asyncio.AbstractEventLoop) -> None:
    deadlines = HandshakeDeadlines(loop)
    a, b = StandIn(loop, "a"), StandIn(loop, "b")
    deadlines.start(a, 40)
    deadlines.start(b, 10)  # out of order
    run(loop, a.dropped, b.dropped)
    c, d = StandIn(loop, "c"), StandIn(loop, "d")
    deadlines.start(c, 10)
    deadlines.start(d, 5000)
    run(loop, c.dropped)
    assert not d.dropped.done() and len(deadlines) == 1
    deadlines.close()
