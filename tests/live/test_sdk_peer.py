"""The peer process the SDK tests talk to (run as `python3 tests/live/test_sdk_peer.py`), and the helpers they share.

The peer is a separate process exporting dev.busd.SdkTest1 with busd_client,
on the backend named by $BUSD_CLIENT_BACKEND.  It prints "ready <unique
name>" once it owns its name.  This module holds no tests itself.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import busd_client
from busd_client import (DBusError, Int64, Interface, MessageInfo, UInt32, UInt64, UnixFD, dbus_property,
                         method, signal)
from busd_client.errors import InvalidArgs

PEER_NAME = "dev.busd.SdkTest"
PEER_PATH = "/dev/busd/SdkTest"
PEER_INTERFACE = "dev.busd.SdkTest1"
CALLBACK_PATH = "/dev/busd/SdkCallback"
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "clients" / "examples"
BACKENDS = ["dbus_next", "dbus_fast"]
WAIT = 20.0  # seconds any single expected event may take before a test fails


# -- types shared by the peer and the tests ------------------------------------------

class Point(BaseModel):
    x: int
    y: float


class Record(BaseModel):
    id: UInt64
    name: str
    tags: list[str]
    where: Point
    path: list[Point]
    extra: dict[str, Any]


class PeerError(DBusError, name="dev.busd.SdkTest.Error.Refused"):
    """What the peer raises from Refuse()."""


class SdkTest1(Interface, name=PEER_INTERFACE):
    """The peer's interface: one member per feature under test."""

    def __init__(self) -> None:
        self._mode = "idle"
        self._counter = 0
        self._fds_to_close: list[int] = []

    @method()
    def Echo(self, record: Record) -> Record:
        return record

    @method()
    def Sum(self, values: list[int]) -> Int64:
        return sum(values)

    @method()
    def Split(self, text: str) -> tuple[str, UInt32]:
        return text.upper(), len(text)

    @method()
    def Refuse(self, why: str) -> None:
        raise PeerError(why)

    @method()
    def Fail(self, name: str, message: str) -> None:
        raise DBusError(message, name=name)

    @method()
    def Crash(self) -> None:
        raise ValueError("peer bug")

    @method()
    async def Hang(self) -> None:
        await asyncio.Event().wait()

    @method()
    def WhoAmI(self, info: MessageInfo) -> str:
        return info.sender or ""

    @method()
    def ReadFd(self, fd: UnixFD) -> bytes:
        with os.fdopen(fd, "rb") as stream:
            return stream.read()

    @method()
    def MakeFd(self, data: bytes) -> UnixFD:
        read_end, write_end = os.pipe()
        os.write(write_end, data)
        os.close(write_end)
        self._fds_to_close.append(read_end)  # the SDK sends a duplicate
        return read_end

    @method()
    def EmitTicks(self, count: UInt32, tag: str) -> None:
        for number in range(count):
            self.Ticked(number, tag)

    @method()
    def Bump(self) -> UInt32:
        self.Counter = self._counter + 1
        return self._counter

    @method()
    async def CallBack(self, destination: str, value: int, info: MessageInfo) -> str:
        """Call Twice on the caller's exported object; report the result or the error."""
        bus = _peer_bus
        try:
            result = await bus.call(destination, CALLBACK_PATH, "dev.busd.SdkCallback1", "Twice", value,
                                    signature="i", timeout=WAIT)
        except DBusError as error:
            return f"error {error.name} {error.message}"
        return f"result {result}"

    @signal()
    def Ticked(self, number: UInt32, tag: str) -> None: ...

    @dbus_property()
    def Mode(self) -> str:
        return self._mode

    @Mode.setter
    def Mode(self, value: str) -> None:
        if value not in ("idle", "busy"):
            raise InvalidArgs(f"Mode is idle or busy, not {value!r}")
        self._mode = value

    @dbus_property(access="read")
    def Counter(self) -> UInt32:
        return self._counter

    @Counter.setter
    def Counter(self, value: int) -> None:
        self._counter = value


_peer_bus: busd_client.Bus


async def _serve(name: str) -> None:
    global _peer_bus
    async with await busd_client.connect() as bus:
        _peer_bus = bus
        bus.export(PEER_PATH, SdkTest1())
        await bus.request_name(name, do_not_queue=True)
        print(f"ready {bus.unique_name} {bus.backend}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes stdin


# -- helpers for the tests ---------------------------------------------------------------

class LineProcess:
    """A child process whose stdout lines the test waits for, each wait bounded by WAIT seconds."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.process = subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Wait for the next line matching `pattern` (earlier lines are kept in `seen`)."""
        regex = re.compile(pattern)
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s; got {self.seen}") from None
            if line is None:
                raise AssertionError(f"process exited ({self.process.wait()}) before printing {pattern!r}; "
                                     f"got {self.seen}")
            self.seen.append(line)
            matched = regex.search(line)
            if matched:
                return matched

    def stop(self) -> int:
        if self.process.poll() is None:
            if self.process.stdin:
                self.process.stdin.close()
            self.process.terminate()
        try:
            return self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def child_env(bus: Any, backend: str) -> dict[str, str]:
    env = bus.client_env()
    env["BUSD_CLIENT_BACKEND"] = backend
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_peer(bus: Any, backend: str, name: str = PEER_NAME) -> tuple[LineProcess, str]:
    """Start the peer on `bus`; returns the process and its unique name once it owns `name`."""
    peer = LineProcess([sys.executable, __file__, name], child_env(bus, backend))
    unique_name = peer.expect(r"^ready (\S+) (\S+)").group(1)
    return peer, unique_name


def run(coroutine: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
    """Run one async test scenario, bounded so that a lost event fails instead of hanging."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Run a test once on dbus-next and once on dbus-fast."""
    return request.param


@pytest.fixture
def peer(any_bus: Any, backend: str) -> Any:
    """The peer process on `any_bus` and `backend`: yields its unique name."""
    process, unique_name = start_peer(any_bus, backend)
    yield unique_name
    process.stop()


if __name__ == "__main__":
    busd_client.run_coroutine(_serve(sys.argv[1] if len(sys.argv) > 1 else PEER_NAME))
