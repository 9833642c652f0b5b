"""Benchmark busd against dbus-daemon and dbus-broker side by side on the same workloads, and print the ratios.

    python3 benchmarks/bench_bus.py [--buses busd,dbus-daemon,dbus-broker] [--quick] [--json] [--only WORKLOAD...]

Every workload runs on a fresh daemon of each kind in turn (busd, then dbus-daemon,
then dbus-broker, then the next workload), driven by raw-socket clients (rawclient.py) in separate
processes. The daemon is pinned to one CPU and the clients to the others, and
the harness reads the daemon's and the clients' CPU time from /proc, so each
result says how much CPU the daemon spent per message, and shows whether the
daemon or the clients were the bottleneck.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import platform
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any
from multiprocessing.connection import Connection as Pipe

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [HERE, os.path.join(REPO, "tests")]

import pyspy  # noqa: E402
from broker import start_broker  # noqa: E402
import rawclient as rc  # noqa: E402
from buses import RunningBus, daemon_command, start_bus, stop_process  # noqa: E402

# The limits of the stock session.conf: generous, and the same for both daemons. Without
# them dbus-daemon's built-in defaults (256 connections per user, 128 pending replies per
# connection) would cut the idle-memory and in-flight workloads short.
SESSION_LIMITS = """
  <limit name="max_incoming_bytes">1000000000</limit>
  <limit name="max_outgoing_bytes">1000000000</limit>
  <limit name="max_message_size">1000000000</limit>
  <limit name="max_completed_connections">100000</limit>
  <limit name="max_incomplete_connections">10000</limit>
  <limit name="max_connections_per_user">100000</limit>
  <limit name="max_match_rules_per_connection">50000</limit>
  <limit name="max_replies_per_connection">50000</limit>
"""

BENCH_PATH = "/org/busd/Bench"
BENCH_INTERFACE = "org.busd.Bench"
SIGNAL_RULE = f"type='signal',interface='{BENCH_INTERFACE}',member='Tick'"
MATCHES_PER_IDLE_CONNECTION = 10
IN_FLIGHT = 64
SIGNAL_BATCH = 64
# Signals the emitter may be ahead of the slowest subscriber. dbus-daemon and busd hold a sender
# back when its subscribers' queues fill; dbus-broker does not, and past its quotas it disconnects
# (the emitter or a subscriber, seen here), so the emitter paces itself for every bus alike.
SIGNAL_WINDOW = 512
SIGNAL_STALL = 5.0  # seconds without a delivery while the window is full: the bus dropped signals
MiB = 1024 * 1024
SATURATED = 90.0  # % of a CPU at which a process counts as the bottleneck
CLIENTS_SATURATED = "CLIENTS SATURATED: this figure understates the daemon"
CLIENTS_CLOSE_BEHIND = "daemon-bound, but the clients were saturated too"
REPLY_TIMEOUT = 60.0  # seconds a client waits on the bus before it declares the run broken
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Budget:
    """How much work each workload may do on each bus: whichever of count or time runs out first."""

    seconds: float
    seq_calls: int = 100_000
    inflight_calls: int = 1_000_000
    signal_deliveries: int = 5_000_000
    payload_bytes: int = 16 * 1024 * MiB
    churn_connections: int = 100_000
    idle_connections: int = 1000
    starts: int = 15  # the start workload: starts of each daemon (and of the bare interpreter), median taken


FULL = Budget(seconds=3.0)
QUICK = Budget(seconds=0.4, idle_connections=200, starts=5)


class WorkloadError(Exception):
    """A workload could not produce its figures on one bus."""


# --- measuring processes ---------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a whole process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def rss_bytes(pid: int) -> int:
    return memory_status(pid)["VmRSS"]


def memory_status(pid: int) -> dict[str, int]:
    """VmRSS and its parts from /proc/PID/status, in bytes: RssAnon (private memory: what the process
    really costs), RssFile (file-backed pages: shared libraries, shared with every process mapping them)
    and RssShmem."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                found[key] = int(value.split()[0]) * 1024
    if "VmRSS" not in found:
        raise WorkloadError(f"process {pid} reports no VmRSS")
    return found


