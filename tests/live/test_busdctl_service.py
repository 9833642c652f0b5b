"""A real D-Bus service for the busdctl tests, and helpers to run busdctl and busctl against a bus.

Run as a script (`python3 test_busdctl_service.py ADDRESS NAME`) it serves org.example.Demo on
three objects and prints `READY <unique name>` once it owns NAME. It holds no tests itself.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from buses import busd_available, helper_env, start_bus

SERVICE_NAME = "org.example.Demo"
SERVICE_PATH = "/org/example/Demo"
SERVICE_INTERFACE = "org.example.Demo"
SERVICE_PATHS = ["/", "/org", "/org/example", "/org/example/Demo", "/org/example/Demo/Child",
                 "/org/example/Other"]
BUS_KINDS = ["busd", "dbus-daemon"]
SAFETY_TIMEOUT = 30.0  # seconds; only a guard against a hung test, never an assertion


# ---- the service (runs in its own process) ----

def _serve(address: str, name: str) -> None:
    from dbus_next import DBusError, Message, PropertyAccess, Variant
    from dbus_next.aio import MessageBus
    from dbus_next.service import ServiceInterface, dbus_property, method, signal as dbus_signal

    class Demo(ServiceInterface):
        def __init__(self, bus: MessageBus) -> None:
            super().__init__(SERVICE_INTERFACE)
            self._bus = bus
            self._greeting = "hello"

        @method()
        def Echo(self, text: "s") -> "s":
            return text

        @method()
        def EchoV(self, value: "v") -> "v":
            return value

        @method()
        def Add(self, a: "i", b: "i") -> "i":
            return a + b

        @method()
        def Describe(self, items: "a{sv}") -> "as":
            return sorted(f"{key}={value.value}" for key, value in items.items())

        @method()
        def Swap(self, pair: "(su)") -> "(us)":
            return [pair[1], pair[0]]

        @method()
        def Many(self) -> "sia{si}ad":
            return ["x", 1, {"a": 1, "b": 2}, [0.5, -2.25]]

        @method()
        def Nothing(self):
            return None

        @method()
        def Fail(self):
            raise DBusError("org.example.Demo.Error.Broken", "broken on purpose")

        @method()
        async def Hang(self):
            await asyncio.Event().wait()

        @method()
        def EmitChanged(self, what: "s"):
            self.Changed(what)

        @method()
        async def AddRules(self, count: "u"):
            for index in range(count):
                rule = f"type='signal',interface='org.example.Rule',member='R{index}'"
                await self._bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                             interface="org.freedesktop.DBus", member="AddMatch",
                                             signature="s", body=[rule]))

        @dbus_property()
        def Greeting(self) -> "s":
            return self._greeting

        @Greeting.setter
        def Greeting(self, value: "s"):
            self._greeting = value

        @dbus_property(access=PropertyAccess.READ)
        def Count(self) -> "u":
            return 42

        @dbus_property(access=PropertyAccess.READ)
        def Tags(self) -> "a{sv}":
            return {"colour": Variant("s", "blue"), "size": Variant("u", 3)}

        @dbus_signal()
        def Changed(self, what: "s") -> "s":
            return what

    class Child(ServiceInterface):
        def __init__(self) -> None:
            super().__init__("org.example.Child")

        @method()
        def Ping(self) -> "b":
            return True

    async def main() -> None:
        bus = await MessageBus(bus_address=address).connect()
        bus.export(SERVICE_PATH, Demo(bus))
        bus.export(SERVICE_PATH + "/Child", Child())
        bus.export("/org/example/Other", Child())
        await bus.request_name(name)
        print(f"READY {bus.unique_name}", flush=True)
        await bus.wait_for_disconnect()

    asyncio.run(main())


# ---- helpers for the tests ----

class LineReader:
    """Lines from a child's pipe, read without blocking past a safety timeout."""

    def __init__(self, stream) -> None:
        self.fd = stream.fileno()
        self.buffer = b""
        self.lines: list[str] = []

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready, _, _ = select.select([self.fd], [], [], remaining)
        if not ready:
            return False
        chunk = os.read(self.fd, 65536)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def expect(self, predicate, what: str, timeout: float = SAFETY_TIMEOUT) -> str:
        """Read lines until one satisfies `predicate`; return it (all lines read stay in .lines)."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n", 1)
                line = raw.decode("utf-8", "replace")
                self.lines.append(line)
                if predicate(line):
                    return line
            if not self._fill(deadline):
                raise AssertionError(f"never saw {what}; got {self.lines[-20:]!r}")

    def read_bytes_until(self, marker: bytes, what: str) -> bytes:
        deadline = time.monotonic() + SAFETY_TIMEOUT
        while marker not in self.buffer:
            if not self._fill(deadline):
                raise AssertionError(f"never saw {what} in {len(self.buffer)} bytes")
        return self.buffer


@dataclass
class DemoService:
    process: subprocess.Popen
    unique_name: str
    name: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_demo(address: str, name: str = SERVICE_NAME) -> DemoService:
    """Start the demo service on `address` and wait until it owns `name`."""
    process = subprocess.Popen([sys.executable, __file__, address, name], stdout=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, env=helper_env())
    line = LineReader(process.stdout).expect(lambda l: l.startswith("READY "), f"{name} to appear")
    return DemoService(process, line.split()[1], name)


@dataclass
class Run:
    """A finished command: exit status, output, and its process id."""

    returncode: int
    stdout: str
    stderr: str
    pid: int


def run_all(commands: list[list[str]], env: dict[str, str] | None = None) -> list[Run]:
    """Run commands side by side (they are independent) and return each one's result, in order."""
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, env=env) for command in commands]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=SAFETY_TIMEOUT)
        results.append(Run(process.returncode, stdout.decode(), stderr.decode(), process.pid))
    return results


