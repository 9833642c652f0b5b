"""Small clients for live bus tests: a raw-socket client, CLI runners, dbus-next and output watchers.

`RawClient` speaks D-Bus over a real socket with busd's own SASL client and
message builder, so a test can send exactly the bytes it wants (forged SENDER
fields, malformed headers, fds with SCM_RIGHTS) and see exactly what the bus
sends back, in order. Every wait is bounded by a timeout and ends on an event:
a message, a line of output, or the socket closing.
"""

from __future__ import annotations

import array
import asyncio
import os
import queue
import re
import select
import socket
import subprocess
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Iterator, TypeVar

import pytest

from buses import RunningBus, busd_available, start_bus
from busd.transport.keyring import KeyringDirectory
from busd.wire.address import parse_addresses
from busd.wire.message import (
    ERROR, FIXED_HEADER_SIZE, METHOD_CALL, METHOD_RETURN, SIGNAL, TYPE_NAMES, Header, build_message,
    frame_size, parse_header, read_body,
)
from busd.wire.sasl_client import ClientAuthenticator

DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
ERROR_PREFIX = "org.freedesktop.DBus.Error."
TIMEOUT = 5.0  # seconds any single wait may take before the test fails
_MAX_FDS = 253
_READ_SIZE = 1 << 20

T = TypeVar("T")


class BusClosed(Exception):
    """The bus closed the connection while the test was waiting for something else."""


class WaitTimeout(AssertionError):
    """An awaited event did not happen in time (an assertion failure, so pytest reports it as one)."""