class CpuMeter:
    """CPU time spent by the daemon and by each client process between start() and stop()."""

    def __init__(self, daemon_pid: int, clients: list[Worker]) -> None:
        self.roles = ["daemon", *(worker.name for worker in clients)]
        self.pids = [daemon_pid, *(worker.pid for worker in clients)]
        self.spent: list[float] = []
        self.wall = 0.0

    def start(self) -> None:
        self._cpu = [cpu_seconds(pid) for pid in self.pids]
        self._machine = machine_busy_seconds()
        self._wall = time.monotonic()

    def stop(self) -> None:
        self.wall = time.monotonic() - self._wall
        self.spent = [cpu_seconds(pid) - before for pid, before in zip(self.pids, self._cpu)]
        # Whatever else ran meanwhile (other jobs, the harness itself): on a shared machine it
        # explains throughput that no saturated process accounts for.
        self.others = max(0.0, machine_busy_seconds() - self._machine - sum(self.spent))

    def split(self) -> str:
        """How busy each process was, in % of one CPU, and which side limited the run."""
        busy = [100 * cpu / self.wall for cpu in self.spent]
        shares = ", ".join(f"{role} {load:.0f}%" for role, load in zip(self.roles, busy))
        client_cpus = len(os.sched_getaffinity(0))  # the clients run on this process's CPUs
        clients_saturated = max(busy[1:]) >= SATURATED or sum(busy[1:]) >= SATURATED * client_cpus
        if busy[0] >= SATURATED:
            verdict = CLIENTS_CLOSE_BEHIND if clients_saturated else "daemon-bound"
        elif clients_saturated:
            verdict = CLIENTS_SATURATED
        else:
            verdict = "no process saturated: bound by round trips or by other load"
        return f"{shares}, everything else {100 * self.others / self.wall:.0f}%; {verdict}"

    def figures(self, per: str, count: float, scale: float = 1e6) -> dict[str, float]:
        """Daemon and client CPU per unit of work, and how busy each side was."""
        unit = "µs" if scale == 1e6 else "ms"
        daemon, clients = self.spent[0], sum(self.spent[1:])
        return {
            f"daemon CPU/{per} ({unit})": daemon / count * scale,
            f"client CPU/{per} ({unit})": clients / count * scale,
            "daemon busy (% of a CPU)": 100 * daemon / self.wall,
            "clients busy (% of a CPU)": 100 * clients / self.wall,
            "everything else (% of a CPU)": 100 * self.others / self.wall,
        }


# --- client processes ------------------------------------------------------------------------

_fork = multiprocessing.get_context("fork")


class Worker:
    """A client process: it sets up, says ("ready", info), runs on "go", answers ("done", result)."""

    def __init__(self, name: str, target: Callable[..., None], *args: object) -> None:
        self.name = name
        self.pipe, child_end = _fork.Pipe()
        self.process = _fork.Process(target=_worker_main, args=(child_end, target, args), name=name, daemon=True)
        self.process.start()
        child_end.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, message: object) -> None:
        self.pipe.send(message)

    def receive(self, expected: str, timeout: float = REPLY_TIMEOUT) -> object:
        if not self.pipe.poll(timeout):
            raise WorkloadError(f"{self.name} gave no sign of life for {timeout:.0f} s; is the bus stuck?")
        try:
            kind, payload = self.pipe.recv()
        except EOFError:
            self.process.join(1)
            raise WorkloadError(f"{self.name} died (exit status {self.process.exitcode})") from None
        if kind == "error":
            raise WorkloadError(f"{self.name}: {payload}")
        if kind != expected:
            raise WorkloadError(f"{self.name} said {kind!r} where {expected!r} was due")
        return payload

    def close(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.pipe.close()


def _worker_main(pipe: Pipe, target: Callable[..., None], args: tuple) -> None:
    try:
        target(pipe, *args)
    except BaseException as exc:  # report anything, the parent decides
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    else:
        pipe.recv()  # stay alive (and measurable) until the parent is done with us


@contextmanager
def workers(*started: Worker) -> Iterator[tuple[Worker, ...]]:
    try:
        yield started
    finally:
        for worker in started:
            worker.close()


def _wait_go(pipe: Pipe) -> None:
    """Tell the harness this client is set up, and wait for the start signal."""
    pipe.send(("ready", None))
    if pipe.recv() != "go":
        raise RuntimeError("expected 'go' from the harness")


def _timed(pipe: Pipe, step: Callable[[int], int], limit: int, seconds: float) -> tuple[int, float, float]:
    """Say ready, wait for go, then repeat `step(units still allowed) -> units done` until
    `limit` units or `seconds` are used up (at least once). Returns (units, start, elapsed)."""
    _wait_go(pipe)
    start = time.monotonic()
    deadline = start + seconds
    done = 0
    while done < limit:
        done += step(limit - done)
        if time.monotonic() >= deadline:
            break
    return done, start, time.monotonic() - start


def serve_echo(pipe: Pipe, address: str) -> None:
    """The method-call service: answer every call with an empty method return, as cheaply as possible."""
    conn = rc.Connection.open(address, timeout=None)
    pipe.send(("ready", conn.unique_name))
    # Calls whose headers match apart from the serial come from the same sender, so the reply
    # template is looked up by the rest of the header instead of decoding every header.
    templates: dict[bytes, rc.ReplyTemplate] = {}
    serial = conn.serial
    reader, sock = conn.reader, conn.sock
    while True:
        out = bytearray()
        for header in reader.read():
            if header[1] != rc.METHOD_CALL or header[2] & rc.NO_REPLY_EXPECTED:
                continue
            key = header[12:]
            template = templates.get(key)
            if template is None:
                template = templates[key] = rc.ReplyTemplate(rc.header_fields(header)[rc.SENDER])
            serial += 1
            template.render(out, serial, rc.message_serial(header))
        if out:
            sock.sendall(out)


def call_loop(pipe: Pipe, address: str, service: str, window: int, payload: int,
              max_calls: int, seconds: float) -> None:
    """The caller: `max_calls` calls (or `seconds` of them) to `service`, `window` in flight."""
    conn = rc.Connection.open(address, timeout=REPLY_TIMEOUT)
    if payload:
        template = rc.method_call(service, BENCH_PATH, BENCH_INTERFACE, "Take", "ay", (bytes(payload),))
    else:
        template = rc.method_call(service, BENCH_PATH, BENCH_INTERFACE, "Ping")
    conn.call(template)  # one warm-up call: the service is reachable and answers
    reader = conn.reader
    latencies: list[int] = []
    if window == 1:
        clock = time.perf_counter_ns

        def one_call(_: int) -> int:
            rc.set_serial(template, conn.next_serial())
            sent_at = clock()
            conn.send(template)
            while not reader.count():
                pass
            latencies.append(clock() - sent_at)
            return 1

        calls, _, elapsed = _timed(pipe, one_call, max_calls, seconds)
    else:
        _wait_go(pipe)
        start = time.monotonic()
        deadline = start + seconds
        sent = min(window, max_calls)
        conn.send(conn.batch(template, sent))
        calls = 0
        while calls < sent:
            done = reader.count()
            calls += done
            if done and sent < max_calls and time.monotonic() < deadline:
                more = min(done, max_calls - sent)
                conn.send(conn.batch(template, more))
                sent += more
        elapsed = time.monotonic() - start
    if reader.errors:
        raise rc.BusError(f"{reader.errors} of {calls} calls came back as errors")
    result = {"calls": calls, "seconds": elapsed}
    if latencies:
        latencies.sort()
        result["p50_us"] = latencies[len(latencies) // 2] / 1000
        result["p99_us"] = latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)] / 1000
    pipe.send(("done", result))


