"""The mixed traffic of the soak run (soak.py): one process per bus, one thread per kind of client.

Every kind of work is paced (so two daemons side by side get the same load, and
a slow daemon is not given less to do): method calls to a service, signals to
subscribers, connection churn with distinct names and match rules, an
activatable service killed with SIGKILL and started again by the next call,
hostile clients (junk SASL, mutated messages, peers that never read), and a slow
consumer that reads its signals in bursts. Peers that hold resources (the
never-reading ones) are replaced at a fixed period, so what they cost the daemon
stays bounded and a flat RSS is the right expectation.

The work is scaled by `rate` (1.0 = the soak's default load).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from busclient import BusClosed, RawClient, WaitTimeout, _connect, watch_name, wait_owner  # noqa: E402
from busd.wire.message import METHOD_CALL, SIGNAL, build_message  # noqa: E402

ECHO_NAME = "org.busd.Soak.Echo"
ACTIVATABLE_NAME = "org.busd.Soak.Activatable"
SOAK_INTERFACE = "org.busd.Soak"
SOAK_PATH = "/org/busd/Soak"
TICK_RULE = f"type='signal',interface='{SOAK_INTERFACE}',member='Tick'"
ACTIVATABLE_INTERFACE = "dev.busd.Test.Activatable"  # tests/services/activatable.py
ACTIVATABLE_SCRIPT = os.path.join(TESTS, "services", "activatable.py")
NO_REPLY_EXPECTED = 0x1


def service_file(directory: str) -> str:
    """Write the activatable service's .service file into `directory`; returns its path."""
    path = os.path.join(directory, f"{ACTIVATABLE_NAME}.service")
    with open(path, "w") as f:
        f.write(f"[D-BUS Service]\nName={ACTIVATABLE_NAME}\nExec={sys.executable} {ACTIVATABLE_SCRIPT} "
                f"{ACTIVATABLE_NAME}\n")
    return path


@dataclass
class Tally:
    """What the load did, per kind of work, and the first few errors (a load that fails is reported, not hidden)."""

    counts: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def error(self, where: str, exc: BaseException) -> None:
        with self.lock:
            self.counts["errors"] += 1
            if len(self.errors) < 10:
                self.errors.append(f"{where}: {type(exc).__name__}: {exc}")