def run(command: list[str], env: dict[str, str] | None = None) -> Run:
    return run_all([command], env)[0]


def busdctl_command(address: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "busdctl", f"--address={address}", *args]


def busctl_command(address: str, *args: str) -> list[str]:
    return ["busctl", f"--address={address}", "--no-pager", *args]


def busdctl(address: str, *args: str) -> Run:
    return run(busdctl_command(address, *args))


def busctl(address: str, *args: str) -> Run:
    return run(busctl_command(address, *args))


def both(address: str, *args: str) -> tuple[Run, Run]:
    """The same command run by busdctl and by systemd's busctl, side by side."""
    ours, theirs = run_all([busdctl_command(address, *args), busctl_command(address, *args)])
    return ours, theirs


def start_watcher(command: list[str], ready: str) -> tuple[subprocess.Popen, LineReader, LineReader]:
    """Start a long-running command (monitor, capture, wait) and wait for its `ready` line on stderr."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    stdout, stderr = LineReader(process.stdout), LineReader(process.stderr)
    stderr.expect(lambda line: ready in line, repr(ready))
    return process, stdout, stderr


def interrupt(process: subprocess.Popen) -> int:
    """Stop a watcher with SIGINT, as Ctrl-C would, and return its exit status."""
    process.send_signal(signal.SIGINT)
    return process.wait(timeout=SAFETY_TIMEOUT)


@pytest.fixture
def demo(any_bus):
    """A fresh bus (busd or dbus-daemon) with the demo service on it, for tests that change things."""
    service = start_demo(any_bus.address)
    yield any_bus, service
    service.stop()


@pytest.fixture(scope="module", params=BUS_KINDS)
def shared_demo(request):
    """One bus of each kind with the demo service, shared by the tests of a module that only look."""
    if request.param == "busd" and not busd_available():
        pytest.skip("the busd daemon is not built yet")
    bus = start_bus(request.param)
    service = start_demo(bus.address)
    yield bus, service
    service.stop()
    bus.stop()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