def emit_signals(pipe: Pipe, address: str, max_signals: int, seconds: float, delivered: Any) -> None:
    """The emitter: broadcast Tick signals in batches until the count or the time runs out,
    at most SIGNAL_WINDOW ahead of `delivered` (what the slowest subscriber has counted)."""
    conn = rc.Connection.open(address, timeout=REPLY_TIMEOUT)
    template = rc.signal(BENCH_PATH, BENCH_INTERFACE, "Tick", "u", (0,))
    sent = 0

    def send_batch(room: int) -> int:
        nonlocal sent
        if sent - delivered.value > SIGNAL_WINDOW:
            seen, since = delivered.value, time.monotonic()
            while sent - delivered.value > SIGNAL_WINDOW:
                time.sleep(0.0001)
                if delivered.value != seen:
                    seen, since = delivered.value, time.monotonic()
                elif time.monotonic() - since > SIGNAL_STALL:
                    raise rc.BusError(f"subscribers stopped receiving for {SIGNAL_STALL:.0f} s, "
                                      f"{sent - seen} signals behind: the bus dropped some")
        count = min(SIGNAL_BATCH, room)
        conn.send(conn.batch(template, count))
        sent += count
        return count

    sent, start, _ = _timed(pipe, send_batch, max_signals, seconds)
    # A round trip to the bus: every signal has been read (and routed) by the daemon.
    conn.bus_call("GetId")
    pipe.send(("done", {"signals": sent, "start": start}))


def count_signals(pipe: Pipe, address: str, subscribers: int, delivered: Any) -> None:
    """The subscribers: `subscribers` connections with a match rule each, counting what arrives;
    the slowest one's count goes to `delivered`, for the emitter's window."""
    conns = []
    for _ in range(subscribers):
        conn = rc.Connection.open(address, timeout=REPLY_TIMEOUT)
        conn.add_match(SIGNAL_RULE)
        conns.append(conn)
    # epoll directly, indexed by fd: the selectors module costs more per event than the counting.
    poller = select.epoll()
    readers: dict[int, rc.Reader] = {}
    for conn in conns:
        poller.register(conn.sock.fileno(), select.EPOLLIN)
        readers[conn.sock.fileno()] = conn.reader
    poller.register(pipe.fileno(), select.EPOLLIN)
    pipe.send(("ready", None))
    counts = dict.fromkeys(readers, 0)
    expected: int | None = None
    last_arrival = time.monotonic()
    while expected is None or min(counts.values()) < expected:
        events = poller.poll(REPLY_TIMEOUT)
        if not events:
            raise TimeoutError(f"signals stopped arriving: {sum(counts.values())} delivered, "
                               f"{expected} expected on each of {subscribers} subscribers")
        for fd, _ in events:
            reader = readers.get(fd)
            if reader is None:
                expected = pipe.recv()
            else:
                counts[fd] += reader.count()
        last_arrival = time.monotonic()
        delivered.value = min(counts.values())
    if max(counts.values()) > expected:
        raise rc.BusError(f"a subscriber got {max(counts.values())} signals, {expected} were sent")
    pipe.send(("done", {"end": last_arrival, "delivered": sum(counts.values())}))


def churn_connections(pipe: Pipe, address: str, max_connections: int, seconds: float) -> None:
    """Connect, authenticate, Hello, disconnect; again and again."""
    rc.Connection.open(address, sync=False).close()  # warm-up, as measured (the null bus answers nothing more)

    def one_connection(_: int) -> int:
        rc.Connection.open(address, sync=False).close()
        return 1

    done, _, elapsed = _timed(pipe, one_connection, max_connections, seconds)
    pipe.send(("done", {"connections": done, "seconds": elapsed}))