def wait_exit(pid: int, timeout: float = TIMEOUT) -> None:
    """Wait until process `pid` (perhaps not our child), by its pidfd has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            raise WaitTimeout(f"process {pid} is still running")
    finally:
        os.close(pidfd)


class DBusErrorReply(Exception):
    """A call was answered with an error; `name` is the D-Bus error name."""

    def __init__(self, name: str, text: str):
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


@dataclass
class Message:
    """One message received from the bus, parsed."""

    header: Header
    body: list[Any]
    raw: bytes
    fds: list[int] = field(default_factory=list)

    type = property(lambda self: self.header.type)
    serial = property(lambda self: self.header.serial)
    flags = property(lambda self: self.header.flags)
    sender = property(lambda self: self.header.sender)
    destination = property(lambda self: self.header.destination)
    path = property(lambda self: self.header.path)
    interface = property(lambda self: self.header.interface)
    member = property(lambda self: self.header.member)
    error_name = property(lambda self: self.header.error_name)
    reply_serial = property(lambda self: self.header.reply_serial)
    signature = property(lambda self: self.header.signature)

    @property
    def kind(self) -> str:
        return TYPE_NAMES.get(self.type, str(self.type))

    def is_signal(self, member: str | None = None, interface: str | None = None) -> bool:
        return (self.type == SIGNAL and (member is None or self.member == member)
                and (interface is None or self.interface == interface))

    def brief(self) -> tuple:
        """What a test compares: kind, name (member or error) and body."""
        name = self.error_name if self.type == ERROR else self.member
        return (self.kind, name, *self.body)

    def value(self) -> Any:
        """The body of a method return: its single value, or raise DBusErrorReply for an error."""
        if self.type == ERROR:
            raise DBusErrorReply(self.error_name, self.body[0] if self.body else "")
        assert self.type == METHOD_RETURN, f"not a reply: {self.kind} {self.member}"
        if len(self.body) == 1:
            return self.body[0]
        return tuple(self.body) if self.body else None

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _open(params: dict[str, str], transport: str) -> socket.socket:
    if transport == "tcp":
        return socket.create_connection((params.get("host", "localhost"), int(params["port"])), TIMEOUT)
    if transport != "unix" or not ("path" in params or "abstract" in params):
        raise OSError("transport not supported by the test client")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(params["path"] if "path" in params else "\0" + params["abstract"])
    except OSError:
        sock.close()
        raise
    return sock


def _connect(address: str) -> socket.socket:
    """A connected socket to the first address of `address` that we can reach."""
    problems = []
    for entry in parse_addresses(address):
        try:
            return _open(entry.params, entry.transport)
        except OSError as exc:
            problems.append(f"{entry}: {exc}")
    raise ConnectionError("could not connect to " + "; ".join(problems))


class RawClient:
    """A blocking D-Bus client on a real socket, for tests that need full control of the bytes."""

    def __init__(self, address: str, *, negotiate_unix_fd: bool = True, hello: bool = True,
                 authenticate: bool = True, mechanisms: tuple[str, ...] = ("EXTERNAL",)):
        self.address = address
        self.sock = _connect(address)
        self.unix = self.sock.family == socket.AF_UNIX
        self.unique_name: str | None = None
        self.guid: str | None = None
        self.unix_fd = False
        self.closed = False
        self._serial = 0
        self._rbuf = bytearray()
        self._fds: deque[int] = deque()
        self.backlog: list[Message] = []
        try:
            if authenticate:
                self.authenticate(negotiate_unix_fd, mechanisms)
                if hello:
                    self.hello()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ setup

    def authenticate(self, negotiate_unix_fd: bool = True, mechanisms: tuple[str, ...] = ("EXTERNAL",)) -> None:
        auth = ClientAuthenticator(uid=os.getuid(), mechanisms=mechanisms,
                                   negotiate_unix_fd=negotiate_unix_fd and self.unix,
                                   keyring=KeyringDirectory(uid=os.getuid()))
        self.sock.sendall(auth.initial_bytes())
        while not auth.done:
            data = self._recv_some(time.monotonic() + TIMEOUT)
            reply = auth.receive_data(data)
            if reply:
                self.sock.sendall(reply)
        self.guid = auth.guid
        self.unix_fd = auth.unix_fd
        self._rbuf += auth.leftover

    def hello(self) -> str:
        """Register; the NameAcquired for the unique name that follows is consumed too."""
        self.unique_name = self.call_driver("Hello").value()
        self.wait_signal("NameAcquired", body=[self.unique_name])
        return self.unique_name

    # ------------------------------------------------------------ sending

    def next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def send_bytes(self, data: bytes, fds: Iterable[int] = ()) -> None:
        fds = list(fds)
        if fds:
            sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            data = data[sent:]
        if data:
            self.sock.sendall(data)

    def send(self, mtype: int, *, fds: Iterable[int] = (), serial: int | None = None, **fields: Any) -> int:
        """Build and send one message; returns its serial. `fields` are build_message's keywords."""
        fds = list(fds)
        serial = self.next_serial() if serial is None else serial
        self.send_bytes(build_message(mtype, serial, unix_fds=len(fds), **fields), fds)
        return serial

    def call(self, destination: str | None, path: str, interface: str | None, member: str,
             signature: str = "", body: list | tuple = (), *, flags: int = 0,
             fds: Iterable[int] = ()) -> int:
        """Send a method call; returns its serial (wait for the answer with reply_to())."""
        return self.send(METHOD_CALL, destination=destination, path=path, interface=interface,
                         member=member, signature=signature, body=body, flags=flags, fds=fds)

    def call_wait(self, destination: str | None, path: str, interface: str | None, member: str,
                  signature: str = "", body: list | tuple = (), *, fds: Iterable[int] = (),
                  timeout: float = TIMEOUT) -> Message:
        serial = self.call(destination, path, interface, member, signature, body, fds=fds)
        return self.reply_to(serial, timeout)

    def call_driver(self, member: str, signature: str = "", body: list | tuple = (),
                    interface: str = DBUS, path: str = DBUS_PATH) -> Message:
        """Call the bus driver and wait for its answer (a reply or an error)."""
        return self.call_wait(DBUS, path, interface, member, signature, body)

    def driver_value(self, member: str, signature: str = "", body: list | tuple = ()) -> Any:
        return self.call_driver(member, signature, body).value()

    def driver_error(self, member: str, signature: str = "", body: list | tuple = (),
                     interface: str = DBUS, path: str = DBUS_PATH) -> str:
        """Call the driver expecting an error; returns the error name."""
        reply = self.call_driver(member, signature, body, interface, path)
        assert reply.type == ERROR, f"{member}{tuple(body)} succeeded with {reply.body}, an error was expected"
        return reply.error_name

    def emit(self, path: str, interface: str, member: str, signature: str = "", body: list | tuple = (),
             *, destination: str | None = None, fds: Iterable[int] = ()) -> int:
        return self.send(SIGNAL, path=path, interface=interface, member=member, signature=signature,
                         body=body, destination=destination, fds=fds)

    def reply(self, call: Message, signature: str = "", body: list | tuple = (), *,
              fds: Iterable[int] = ()) -> int:
        return self.send(METHOD_RETURN, reply_serial=call.serial, destination=call.sender,
                         signature=signature, body=body, fds=fds)

    def error(self, call: Message, name: str, text: str = "") -> int:
        return self.send(ERROR, reply_serial=call.serial, destination=call.sender, error_name=name,
                         signature="s", body=[text])

    def add_match(self, rule: str) -> None:
        self.call_driver("AddMatch", "s", [rule]).value()

    def request_name(self, name: str, flags: int = 0) -> int:
        return self.driver_value("RequestName", "su", [name, flags])

    def release_name(self, name: str) -> int:
        return self.driver_value("ReleaseName", "s", [name])

    # ------------------------------------------------------------ receiving

    def _recv_some(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout("timed out waiting for the bus")
        self.sock.settimeout(remaining)
        try:
            if self.unix:
                data, ancdata, _flags, _ = self.sock.recvmsg(_READ_SIZE, socket.CMSG_SPACE(_MAX_FDS * 4),
                                                            socket.MSG_CMSG_CLOEXEC)
                for level, kind, cdata in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds = array.array("i")
                        fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
                        self._fds.extend(fds)
            else:
                data = self.sock.recv(_READ_SIZE)
        except socket.timeout:
            raise WaitTimeout("timed out waiting for the bus") from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            raise BusClosed("the bus closed the connection")
        return data

    def _next_from_socket(self, deadline: float) -> Message:
        while True:
            buf = self._rbuf
            if len(buf) >= FIXED_HEADER_SIZE:
                total = frame_size(buf, 0, 1 << 30)
                if len(buf) >= total:
                    raw = bytes(buf[:total])
                    del buf[:total]
                    header = parse_header(raw)
                    fds = [self._fds.popleft() for _ in range(min(header.unix_fds, len(self._fds)))]
                    return Message(header, read_body(raw, header), raw, fds)
            self._rbuf += self._recv_some(deadline)

    def receive(self, timeout: float = TIMEOUT) -> Message:
        """The next message, from the backlog first."""
        if self.backlog:
            return self.backlog.pop(0)
        return self._next_from_socket(time.monotonic() + timeout)

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float = TIMEOUT,
                 what: str = "a matching message") -> Message:
        """The first message (backlog included) satisfying `predicate`; others stay in the backlog."""
        for i, message in enumerate(self.backlog):
            if predicate(message):
                return self.backlog.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self._next_from_socket(deadline)
            except WaitTimeout:
                seen = [m.brief() for m in self.backlog]
                raise WaitTimeout(f"{self.unique_name}: timed out waiting for {what}; backlog: {seen}") from None
            if predicate(message):
                return message
            self.backlog.append(message)

    def reply_to(self, serial: int, timeout: float = TIMEOUT) -> Message:
        return self.wait_for(lambda m: m.type in (METHOD_RETURN, ERROR) and m.reply_serial == serial,
                             timeout, f"the reply to serial {serial}")

    def wait_signal(self, member: str, timeout: float = TIMEOUT, **fields: Any) -> Message:
        def wanted(m: Message) -> bool:
            return m.is_signal(member) and all(getattr(m, k) == v for k, v in fields.items())
        return self.wait_for(wanted, timeout, f"signal {member} {fields}")

    def wait_call(self, member: str, timeout: float = TIMEOUT) -> Message:
        return self.wait_for(lambda m: m.type == METHOD_CALL and m.member == member, timeout,
                             f"a call of {member}")

    def sync(self) -> None:
        """A round trip to the driver: everything the bus queued for us earlier is now in the backlog.

        The bus handles one connection's messages in order, so once the Ping's answer
        is here, every message the bus sent us before answering it has arrived too.
        """
        self.call_driver("Ping", interface="org.freedesktop.DBus.Peer")

    def drain(self) -> list[Message]:
        """sync(), then take every message received so far."""
        self.sync()
        messages, self.backlog = self.backlog, []
        return messages

    def wait_closed(self, timeout: float = TIMEOUT) -> list[Message]:
        """Read until the bus closes the connection; returns what arrived before that."""
        deadline = time.monotonic() + timeout
        got = []
        try:
            while True:
                got.append(self._next_from_socket(deadline))
        except BusClosed:
            return got

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.sock.close()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        for message in self.backlog:
            message.close_fds()
        self.closed = True

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Clients:
    """Open raw clients on one bus and close them all at the end of a test."""

    def __init__(self, bus: RunningBus):
        self.bus = bus
        self.opened: list[RawClient] = []

    def __call__(self, **kwargs: Any) -> RawClient:
        client = RawClient(self.bus.address, **kwargs)
        self.opened.append(client)
        return client

    def close(self) -> None:
        for client in self.opened:
            client.close()


