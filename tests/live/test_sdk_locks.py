"""Live tests of busd_client's locks and semaphores on bus names: peer processes on busd and dbus-daemon.

Holders and waiters are separate processes (tests/sdk_shm_peer.py), so a crash is a real SIGKILL and
the bus, not the SDK, hands the name on.  Queues are read with ListQueuedOwners.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

import busd_client
from busd_client.errors import LockTimeout, NameHasNoOwner
from test_sdk_peer import WAIT, LineProcess, child_env, run

pytestmark = pytest.mark.live

PEER = Path(__file__).resolve().parents[1] / "sdk_shm_peer.py"
LOCK = "org.example.Printer.Lock"
BACKEND = "dbus_fast"


class Peer:
    """One peer process (`lock` or `semaphore`), waited on without blocking the test's event loop."""

    def __init__(self, bus: Any, *args: str) -> None:
        self.process = LineProcess([sys.executable, str(PEER), *args], child_env(bus, BACKEND))
        self.unique_name = self.process.expect(r"^waiting (\S+)").group(1)

    async def expect(self, pattern: str) -> str:
        return (await asyncio.to_thread(self.process.expect, pattern)).group(0)

    def tell(self, line: str) -> None:
        assert self.process.process.stdin is not None
        self.process.process.stdin.write(line + "\n")
        self.process.process.stdin.flush()

    def kill(self) -> None:
        self.process.process.send_signal(signal.SIGKILL)
        self.process.process.wait(WAIT)

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture
def peers(any_bus: Any) -> Any:
    """Starts peers on `any_bus` and stops those still running at the end."""
    started: list[Peer] = []

    def start(*args: str) -> Peer:
        peer = Peer(any_bus, *args)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


async def queued_owners(bus: busd_client.Bus, name: str) -> list[str]:
    """The owner of `name` followed by its queue (empty when nobody owns it)."""
    try:
        return await bus.call_driver("ListQueuedOwners", name, signature="s")
    except NameHasNoOwner:
        return []


async def wait_for_queue(bus: busd_client.Bus, name: str, condition: Any) -> list[str]:
    """Wait until ListQueuedOwners(name) satisfies `condition` (the bus sends no signal for queue changes)."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        queue = await queued_owners(bus, name)
        if condition(queue):
            return queue
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the queue of {name} never matched; it is {queue}")
        await asyncio.sleep(0.02)


def test_waiters_are_served_in_the_order_they_queued(any_bus, peers):
    async def scenario():
        async with await busd_client.connect(any_bus.address) as bus:
            lock = bus.lock(LOCK)
            async with lock:
                assert lock.held
                first = peers("lock", LOCK)
                await wait_for_queue(bus, LOCK, lambda queue: first.unique_name in queue)
                second = peers("lock", LOCK)
                queue = await wait_for_queue(bus, LOCK, lambda queue: second.unique_name in queue)
                assert queue == [bus.unique_name, first.unique_name, second.unique_name]
            assert not lock.held
            await first.expect(r"^locked")
            assert await queued_owners(bus, LOCK) == [first.unique_name, second.unique_name]
            first.tell("release")
            await first.expect(r"^released")
            await second.expect(r"^locked")
            second.tell("release")
            await second.expect(r"^released")
            await wait_for_queue(bus, LOCK, lambda queue: queue == [])

    run(scenario())


def test_a_crashed_holder_releases_the_lock_to_the_next_waiter(any_bus, peers):
    async def scenario():
        holder = peers("lock", LOCK)
        await holder.expect(r"^locked")
        async with await busd_client.connect(any_bus.address) as bus:
            lock = bus.lock(LOCK)
            waiting = asyncio.ensure_future(lock.acquire())
            await wait_for_queue(bus, LOCK, lambda queue: queue == [holder.unique_name, bus.unique_name])
            assert not waiting.done()
            holder.kill()
            await asyncio.wait_for(waiting, WAIT)
            assert lock.held and await queued_owners(bus, LOCK) == [bus.unique_name]
            await lock.release()
            assert await queued_owners(bus, LOCK) == []

    run(scenario())


def test_a_cancelled_or_timed_out_waiter_leaves_the_queue(any_bus, peers):
    async def scenario():
        holder = peers("lock", LOCK)
        await holder.expect(r"^locked")
        async with await busd_client.connect(any_bus.address) as bus:
            waiting = asyncio.ensure_future(bus.lock(LOCK).acquire())
            await wait_for_queue(bus, LOCK, lambda queue: bus.unique_name in queue)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            # Asked on the same connection, so the bus has handled the ReleaseName sent on cancellation.
            assert await queued_owners(bus, LOCK) == [holder.unique_name]

            with pytest.raises(LockTimeout, match=LOCK):
                await bus.lock(LOCK, timeout=0.2).acquire()
            assert await queued_owners(bus, LOCK) == [holder.unique_name]

            # Having left, this connection queues again normally and gets the lock when the holder is done.
            again = bus.lock(LOCK)
            taking = asyncio.ensure_future(again.acquire())
            await wait_for_queue(bus, LOCK, lambda queue: bus.unique_name in queue)
            holder.tell("release")
            await asyncio.wait_for(taking, WAIT)
            await again.release()

    run(scenario())


def test_tasks_of_one_connection_take_turns(any_bus):
    """Name ownership is per connection, so tasks sharing one queue locally in front of the bus."""
    async def scenario():
        async with await busd_client.connect(any_bus.address) as bus:
            inside: list[int] = []
            most = 0

            async def worker(number: int) -> None:
                nonlocal most
                async with bus.lock(LOCK):
                    inside.append(number)
                    most = max(most, len(inside))
                    await bus.ping()  # a round trip while holding: others get the chance to run
                    inside.remove(number)

            await asyncio.gather(*(worker(number) for number in range(5)))
            assert most == 1 and await queued_owners(bus, LOCK) == []

    run(scenario())


def test_a_semaphore_admits_exactly_n_holders(any_bus, peers):
    name, permits = "org.example.Scanners", 2
    permit_names = [f"{name}.p{index}" for index in range(permits)]

    async def scenario():
        async with await busd_client.connect(any_bus.address) as bus:
            async def owners_and_queues() -> list[list[str]]:
                return [await queued_owners(bus, permit) for permit in permit_names]

            contenders = [peers("semaphore", name, str(permits)) for _ in range(4)]
            everyone = {peer.unique_name for peer in contenders}
            deadline = asyncio.get_running_loop().time() + WAIT
            # Settled: both permits owned, and the other two contenders queued behind them.
            while True:
                queues = await owners_and_queues()
                if all(queues) and {member for queue in queues for member in queue} == everyone:
                    break
                assert asyncio.get_running_loop().time() < deadline, queues
                await asyncio.sleep(0.02)
            holders = {queue[0] for queue in queues}
            assert len(holders) == permits
            admitted = [peer for peer in contenders if peer.unique_name in holders]
            for peer in admitted:
                await peer.expect(r"^acquired ")
            waiting = [peer for peer in contenders if peer.unique_name not in holders]
            assert all(peer.process.lines.empty() for peer in waiting)  # nobody else printed "acquired"

            # Each release admits exactly one waiter, on the permit just given back.
            admitted[0].tell("release")
            await admitted[0].expect(r"^released")
            queues = await wait_for_queue_change(bus, permit_names, holders)
            holders = {queue[0] for queue in queues}
            assert len(holders) == permits and admitted[0].unique_name not in holders
            newcomer = next(peer for peer in waiting if peer.unique_name in holders)
            await newcomer.expect(r"^acquired ")
            (last,) = [peer for peer in waiting if peer is not newcomer]
            assert last.process.lines.empty()
            admitted[1].tell("release")
            await admitted[1].expect(r"^released")
            await last.expect(r"^acquired ")
            for peer in (newcomer, last):
                peer.tell("release")
                await peer.expect(r"^released")
            await wait_for_queue_change(bus, permit_names, set())  # settles at: nobody owns a permit


    run(scenario())


async def wait_for_queue_change(bus: busd_client.Bus, permit_names: list[str], holders: set[str]) -> list[list[str]]:
    """Wait until the holders of the permits differ from `holders`: every permit owned again, or (for an
    empty `holders`) none."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        queues = [await queued_owners(bus, permit) for permit in permit_names]
        settled = all(queues) and {queue[0] for queue in queues} != holders if holders else not any(queues)
        if settled:
            return queues
        assert asyncio.get_running_loop().time() < deadline, queues
        await asyncio.sleep(0.02)