def hold_idle_connections(pipe: Pipe, address: str, count: int) -> None:
    """Open `count` connections, each with Hello and distinct match rules, and keep them open."""
    def idle_connection(index: int | str) -> rc.Connection:
        conn = rc.Connection.open(address, sync=False)
        data = bytearray()
        for rule in range(MATCHES_PER_IDLE_CONNECTION):
            match = (f"type='signal',interface='{BENCH_INTERFACE}.Idle',member='M{rule}',"
                     f"path='{BENCH_PATH}/idle/c{index}'")
            message = rc.method_call(rc.BUS_NAME, rc.BUS_PATH, rc.BUS_NAME, "AddMatch", "s", (match,))
            rc.set_serial(message, conn.next_serial())
            data += message
        conn.send(data)
        conn.wait_reply(conn.serial)  # replies come in order: the last one means all are in
        if conn.reader.errors:
            raise rc.BusError(f"AddMatch failed on idle connection {index}")
        return conn

    idle_connection("warmup").close()  # warm-up, so that the baseline has seen one connection
    _wait_go(pipe)
    held = [idle_connection(index) for index in range(count)]
    pipe.send(("done", len(held)))


# --- workloads -------------------------------------------------------------------------------

@dataclass
class Outcome:
    """One workload's figures on one bus, and how busy each process was meanwhile."""

    figures: dict[str, float]
    cpu_split: str = ""


Workload = Callable[[RunningBus, Budget], Outcome]