class Load:
    """The soak's clients on one bus, each kind in its own thread, until stop()."""

    def __init__(self, address: str, rate: float = 1.0, seed: int = 0):
        self.address = address
        self.rate = rate
        self.random = random.Random(seed)
        self.tally = Tally()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._service_ready = threading.Event()

    # ------------------------------------------------------------ running

    def start(self) -> None:
        jobs: list[tuple[str, Callable[[], None]]] = [
            ("service", self.echo_service), ("caller", self.caller),
            ("emitter", self.emitter), *[(f"subscriber{i}", self.subscriber) for i in range(4)],
            ("slow-consumer", self.slow_consumer), ("churn", self.churn), ("activation", self.activation),
            ("never-reader", self.never_reader), ("junk", self.junk),
        ]
        for name, job in jobs:
            thread = threading.Thread(target=self._guard, args=(name, job), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if not self._service_ready.wait(30):
            raise RuntimeError(f"the echo service did not start: {self.tally.errors}")

    def stop(self) -> Tally:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        return self.tally

    def _guard(self, name: str, job: Callable[[], None]) -> None:
        """Run one job; a failure is counted and the job starts again (after a pause), until stop()."""
        while not self._stop.is_set():
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - counted, and reported at the end
                self.tally.error(name, exc)
                if os.environ.get("SOAK_TRACE"):
                    traceback.print_exc()
                self._stop.wait(1.0)

    def _period(self, seconds: float) -> float:
        return seconds / self.rate

    # ------------------------------------------------------------ calls

    def echo_service(self) -> None:
        """Own ECHO_NAME and answer every call with its own body."""
        with RawClient(self.address) as service:
            service.request_name(ECHO_NAME, 0x4)
            self._service_ready.set()
            while not self._stop.is_set():
                try:
                    call = service.receive(timeout=0.5)
                except WaitTimeout:
                    continue
                if call.type == METHOD_CALL and not call.flags & NO_REPLY_EXPECTED:
                    service.reply(call, call.signature or "", call.body)
                    self.tally.add("served")

    def caller(self) -> None:
        """Batches of pipelined calls: to the service, to the driver, to a name nobody owns."""
        self._service_ready.wait()
        with RawClient(self.address) as client:
            while not self._stop.wait(self._period(0.1)):
                serials = []
                for _ in range(8):
                    payload = "x" * self.random.randrange(16, 4096)
                    serials.append(client.call(ECHO_NAME, SOAK_PATH, SOAK_INTERFACE, "Echo", "s", [payload]))
                serials.append(client.call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                                           "org.freedesktop.DBus", "GetNameOwner", "s", [ECHO_NAME]))
                serials.append(client.call("org.busd.Soak.Nobody", SOAK_PATH, SOAK_INTERFACE, "Echo",
                                           flags=0x2))  # NO_AUTO_START: ServiceUnknown
                client.call(ECHO_NAME, SOAK_PATH, SOAK_INTERFACE, "Forget", flags=NO_REPLY_EXPECTED)
                for serial in serials:
                    client.reply_to(serial, timeout=30)
                self.tally.add("calls", len(serials) + 1)

    # ------------------------------------------------------------ signals

    def emitter(self) -> None:
        with RawClient(self.address) as client:
            n = 0
            while not self._stop.wait(self._period(0.05)):
                for _ in range(2):
                    n += 1
                    client.emit(f"{SOAK_PATH}/e{n % 16}", SOAK_INTERFACE, "Tick", "su", [f"k{n % 8}", n])
                self.tally.add("signals", 2)

    def subscriber(self) -> None:
        with RawClient(self.address) as client:
            client.add_match(TICK_RULE)
            client.add_match(f"type='signal',interface='{SOAK_INTERFACE}',arg0='k3'")
            client.add_match(f"type='signal',path_namespace='{SOAK_PATH}'")
            while not self._stop.is_set():
                try:
                    client.receive(timeout=0.5)
                    self.tally.add("received")
                except WaitTimeout:
                    pass

    def slow_consumer(self) -> None:
        """Subscribed to every Tick, reads them in bursts a few seconds apart (the bus queues meanwhile)."""
        with RawClient(self.address) as client:
            client.add_match(TICK_RULE)
            while not self._stop.wait(self.random.uniform(1.0, 3.0)):
                try:
                    while True:
                        client.receive(timeout=0.05)
                        self.tally.add("slow-received")
                except WaitTimeout:
                    pass

    # ------------------------------------------------------------ connections

    def churn(self) -> None:
        """Connections that come and go, each with names and match rules nobody used before."""
        n = 0
        while not self._stop.wait(self._period(0.1)):
            n += 1
            kind = n % 8
            if kind == 0:  # authenticated, never says Hello
                RawClient(self.address, hello=False).close()
            elif kind == 1:  # leaves in the middle of a message
                with RawClient(self.address) as client:
                    message = build_message(METHOD_CALL, 2, path=SOAK_PATH, interface=SOAK_INTERFACE,
                                            member="Echo", destination=ECHO_NAME, signature="s",
                                            body=["y" * 1000])
                    client.send_bytes(message[: len(message) // 2])
            else:
                with RawClient(self.address) as client:
                    client.add_match(f"type='signal',interface='{SOAK_INTERFACE}',arg0='churn{n}'")
                    client.add_match(f"type='signal',sender='{client.unique_name}',path='/c/{n}'")
                    client.request_name(f"org.busd.Soak.Churn.n{n}", 0x4)
                    client.emit(f"/c/{n}", SOAK_INTERFACE, "Hello", "s", [f"churn{n}"])
                    # A call left unanswered: the bus holds a pending reply when we leave.
                    client.call(ECHO_NAME, SOAK_PATH, SOAK_INTERFACE, "Echo", "s", [f"c{n}"])
                    if kind == 2:
                        client.sync()
            self.tally.add("connections")

    def activation(self) -> None:
        """Call the activatable service (the bus starts it), then SIGKILL it and wait until the bus has seen it go."""
        with RawClient(self.address) as client:
            watch_name(client, ACTIVATABLE_NAME)
            while not self._stop.wait(self._period(3.0)):
                reply = client.call_wait(ACTIVATABLE_NAME, "/", ACTIVATABLE_INTERFACE, "Echo", "s", ["soak"],
                                         timeout=60)
                reply.value()
                pid = client.driver_value("GetConnectionUnixProcessID", "s", [ACTIVATABLE_NAME])
                os.kill(pid, signal.SIGKILL)
                wait_owner(client, ACTIVATABLE_NAME, "", timeout=30)
                client.backlog.clear()
                self.tally.add("activations")

    # ------------------------------------------------------------ hostile clients

    def never_reader(self) -> None:
        """A peer that subscribes and calls but never reads; replaced every 20 seconds."""
        with RawClient(self.address) as client:
            client.add_match(TICK_RULE)
            client.sock.setblocking(False)
            until = time.monotonic() + 20
            while time.monotonic() < until and not self._stop.wait(self._period(0.25)):
                data = b"".join(
                    [build_message(METHOD_CALL, client.next_serial(), path="/org/freedesktop/DBus",
                                   interface="org.freedesktop.DBus.Introspectable", member="Introspect",
                                   destination="org.freedesktop.DBus") for _ in range(10)]
                    + [build_message(METHOD_CALL, client.next_serial(), path=SOAK_PATH,
                                     interface=SOAK_INTERFACE, member="Echo", destination=ECHO_NAME,
                                     signature="s", body=["z" * 16384])])
                try:
                    client.sock.send(data)
                except BlockingIOError:
                    pass  # the bus stopped reading us: it holds what it holds
                except OSError:
                    break  # the bus dropped us
                self.tally.add("unread-calls", 11)
        self.tally.add("never-readers")

    def junk(self) -> None:
        """Junk SASL lines, or a mutated message after Hello; then wait for the bus to answer or drop us."""
        while not self._stop.wait(self._period(1.0)):
            if self.random.random() < 0.5:
                sock = _connect(self.address)
                with sock:
                    sock.sendall(b"\0" + b"AUTH BOGUS\r\nDATA\r\n" * 20 + os.urandom(64) + b"\r\n")
                    self._read_until_closed(sock, 2.0)
                self.tally.add("junk-sasl")
            else:
                with RawClient(self.address) as client:
                    message = bytearray(build_message(SIGNAL, 7, path=SOAK_PATH, interface=SOAK_INTERFACE,
                                                      member="Junk", signature="a{sv}s", body=[{}, "junk"]))
                    for _ in range(self.random.randrange(1, 4)):
                        message[self.random.randrange(len(message))] = self.random.randrange(256)
                    client.send_bytes(bytes(message))
                    try:
                        client.sync()  # answered: the message was valid after all, or dropped quietly
                    except (BusClosed, WaitTimeout, OSError):
                        pass
                self.tally.add("junk-messages")

    @staticmethod
    def _read_until_closed(sock: socket.socket, seconds: float) -> None:
        sock.settimeout(seconds)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