def watch_name(observer: RawClient, name: str) -> None:
    """Make `observer` receive NameOwnerChanged for `name` (see wait_owner())."""
    observer.add_match(f"type='signal',sender='{DBUS}',interface='{DBUS}',member='NameOwnerChanged',arg0='{name}'")


def wait_owner(observer: RawClient, name: str, new_owner: str, timeout: float = TIMEOUT) -> Message:
    """Wait until the bus announces `new_owner` ("" for none) for a name watched with watch_name()."""
    return observer.wait_for(lambda m: m.is_signal("NameOwnerChanged") and m.body[0] == name
                             and m.body[2] == new_owner, timeout,
                             f"NameOwnerChanged({name!r}, new owner {new_owner!r})")


# ---------------------------------------------------------------- external processes


def run_tool(bus: RunningBus, *argv: str, timeout: float = 10, check: bool = True,
             input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command-line client against `bus` (as its session bus) and return its result."""
    result = subprocess.run(list(argv), env=bus.client_env(), capture_output=True, text=True,
                            timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} exited with {result.returncode}\nstdout: {result.stdout}\n"
                             f"stderr: {result.stderr}")
    return result


class LineWatcher:
    """Collects the lines a stream produces (in a thread) so a test can wait for one."""

    def __init__(self, stream: Any):
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()
        self.eof = False

    def _pump(self, stream: Any) -> None:
        with stream:  # the watcher owns the stream: closed at EOF
            for line in iter(stream.readline, ""):
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _take(self, deadline: float) -> str | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise queue.Empty
        line = self._queue.get(timeout=remaining)
        if line is None:
            self.eof = True
        else:
            self.lines.append(line)
        return line

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> str:
        """The first new line matching regular expression `pattern`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        try:
            while not self.eof:
                line = self._take(deadline)
                if line is not None and regex.search(line):
                    return line
        except queue.Empty:
            pass
        tail = "\n".join(self.lines[-30:])
        raise WaitTimeout(f"no line matching {pattern!r} within {timeout}s; last lines:\n{tail}")

    def wait_eof(self, timeout: float = TIMEOUT) -> list[str]:
        deadline = time.monotonic() + timeout
        try:
            while not self.eof:
                self._take(deadline)
        except queue.Empty:
            raise WaitTimeout("the stream stayed open") from None
        return self.lines


class ToolProcess:
    """A long-running command-line client (such as dbus-monitor) whose output a test waits on."""

    def __init__(self, bus: RunningBus, *argv: str):
        self.process = subprocess.Popen(list(argv), env=bus.client_env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        # (the watcher closes stdout at EOF)
        self.output = LineWatcher(self.process.stdout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.wait_eof()

    def __enter__(self) -> "ToolProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_bus_logged(kind: str, extra_config: str = "", args: tuple[str, ...] = ()) -> tuple[RunningBus, LineWatcher]:
    """start_bus(), with the daemon's stderr captured line by line (for log assertions).

    start_bus() lets the daemon inherit our stderr, so fd 2 is pointed at a pipe
    just while the daemon is spawned.
    """
    read_fd, write_fd = os.pipe()
    saved = os.dup(2)
    try:
        os.dup2(write_fd, 2)
        bus = start_bus(kind, extra_config, args=args)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write_fd)
    return bus, LineWatcher(os.fdopen(read_fd, errors="replace"))


def open_fd_count(pid: int) -> int:
    """How many file descriptors process `pid` holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------- dbus-next


def run_async(coroutine: Awaitable[T], timeout: float = 3 * TIMEOUT) -> T:
    """Run a dbus-next scenario to completion on a fresh event loop, bounded by `timeout`."""
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, timeout)
    return asyncio.run(bounded())


async def next_bus(bus: RunningBus, negotiate_unix_fd: bool = False):
    """A connected dbus-next MessageBus on `bus`."""
    from dbus_next.aio import MessageBus
    return await MessageBus(bus_address=bus.address, negotiate_unix_fd=negotiate_unix_fd).connect()


# ---------------------------------------------------------------- fixtures (import them into a test module)


BUS_KINDS = ["busd", "dbus-daemon"]


@pytest.fixture(scope="module", params=BUS_KINDS)
def shared_bus(request: pytest.FixtureRequest):
    """One bus per test module and kind (busd, dbus-daemon), for tests that need no fresh bus.

    Starting busd costs a Python start-up, so tests that do not depend on the bus's
    global state (connection counts, first unique names) share one. They use names
    of their own, so that no test sees another's. A module may set BUS_CONFIG to
    extra configuration for its bus.
    """
    if request.param == "busd" and not busd_available():
        pytest.skip("the busd daemon is not built yet")
    bus = start_bus(request.param, getattr(request.module, "BUS_CONFIG", ""))
    yield bus
    bus.stop()


@contextmanager
def running_bus(kind: str, extra_config: str = "", **options: Any) -> Iterator[RunningBus]:
    """A bus of `kind` with `extra_config` (e.g. limits) for one block; busd is skipped if not built."""
    if kind == "busd" and not busd_available():
        pytest.skip("the busd daemon is not built yet")
    bus = start_bus(kind, extra_config, **options)
    try:
        yield bus
    finally:
        bus.stop()


@pytest.fixture
def clients(shared_bus: RunningBus):
    """A factory of RawClients on the module's shared bus; all closed after the test."""
    factory = Clients(shared_bus)
    yield factory
    factory.close()


@pytest.fixture
def fresh_clients(any_bus: RunningBus):
    """A factory of RawClients on a bus started for this test alone (busd and dbus-daemon)."""
    factory = Clients(any_bus)
    yield factory
    factory.close()


def busd_bug(reason: str) -> Callable[[T], T]:
    """Mark a test that shows a known bug in a busd file the tests may not fix.

    On busd the test becomes `xfail(reason="busd bug: ...", strict=True)`, so it
    must fail there until the bug is fixed; on dbus-daemon it runs as usual and
    proves the expectation is the reference behaviour. Needs the `busd_bugs`
    fixture imported into the test module.
    """
    def mark(test: T) -> T:
        test.busd_bug = reason
        return test
    return mark


def _bus_kind(request: pytest.FixtureRequest) -> str | None:
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None:
        for key in ("any_bus", "shared_bus", "kind"):
            if key in callspec.params:
                return callspec.params[key]
    if "busd_bus" in request.fixturenames:
        return "busd"
    return None


@pytest.fixture(autouse=True)
def busd_bugs(request: pytest.FixtureRequest) -> None:
    """Turn @busd_bug into a strict xfail on the busd run of a test (see busd_bug)."""
    reason = getattr(request.function, "busd_bug", None)
    if reason and _bus_kind(request) == "busd":
        request.node.add_marker(pytest.mark.xfail(reason=f"busd bug: {reason}", strict=True))