def _call_workload(bus: RunningBus, budget: Budget, window: int, payload: int = 0) -> tuple[dict, CpuMeter]:
    max_calls = budget.seq_calls if window == 1 else budget.inflight_calls
    if payload:
        max_calls = max(2, budget.payload_bytes // payload)
    with workers(Worker("service", serve_echo, bus.address)) as (service,):
        name = service.receive("ready")
        with workers(Worker("caller", call_loop, bus.address, name, window, payload,
                            max_calls, budget.seconds)) as (caller,):
            caller.receive("ready")
            meter = CpuMeter(bus.pid, [caller, service])
            meter.start()
            caller.send("go")
            result = caller.receive("done", budget.seconds + REPLY_TIMEOUT)
            meter.stop()
    return result, meter


def sequential_calls(bus: RunningBus, budget: Budget) -> Outcome:
    result, meter = _call_workload(bus, budget, window=1)
    calls = result["calls"]
    return Outcome({"calls/s": calls / result["seconds"], "p50 latency (µs)": result["p50_us"],
                    "p99 latency (µs)": result["p99_us"], **meter.figures("call", calls)}, meter.split())


def calls_in_flight(bus: RunningBus, budget: Budget) -> Outcome:
    result, meter = _call_workload(bus, budget, window=IN_FLIGHT)
    calls = result["calls"]
    return Outcome({"calls/s": calls / result["seconds"], **meter.figures("call", calls)}, meter.split())


def payload_calls(size: int) -> Workload:
    def run(bus: RunningBus, budget: Budget) -> Outcome:
        result, meter = _call_workload(bus, budget, window=1, payload=size)
        mib = result["calls"] * size / MiB
        return Outcome({"MiB/s": mib / result["seconds"], **meter.figures("MiB", mib, scale=1e3)}, meter.split())
    return run


def signal_fanout(subscribers: int) -> Workload:
    def run(bus: RunningBus, budget: Budget) -> Outcome:
        max_signals = max(1, budget.signal_deliveries // subscribers)
        delivered = _fork.Value("q", 0, lock=False)  # the slowest subscriber's count, for the window
        with workers(Worker("subscribers", count_signals, bus.address, subscribers, delivered)) as (sink,):
            sink.receive("ready")
            with workers(Worker("emitter", emit_signals, bus.address, max_signals,
                                budget.seconds, delivered)) as (emitter,):
                emitter.receive("ready")
                meter = CpuMeter(bus.pid, [emitter, sink])
                meter.start()
                emitter.send("go")
                emitted = emitter.receive("done", budget.seconds + REPLY_TIMEOUT)
                sink.send(emitted["signals"])
                counted = sink.receive("done", REPLY_TIMEOUT)
                meter.stop()
        delivered = counted["delivered"]
        return Outcome({"deliveries/s": delivered / (counted["end"] - emitted["start"]),
                        **meter.figures("delivery", delivered)}, meter.split())
    return run


def connection_churn(bus: RunningBus, budget: Budget) -> Outcome:
    with workers(Worker("churner", churn_connections, bus.address, budget.churn_connections,
                        budget.seconds)) as (churner,):
        churner.receive("ready")
        meter = CpuMeter(bus.pid, [churner])
        meter.start()
        churner.send("go")
        result = churner.receive("done", budget.seconds + REPLY_TIMEOUT)
        meter.stop()
    connections = result["connections"]
    return Outcome({"connections/s": connections / result["seconds"],
                    **meter.figures("connection", connections)}, meter.split())


def idle_memory(bus: RunningBus, budget: Budget) -> Outcome:
    count = budget.idle_connections
    with workers(Worker("holder", hold_idle_connections, bus.address, count)) as (holder,):
        holder.receive("ready")
        before = rss_bytes(bus.pid)
        holder.send("go")
        holder.receive("done", REPLY_TIMEOUT + count * 0.1)
        after = rss_bytes(bus.pid)
    return Outcome({"RSS/connection (kB)": (after - before) / count / 1000,
                    "RSS at start (MiB)": before / MiB, f"RSS with {count} idle (MiB)": after / MiB})


class NotApplicable(Exception):
    """A workload that cannot be run on a kind of bus at all (said once, not counted as a failure)."""


# benchmarks/null_bus.py: a uvloop server that answers the handshake and Hello with canned bytes and
# does nothing else, the floor of churn for a Python daemon. It runs only the workloads listed here.
NULL_BUS = "null-bus"
NULL_BUS_WORKLOADS = ("churn",)


def start_null_bus() -> RunningBus:
    workdir = tempfile.mkdtemp(prefix="null-bus-")
    path = os.path.join(workdir, "bus")
    process = subprocess.Popen([sys.executable, os.path.join(HERE, "null_bus.py"), path], stdout=subprocess.PIPE)
    try:
        ready = select.select([process.stdout], [], [], REPLY_TIMEOUT)[0]
        line = process.stdout.readline() if ready else b""
    finally:
        process.stdout.close()
    if line.strip() != b"ready":
        stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)
        raise WorkloadError(f"null_bus.py did not say it was ready (status {process.poll()})")
    return RunningBus(NULL_BUS, f"unix:path={path}", process, workdir)


# The start workload's command line, after the daemon's own command: the distribution's session.conf
# for busd and dbus-daemon alike, in the foreground, the address printed to a pipe.
START_ARGS = ("--session", "--nofork", "--nopidfile")
# What the interpreter alone costs the Python buses, timed the same way: exec to a line on the pipe,
# then it waits (on stdin) so that its memory can be read like the daemon's. Measured interleaved
# with the daemon's starts, so both see the same load on this shared machine.
BARE_INTERPRETER = "import os, sys; os.write(int(sys.argv[1]), b'up\\n'); os.read(0, 1)"
# The same with the runtime busd is built on and imports before any of its own modules: asyncio (which
# imports ssl), uvloop (busd runs without it when it is missing), logging and argparse. What busd itself
# costs is the difference from this.
RUNTIME_MODULES = ("asyncio", "uvloop", "logging", "argparse")
PYTHON_BUSES = ("busd", "busd-pure")


def _timed_start(argv: list[str], plan: CpuPlan, env: dict[str, str] | None = None) -> dict[str, float]:
    """Start argv (which prints a line on the fd named by its last argument's {fd}), on the daemon CPU;
    return the ms from exec to the line, and the memory right after it; then stop the process."""
    read_fd, write_fd = os.pipe()
    argv = [arg.replace("{fd}", str(write_fd)) for arg in argv]
    if plan.daemon is not None:
        os.sched_setaffinity(0, plan.daemon)  # the child inherits it; the harness goes back below
    try:
        began = time.perf_counter()
        process = subprocess.Popen(argv, pass_fds=(write_fd,), stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    finally:
        os.close(write_fd)
        if plan.clients is not None:
            os.sched_setaffinity(0, plan.clients)
    try:
        with os.fdopen(read_fd, "rb") as reader:
            ready = select.select([reader], [], [], REPLY_TIMEOUT)[0]
            line = reader.readline() if ready else b""
            elapsed = time.perf_counter() - began
            if not line.strip():
                raise WorkloadError(f"{argv[0]} printed nothing within {REPLY_TIMEOUT:.0f} s "
                                    f"(status {process.poll()})")
            memory = memory_status(process.pid)
    finally:
        process.stdin.close()
        stop_process(process)
    return {"ms": elapsed * 1e3, **{key: value / MiB for key, value in memory.items()}}


def start_to_address(kind: str, budget: Budget, plan: CpuPlan) -> Outcome:
    """From exec to the address printed, and the memory then, median of budget.starts starts."""
    if kind == "dbus-broker":
        raise NotApplicable("dbus-broker has no --print-address: its launcher takes a socket from systemd, "
                            "which listens before the bus starts, so there is no start-to-address to time")
    command = daemon_command(kind) + [*START_ARGS, "--print-address={fd}"]
    # Beside a Python bus, in turn with its starts: the bare interpreter, then with busd's runtime.
    beside: list[list[str]] = []
    if kind in PYTHON_BUSES:
        modules = [name for name in RUNTIME_MODULES if importlib.util.find_spec(name) is not None]
        beside = [[sys.executable, "-c", BARE_INTERPRETER, "{fd}"],
                  [sys.executable, "-c", f"import {', '.join(modules)}; {BARE_INTERPRETER}", "{fd}"]]
    runs: list[dict[str, float]] = []
    bare_runs: list[dict[str, float]] = []
    runtime_runs: list[dict[str, float]] = []
    for _ in range(budget.starts):
        for argv, rows in zip(beside, (bare_runs, runtime_runs)):
            rows.append(_timed_start(argv, plan))
        runs.append(_timed_start(command, plan))

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(row.get(key, 0.0) for row in rows)

    figures = {"start to address, median (ms)": median(runs, "ms"),
               "start to address, fastest (ms)": min(row["ms"] for row in runs),
               "RSS after start (MiB)": median(runs, "VmRSS"),
               "RssAnon after start (MiB)": median(runs, "RssAnon"),
               "RssFile after start (MiB)": median(runs, "RssFile")}
    if bare_runs:
        figures.update({"interpreter alone: exec to a line (ms)": median(bare_runs, "ms"),
                        "interpreter alone: RSS (MiB)": median(bare_runs, "VmRSS"),
                        "interpreter alone: RssAnon (MiB)": median(bare_runs, "RssAnon"),
                        "interpreter + its runtime: exec to a line (ms)": median(runtime_runs, "ms"),
                        "interpreter + its runtime: RSS (MiB)": median(runtime_runs, "VmRSS")})
    return Outcome(figures)


# Workloads that start their own daemons (many times) instead of running on one the harness started.
SELF_STARTING = {"start": start_to_address}


# name -> (what it does, how to run it). In --only, a family name ("signal") picks all its members.
WORKLOADS: dict[str, tuple[str, Workload]] = {
    "seq": ("method calls one at a time", sequential_calls),
    "inflight": (f"method calls, {IN_FLIGHT} in flight", calls_in_flight),
    "signal-1": ("one signal to 1 subscriber", signal_fanout(1)),
    "signal-10": ("one signal to 10 subscribers", signal_fanout(10)),
    "signal-100": ("one signal to 100 subscribers", signal_fanout(100)),
    "payload-1MiB": ("1 MiB 'ay' call + empty reply, one at a time", payload_calls(1 * MiB)),
    "payload-16MiB": ("16 MiB 'ay' call + empty reply, one at a time", payload_calls(16 * MiB)),
    "churn": ("connect + auth + Hello + disconnect", connection_churn),
    "idle": (f"idle connections, Hello + {MATCHES_PER_IDLE_CONNECTION} match rules each", idle_memory),
    "start": ("exec to the address printed (busd/dbus-daemon --session), and RSS then; the bare "
              "interpreter, and with busd's runtime, beside the Python buses", start_to_address),
}


def better(figure: str) -> str:
    """Which way a figure should go for the bus: "higher", "lower", or "-" for context figures."""
    if figure.startswith(("client", "everything", "interpreter")) or "busy" in figure:
        return "-"  # about the load generator, the CPU split or the interpreter, not a merit of the bus
    if any(word in figure for word in ("latency", "CPU/", "RSS", "Rss", "start to")):
        return "lower"
    return "higher"


# --- running ---------------------------------------------------------------------------------

@dataclass
class CpuPlan:
    """Which CPUs the daemon and the clients run on; None means not pinned."""

    daemon: set[int] | None
    clients: set[int] | None

    def describe(self) -> str:
        if self.daemon is None:
            return "not pinned: the daemon and the client processes share all CPUs"
        return (f"daemon pinned to CPU {_cpus(self.daemon)}; client processes (one per role: caller and "
                f"service, emitter and subscribers, churner, holder) pinned to CPU {_cpus(self.clients)}")


def _cpus(cpus: set[int] | None) -> str:
    return ",".join(str(c) for c in sorted(cpus or ()))


def plan_cpus(pin: bool) -> CpuPlan:
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return CpuPlan(None, None)
    return CpuPlan({cpus[0]}, set(cpus[1:]))


class Harness:
    """Starts daemons (pinned, stderr to a log), runs workloads, keeps the figures."""

    def __init__(self, buses: list[str], budget: Budget, plan: CpuPlan, log: Callable[[str], None],
                 profile_dir: str | None = None) -> None:
        self.buses = buses
        self.profile_dir = profile_dir  # --profile: busd's runs under py-spy, stacks kept here
        self.profiles: dict[str, pyspy.Profile] = {}
        self.budget = budget
        self.plan = plan
        self.log = log
        self.logdir = tempfile.mkdtemp(prefix="bench-bus-")
        self.results: dict[str, dict[str, list[dict[str, float]]]] = {}
        self.cpu_splits: dict[str, dict[str, list[str]]] = {}
        self.failures: dict[str, dict[str, str]] = {}
        self.skipped: dict[str, str] = {}
        self.not_applicable: dict[str, dict[str, str]] = {}  # workload -> bus -> why it cannot run there
        if plan.clients is not None:
            os.sched_setaffinity(0, plan.clients)  # forked client processes inherit this

    def start(self, kind: str, label: str) -> RunningBus:
        """Start a daemon on the daemon CPU with its stderr in a log file."""
        log_path = self._log_path(kind, label)
        saved_stderr = os.dup(2)
        try:
            with open(log_path, "w") as log_file:
                os.dup2(log_file.fileno(), 2)
            if self.plan.daemon is not None:
                os.sched_setaffinity(0, self.plan.daemon)
            # The bus's own temporary directory goes under ours, so nothing is left behind
            # even when a daemon fails half-way through starting.
            tempfile.tempdir = self.logdir
            if kind == "dbus-broker":
                return start_broker(extra_config=SESSION_LIMITS)
            if kind == NULL_BUS:
                return start_null_bus()
            return start_bus(kind, extra_config=SESSION_LIMITS)
        except Exception as exc:
            raise WorkloadError(f"{kind} did not start: {exc}; {self._log_tail(log_path)}") from None
        finally:
            tempfile.tempdir = None
            if self.plan.clients is not None:
                os.sched_setaffinity(0, self.plan.clients)
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)

    def _log_path(self, kind: str, label: str) -> str:
        return os.path.join(self.logdir, f"{kind}-{label}.log")

    def _log_tail(self, path: str) -> str:
        """The end of a daemon's log, for error messages (the logs themselves go with the run)."""
        try:
            with open(path) as f:
                lines = [line.strip() for line in f if line.strip()]
        except OSError:
            lines = []
        return f"its log ends: {' | '.join(lines[-3:])}" if lines else "it logged nothing"

    def probe(self) -> None:
        """Drop, with a clear line, every bus that cannot start at all."""
        for kind in list(self.buses):
            try:
                self.start(kind, "probe").stop()
            except WorkloadError as exc:
                self.skipped[kind] = str(exc)
                self.buses.remove(kind)
                self.log(f"skipping {kind}: {exc}")

    def run(self, names: list[str], repeat: int) -> None:
        for round_number in range(repeat):
            for name in names:
                for kind in self.buses:  # alternate: each workload on every bus before the next
                    self.run_one(name, kind, round_number)

    def run_one(self, name: str, kind: str, round_number: int) -> None:
        _, workload = WORKLOADS[name]
        if kind == NULL_BUS and name not in NULL_BUS_WORKLOADS:
            self.not_run(name, kind, "the null bus answers a connection's handshake and Hello, nothing else: "
                                     "it is the floor of churn only")
            return
        if name in SELF_STARTING:
            self.run_self_starting(name, kind, round_number)
            return
        try:
            bus = self.start(kind, name)
        except WorkloadError as exc:
            self.failures.setdefault(name, {})[kind] = str(exc)
            self.log(f"{name} on {kind} failed: {exc}")
            return
        recorder = None
        if self.profile_dir is not None and kind == "busd":
            stacks = os.path.join(self.profile_dir, f"{name}-{round_number + 1}.txt")
            recorder = pyspy.Recorder(bus.pid, stacks)
        try:
            outcome = workload(bus, self.budget)
            if recorder is not None:
                recorder.stop()
                if os.path.exists(recorder.output):
                    self.profiles.setdefault(name, pyspy.Profile()).add_file(recorder.output, REPO + os.sep)
                recorder = None
            if bus.process.poll() is not None:
                raise WorkloadError(f"{kind} exited (status {bus.process.returncode}) during the workload")
        except (WorkloadError, OSError) as exc:
            reason = f"{exc}; {kind}'s {self._log_tail(self._log_path(kind, name))}"
            self.failures.setdefault(name, {})[kind] = reason
            self.log(f"{name} on {kind} failed: {reason}")
            return
        finally:
            if recorder is not None:
                recorder.stop()
            bus.stop()
        self.record(name, kind, round_number, outcome)

    def run_self_starting(self, name: str, kind: str, round_number: int) -> None:
        try:
            outcome = SELF_STARTING[name](kind, self.budget, self.plan)
        except NotApplicable as exc:
            self.not_run(name, kind, str(exc))
            return
        except (WorkloadError, OSError) as exc:
            self.failures.setdefault(name, {})[kind] = str(exc)
            self.log(f"{name} on {kind} failed: {exc}")
            return
        self.record(name, kind, round_number, outcome)

    def not_run(self, name: str, kind: str, why: str) -> None:
        """`name` cannot run on `kind` at all: said once, not counted as a failure."""
        if kind not in self.not_applicable.get(name, {}):
            self.not_applicable.setdefault(name, {})[kind] = why
            self.log(f"{name} on {kind} skipped: {why}")

    def record(self, name: str, kind: str, round_number: int, outcome: Outcome) -> None:
        self.results.setdefault(name, {}).setdefault(kind, []).append(outcome.figures)
        if outcome.cpu_split:
            self.cpu_splits.setdefault(name, {}).setdefault(kind, []).append(outcome.cpu_split)
        figure, value = next(iter(outcome.figures.items()))
        split = f" (busy, % of a CPU: {outcome.cpu_split})" if outcome.cpu_split else ""
        self.log(f"{name} on {kind}, round {round_number + 1}: {figure} = {value:,.1f}{split}")

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per workload, per bus, per figure: the median over the rounds."""
        merged: dict[str, dict[str, dict[str, float]]] = {}
        for name, by_bus in self.results.items():
            for kind, rounds in by_bus.items():
                merged.setdefault(name, {})[kind] = {
                    figure: statistics.median(r[figure] for r in rounds) for figure in rounds[0]}
        return merged

    def cleanup(self) -> None:
        shutil.rmtree(self.logdir, ignore_errors=True)


def format_table(summary: dict, names: list[str], buses: list[str]) -> str:
    """One row per figure, a column per bus, then the first bus's figure over each other bus's."""
    ratio_titles = [f"{buses[0]}/{other}" for other in buses[1:]]
    header = ["workload", "figure", *buses, *ratio_titles, "better"]
    rows = [header]
    for name in names:
        by_bus = summary.get(name, {})
        figures = next((by_bus[k] for k in buses if k in by_bus), None)
        if figures is None:
            continue
        for figure in figures:
            values = [by_bus.get(kind, {}).get(figure) for kind in buses]
            row = [name, figure, *(_number(v) for v in values)]
            first = values[0]
            for other in values[1:]:
                row.append(f"{first / other:.2f}" if first is not None and other else "-")
            row.append(better(figure))
            rows.append(row)
            name = ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def machine_description(plan: CpuPlan) -> dict[str, str]:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": f"{model}, {os.cpu_count()} CPUs", "kernel": platform.release(),
            "python": platform.python_version(), "dbus-daemon": _first_line(["dbus-daemon", "--version"]),
            "dbus-broker": _first_line(["dbus-broker", "--version"]), "cpu split": plan.describe()}


def _first_line(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return f"{argv[0]} not found"


def write_bytecode() -> str:
    """Write busd's .pyc files, as `pip install` does, and say so for the machine lines.

    An installed busd starts from bytecode; a checkout run with PYTHONDONTWRITEBYTECODE set (as on
    these machines), or never imported before, would compile every module of busd at each start,
    about as long again as the start itself, and keep the compiler's memory.
    """
    import compileall

    written = compileall.compile_dir(os.path.join(REPO, "busd"), quiet=1)
    return "busd's .pyc files written, as pip writes them on install" if written else \
        "busd's .pyc files could not all be written: its starts include compiling its sources"


def raise_fd_limit() -> None:
    """1,000 idle connections need more descriptors than the usual soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def select_workloads(only: list[str] | None) -> list[str]:
    if not only:
        return list(WORKLOADS)

    def picks(pick: str, name: str) -> bool:
        return pick in (name, name.partition("-")[0])

    chosen = [name for name in WORKLOADS if any(picks(pick, name) for pick in only)]
    unknown = [pick for pick in only if not any(picks(pick, name) for name in WORKLOADS)]
    if unknown:
        raise SystemExit(f"unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="workloads: " + "; ".join(f"{n}: {d}" for n, (d, _) in WORKLOADS.items()))
    parser.add_argument("--buses", default="busd,dbus-daemon,dbus-broker",
                        help="comma-separated bus kinds; the first is compared with each other one "
                             "(default: busd,dbus-daemon,dbus-broker; dbus-broker needs root and Debian's "
                             "dbus-broker package, and is skipped with a line saying why when it cannot run; "
                             "null-bus, benchmarks/null_bus.py, is the floor of churn for a Python daemon)")
    parser.add_argument("--quick", action="store_true", help="short runs: the whole thing in seconds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--only", nargs="+", metavar="WORKLOAD",
                        help="run only these workloads; a family name picks all of it, e.g. 'signal'")
    parser.add_argument("--seconds", type=float, help="time budget per workload per bus (default 3, quick 0.4)")
    parser.add_argument("--idle-connections", type=int, help="connections for the idle workload (default 1000)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds to run; figures are the median (default 1)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the daemon and the clients to CPUs")
    parser.add_argument("--profile", metavar="DIR",
                        help="record busd's runs with py-spy (stacks kept in DIR) and print where its CPU went, "
                             "by module; the ledger's share is the per-user accounting's cost. Sampling "
                             "perturbs the figures")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = QUICK if args.quick else FULL
    if args.seconds is not None:
        budget = replace(budget, seconds=args.seconds)
    if args.idle_connections is not None:
        budget = replace(budget, idle_connections=args.idle_connections)
    names = select_workloads(args.only)
    buses = [kind.strip() for kind in args.buses.split(",") if kind.strip()]
    # `python -m busd` must find the package even when the repository is not installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    raise_fd_limit()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    plan = plan_cpus(not args.no_pin)
    machine = machine_description(plan)
    if any(kind in PYTHON_BUSES for kind in buses):
        machine["bytecode"] = write_bytecode()
    for key, value in machine.items():
        log(f"{key}: {value}")
    if args.profile is not None:
        if not pyspy.available():
            log("--profile needs py-spy: python3 -m pip install py-spy (the 'bench' extra)")
            return 2
        os.makedirs(args.profile, exist_ok=True)
    harness = Harness(buses, budget, plan, log, args.profile)
    try:
        harness.probe()
        if not harness.buses:
            log("no bus could start; nothing to measure")
            return 1
        harness.run(names, max(1, args.repeat))
    finally:
        harness.cleanup()
    summary = harness.summary()
    if args.json:
        print(json.dumps({"machine": machine, "budget": asdict(budget), "buses": harness.buses,
                          "skipped": harness.skipped, "failures": harness.failures,
                          "not_applicable": harness.not_applicable,
                          "results": summary, "cpu_split": harness.cpu_splits}, indent=2, ensure_ascii=False))
    else:
        print(format_table(summary, names, harness.buses))
        saturated = [f"{name} on {kind}" for name, by_bus in harness.cpu_splits.items()
                     for kind, splits in by_bus.items()
                     if any(CLIENTS_SATURATED in s or CLIENTS_CLOSE_BEHIND in s for s in splits)]
        if saturated:
            print(f"clients reached {SATURATED:.0f}% busy (see the CPU split on stderr) in: {', '.join(saturated)}")
        elif harness.cpu_splits:
            print(f"clients never saturated: no client process, nor the client CPUs together, "
                  f"reached {SATURATED:.0f}% busy")
        for name, by_bus in harness.failures.items():
            for kind, reason in by_bus.items():
                print(f"{name} on {kind} failed: {reason}")
        for kind, reason in harness.skipped.items():
            print(f"{kind} skipped: {reason}")
        for name, by_bus in harness.not_applicable.items():
            for kind, reason in by_bus.items():
                print(f"{name} on {kind} skipped: {reason}")
    for name, profile in harness.profiles.items():
        log(f"busd's CPU in {name} (py-spy, all rounds):\n{profile.table()}")
    return 1 if harness.failures else 0


if __name__ == "__main__":
    sys.exit(main())