def test_the_blocking_facade_locks_and_times_out(any_bus, peers):
    with busd_client.connect_blocking(any_bus.address) as bus:
        with bus.lock(LOCK):
            waiter = peers("lock", LOCK)
            run(wait_for_queue_on(any_bus.address, LOCK, waiter.unique_name))
        waiter.process.expect(r"^locked")
        with pytest.raises(LockTimeout):
            bus.lock(LOCK, timeout=0.2).acquire()
        assert bus.run(queued_owners(bus.bus, LOCK)) == [waiter.unique_name]
        waiter.tell("release")
        waiter.process.expect(r"^released")
        with bus.semaphore("org.example.Scanners", 2) as semaphore:
            assert semaphore.lock.permit == "org.example.Scanners.p0"


async def wait_for_queue_on(address: str, name: str, unique_name: str) -> None:
    async with await busd_client.connect(address) as bus:
        await wait_for_queue(bus, name, lambda queue: unique_name in queue)


def test_a_permit_freed_by_a_crash_goes_to_a_waiter_queued_elsewhere(any_bus, peers):
    """The waiter queues on one permit; the holder of the other one is killed, and nobody queues there:
    the waiter takes the freed permit and leaves the queue it was in."""
    name = "org.example.Scanners"
    permit_names = [f"{name}.p0", f"{name}.p1"]

    async def scenario():
        holders = [peers("semaphore", name, "2") for _ in range(2)]
        for holder in holders:
            await holder.expect(r"^acquired ")
        async with await busd_client.connect(any_bus.address) as bus:
            semaphore = bus.semaphore(name, 2)
            waiting = asyncio.ensure_future(semaphore.acquire())
            deadline = asyncio.get_running_loop().time() + WAIT
            while True:
                queues = {permit: await queued_owners(bus, permit) for permit in permit_names}
                queued_on = [permit for permit, queue in queues.items() if bus.unique_name in queue]
                if queued_on:
                    break
                assert asyncio.get_running_loop().time() < deadline, queues
                await asyncio.sleep(0.02)
            (other,) = [permit for permit in permit_names if permit not in queued_on]
            (other_holder,) = [peer for peer in holders if queues[other] == [peer.unique_name]]
            other_holder.kill()
            assert await asyncio.wait_for(waiting, WAIT) == other
            assert await queued_owners(bus, other) == [bus.unique_name]
            assert bus.unique_name not in await queued_owners(bus, queued_on[0])
            await semaphore.release()

    run(scenario())
