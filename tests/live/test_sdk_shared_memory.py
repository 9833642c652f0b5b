"""Live tests of SharedBuffer and named shared memory: a receiving process (tests/sdk_shm_peer.py) on busd
and dbus-daemon, both backends where the fd conversion differs.

What the receiver cannot do is asserted as the errors the kernel gives it (seals are enforced by the
file, not by the SDK); leaks are counted in /proc/self/fd on both sides.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

import busd_client
from busd_client import SharedBuffer, UnsealedBufferError
from busd_client.errors import InvalidArgs, SharedMemoryError, SharedMemoryNotFound
from sdk_shm_peer import PROBE_INTERFACE, PROBE_NAME, PROBE_PATH, ShmProbe1
# `backend` is a fixture, imported so that pytest finds it here.
from test_sdk_peer import WAIT, LineProcess, backend, child_env, run  # noqa: F401

pytestmark = pytest.mark.live

PEER = Path(__file__).resolve().parents[1] / "sdk_shm_peer.py"
DEFAULT_BACKEND = "dbus_fast"
REFUSED = "PermissionError EPERM"


def start(bus: Any, backend: str, *args: str) -> tuple[LineProcess, str]:
    peer = LineProcess([sys.executable, str(PEER), *args], child_env(bus, backend))
    return peer, peer.expect(r"^(ready|published) (\S+)").group(2)


@pytest.fixture
def probe(any_bus: Any, backend: str) -> Any:
    """The receiving process, serving dev.busd.ShmProbe1 on `any_bus` and `backend`."""
    peer, _ = start(any_bus, backend, "serve")
    yield peer
    peer.stop()


@pytest.fixture
def probe_on_default_backend(any_bus: Any) -> Any:
    peer, _ = start(any_bus, DEFAULT_BACKEND, "serve")
    yield peer
    peer.stop()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_receiver_cannot_resize_a_sealed_buffer_nor_write_a_read_only_one(any_bus, probe_on_default_backend):
    async def scenario():
        async with await busd_client.connect(any_bus.address) as bus:
            with SharedBuffer(b"frozen contents" * 1000) as frozen:
                attempts = await bus.call(PROBE_NAME, PROBE_PATH, PROBE_INTERFACE, "TryToChange", frozen)
                assert attempts == {"write": REFUSED, "grow": REFUSED, "shrink": REFUSED,
                                    "map-writable": REFUSED, "adopt-writable": REFUSED}
                assert frozen.tobytes() == b"frozen contents" * 1000

            with SharedBuffer(4096, writable=True) as shared:
                attempts = await bus.call(PROBE_NAME, PROBE_PATH, PROBE_INTERFACE, "TryToChange", shared)
                assert attempts == {"write": "ok", "grow": REFUSED, "shrink": REFUSED,
                                    "map-writable": "ok", "adopt-writable": "ok"}
                assert shared.view[:1] == b"x" and shared.size == 4096  # the receiver's write, seen here

    run(scenario())


def test_buffers_cross_method_arguments_return_values_and_signals(any_bus, backend, probe):
    async def scenario():
        async with await busd_client.connect(any_bus.address, backend=backend) as bus:
            remote = await bus.proxy(PROBE_NAME, PROBE_PATH, ShmProbe1)
            payload = bytes(range(256)) * 64
            with SharedBuffer(payload) as buffer:
                assert await remote.Checksum(buffer) == (len(payload), payload[:16].hex())

            made = await remote.MakeBuffer("made over there")
            assert isinstance(made, SharedBuffer) and made.mode == "frozen"
            with made:
                assert made.tobytes() == b"made over there"

            frames: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue()

            def slot_for(subscriber: str) -> Any:
                def on_frame(frame: SharedBuffer, length: int) -> None:
                    with frame:
                        frames.put_nowait((subscriber, frame.tobytes(), length))
                return on_frame

            # Two subscribers, each its own connection: the bus gives each its own fd of the same memfd.
            async with await busd_client.connect(any_bus.address, backend=backend) as other, \
                    await bus.connect_signal(PROBE_NAME, PROBE_PATH, PROBE_INTERFACE, "Frame", slot_for("first")), \
                    await other.connect_signal(PROBE_NAME, PROBE_PATH, PROBE_INTERFACE, "Frame", slot_for("second")):
                await remote.EmitFrame("a frame for every subscriber")
                received = [await asyncio.wait_for(frames.get(), WAIT) for _ in range(2)]
                assert sorted(received) == [("first", b"a frame for every subscriber", 28),
                                            ("second", b"a frame for every subscriber", 28)]

            with SharedBuffer(64, writable=True) as shared:
                await remote.WriteThrough(shared, "written by the peer")
                assert shared.view[:19] == b"written by the peer"

    run(scenario())


def test_an_unsealed_fd_is_refused_with_a_clear_error(any_bus, probe_on_default_backend):
    async def scenario():
        async with await busd_client.connect(any_bus.address) as bus:
            unsealed = os.memfd_create("unsealed", os.MFD_CLOEXEC)
            os.write(unsealed, b"could change at any time")
            read_end, write_end = os.pipe()
            try:
                # A memfd made without MFD_ALLOW_SEALING carries F_SEAL_SEAL alone; a pipe has no seals.
                for fd, why in ((unsealed, "it has F_SEAL_SEAL"), (read_end, "it has no seals")):
                    with pytest.raises(InvalidArgs, match=f"refusing to map fd \\d+: {why} but a 'frozen' "
                                                          f"SharedBuffer needs F_SEAL_SHRINK"):
                        await bus.call(PROBE_NAME, PROBE_PATH, PROBE_INTERFACE, "Checksum", fd, signature="h")
            finally:
                for fd in (unsealed, read_end, write_end):
                    os.close(fd)
            shared = SharedBuffer(16, writable=True)  # sealed against resizing, not writing
            with shared, pytest.raises(InvalidArgs, match=re.escape("has F_SEAL_SEAL|F_SEAL_SHRINK|F_SEAL_GROW but")):
                await bus.call(PROBE_NAME, PROBE_PATH, PROBE_INTERFACE, "Checksum", shared)

        descriptor = os.memfd_create("local", os.MFD_CLOEXEC)
        with pytest.raises(UnsealedBufferError):
            SharedBuffer.adopt(descriptor)
        with pytest.raises(OSError):  # adopt closed it, refusal or not
            os.fstat(descriptor)

    run(scenario())


def test_named_memory_outlives_its_publisher_and_then_attaching_fails_cleanly(any_bus):
    name = "org.example.Image"

    async def scenario():
        async with await busd_client.connect(any_bus.address) as bus:
            with pytest.raises(SharedMemoryNotFound, match=name):
                await bus.shared_memory(name)
            publisher, publisher_name = start(any_bus, DEFAULT_BACKEND, "publish", name, "pixels " * 1000)
            assert await bus.get_name_owner(name) == publisher_name
            with await bus.shared_memory(name, 7000) as image:
                assert image.mode == "frozen" and image.tobytes() == b"pixels " * 1000
                with pytest.raises(SharedMemoryError, match="is 7000 bytes, not the 10 asked for"):
                    await bus.shared_memory(name, 10)
                with pytest.raises(SharedMemoryError, match="published read-only"):
                    await bus.shared_memory(name, writable=True)

                async with bus.watch_name(name) as watcher:
                    publisher.process.stdin.write("exit\n")
                    publisher.process.stdin.flush()
                    assert await asyncio.to_thread(publisher.process.wait, WAIT) == 0
                    await watcher.wait_vanished(WAIT)
                assert image.tobytes() == b"pixels " * 1000  # still mapped: the memory, not the publisher
            with pytest.raises(SharedMemoryNotFound, match=name):
                await bus.shared_memory(name)

            async with await bus.publish_shared_memory(name, b"mine now") as published:
                with pytest.raises(SharedMemoryError, match="this connection already publishes it"):
                    await bus.publish_shared_memory(name, b"twice")
                async with await busd_client.connect(any_bus.address) as other:
                    with pytest.raises(SharedMemoryError, match="already owned \\(by another connection\\)"):
                        await other.publish_shared_memory(name, b"theirs")
                with await bus.shared_memory(name) as mine:
                    assert mine.tobytes() == published.buffer.tobytes() == b"mine now"
            assert await bus.get_name_owner(name) is None

            async with await busd_client.connect(any_bus.address) as stranger:
                async with await bus.publish_shared_memory(name, b"for friends", allow=bus.unique_name.__eq__):
                    with pytest.raises(SharedMemoryError, match=f"refused: .*refuses {stranger.unique_name}"):
                        await stranger.shared_memory(name)
                    with await bus.shared_memory(name) as friendly:
                        assert friendly.tobytes() == b"for friends"

    run(scenario())


def test_writable_named_memory_is_shared_between_processes(any_bus):
    name = "org.example.Scratch"

    async def scenario():
        publisher, _ = start(any_bus, DEFAULT_BACKEND, "publish", name, "-4096")
        try:
            async with await busd_client.connect(any_bus.address) as first, \
                    await busd_client.connect(any_bus.address) as second:
                with await first.shared_memory(name, writable=True) as writer, \
                        await second.shared_memory(name) as reader:
                    assert reader.mode == "read" and reader.view.readonly and writer.size == 4096
                    writer.view[:5] = b"hello"
                    assert reader.view[:5] == b"hello"
        finally:
            publisher.stop()

    run(scenario())


def test_the_blocking_facade_publishes_and_attaches(any_bus):
    with busd_client.connect_blocking(any_bus.address) as publisher, \
            busd_client.connect_blocking(any_bus.address) as reader:
        with publisher.publish_shared_memory("org.example.Blocking", b"no event loop needed"):
            with reader.shared_memory("org.example.Blocking") as buffer:
                assert buffer.tobytes() == b"no event loop needed"
        with pytest.raises(SharedMemoryNotFound):
            reader.shared_memory("org.example.Blocking")


def test_no_fd_leaks_after_thousands_of_buffers(any_bus, probe_on_default_backend):
    rounds = 1000

    async def scenario():
        async with await busd_client.connect(any_bus.address) as bus:
            remote = await bus.proxy(PROBE_NAME, PROBE_PATH, ShmProbe1)
            await remote.Checksum(SharedBuffer(b"warm up"))  # first use opens what stays open
            with await remote.MakeBuffer("warm up"):
                pass
            ours, theirs = open_fds(), await remote.OpenFds()
            for number in range(rounds):
                with SharedBuffer(number.to_bytes(4, "little") * 256) as buffer:
                    await remote.Checksum(buffer)
                with await remote.MakeBuffer(f"buffer {number}") as made:
                    assert made.tobytes() == f"buffer {number}".encode()
            for _ in range(rounds):
                SharedBuffer(4096, writable=True).close()
            # A leak would show as thousands more; either side may have one fewer than at the start, when a
            # duplicate sent with the warm-up reply was still waiting to be closed as the count was taken.
            assert open_fds() <= ours and await remote.OpenFds() <= theirs

    run(scenario(), timeout=300)
