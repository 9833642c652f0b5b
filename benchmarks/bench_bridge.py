"""Benchmark busd's bridge: calls and signals through it, against the same traffic sent directly on the upstream bus.

    python3 benchmarks/bench_bridge.py [--quick] [--json] [--upstream dbus-daemon|busd] [--only seq inflight signal]

Three paths for every workload, each on freshly started daemons:

  direct   both ends on the upstream bus (no busd at all): the baseline
  import   the service (or emitter) upstream, the caller (or subscriber) on a busd bridged to it (--import)
  export   the service (or emitter) on the bridged busd (--export), the caller (or subscriber) upstream

Workloads: `seq` (one call at a time: calls/s and latency), `inflight` (64 calls in
flight: calls/s), `signal` (one emitter, one subscriber: deliveries/s). The clients
are bench_bus.py's raw-socket load generators in separate processes. The table
gives each figure per path and the ratio path/direct; daemon CPU counts both daemons
(upstream and busd) on the bridged paths.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection as Pipe

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_bus as bb  # noqa: E402  (also puts tests/ on the path)
import rawclient as rc  # noqa: E402
from buses import RunningBus, start_bus  # noqa: E402
from busclient import RawClient, watch_name  # noqa: E402

UP = "org.busd.Bench.Up"  # imported by the bridged busd
DOWN = "org.busd.Bench.Down"  # exported by it
PATHS = ("direct", "import", "export")
WORKLOADS = ("seq", "inflight", "signal")
DO_NOT_QUEUE = 4


# --- client processes (bench_bus's loops, with a well-known name: only named services cross) ----

def _own(conn: rc.Connection, name: str) -> None:
    conn.bus_call("RequestName", "su", (name, DO_NOT_QUEUE))


def serve_named(pipe: Pipe, address: str, name: str) -> None:
    """bench_bus.serve_echo under a well-known name: an empty reply to every call."""
    conn = rc.Connection.open(address, timeout=None)
    _own(conn, name)
    pipe.send(("ready", conn.unique_name))
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


def emit_named(pipe: Pipe, address: str, name: str, max_signals: int, seconds: float) -> None:
    """bench_bus.emit_signals from a connection owning `name` (the bridge forwards only named senders)."""
    conn = rc.Connection.open(address, timeout=bb.REPLY_TIMEOUT)
    _own(conn, name)
    template = rc.signal(bb.BENCH_PATH, bb.BENCH_INTERFACE, "Tick", "u", (0,))

    def send_batch(room: int) -> int:
        count = min(bb.SIGNAL_BATCH, room)
        conn.send(conn.batch(template, count))
        return count

    sent, start, _ = bb._timed(pipe, send_batch, max_signals, seconds)
    conn.bus_call("GetId")
    pipe.send(("done", {"signals": sent, "start": start}))


def subscribe(pipe: Pipe, address: str, barrier: str) -> None:
    """One subscriber counting Ticks. Before saying ready it calls `barrier`, a service on the emitter's side:
    once that answers, a subscription the bridge forwarded upstream is in place there."""
    conn = rc.Connection.open(address, timeout=bb.REPLY_TIMEOUT)
    conn.add_match(bb.SIGNAL_RULE)
    conn.call(rc.method_call(barrier, bb.BENCH_PATH, bb.BENCH_INTERFACE, "Ping"))
    pipe.send(("ready", None))
    poller = select.epoll()
    poller.register(conn.sock.fileno(), select.EPOLLIN)
    poller.register(pipe.fileno(), select.EPOLLIN)
    counted, expected, last = 0, None, time.monotonic()
    while expected is None or counted < expected:
        events = poller.poll(bb.REPLY_TIMEOUT)
        if not events:
            raise TimeoutError(f"signals stopped arriving: {counted} of {expected}")
        for fd, _ in events:
            if fd == pipe.fileno():
                expected = pipe.recv()
            else:
                counted += conn.reader.count()
        last = time.monotonic()
    pipe.send(("done", {"end": last, "delivered": counted}))


# --- setting up the buses of one path -----------------------------------------------------------

class Setup:
    """The daemons of one path: `near` is where the caller (or subscriber) connects, `far` the service's."""

    def __init__(self, path: str, upstream_kind: str):
        self.path = path
        self.buses: list[RunningBus] = [start_bus(upstream_kind, extra_config=bb.SESSION_LIMITS)]
        up = self.buses[0]
        if path == "direct":
            self.near = self.far = up
            self.name_prefix = UP
            return
        bridged = start_bus("busd", extra_config=bb.SESSION_LIMITS,
                            args=(f"--upstream={up.address}", f"--import={UP}.*", f"--export={DOWN}.*"))
        self.buses.append(bridged)
        self.near, self.far = (bridged, up) if path == "import" else (up, bridged)
        self.name_prefix = UP if path == "import" else DOWN

    @property
    def pids(self) -> list[int]:
        return [bus.process.pid for bus in self.buses]

    def wait_visible(self, name: str) -> None:
        """Wait until `name`, owned on the far side, has an owner on the near side."""
        with RawClient(self.near.address) as client:
            watch_name(client, name)
            if not client.driver_value("NameHasOwner", "s", [name]):
                client.wait_for(lambda m: m.is_signal("NameOwnerChanged") and m.body[0] == name and m.body[2],
                                bb.REPLY_TIMEOUT, f"{name} on the near side")

    def stop(self) -> None:
        for bus in reversed(self.buses):
            bus.stop()


@contextmanager
def setup(path: str, upstream_kind: str) -> Iterator[Setup]:
    chosen = Setup(path, upstream_kind)
    try:
        yield chosen
    finally:
        chosen.stop()


class Meter:
    """CPU seconds of the daemons and of the clients between start() and stop()."""

    def __init__(self, daemons: list[int], clients: list[int]):
        self.daemons, self.clients = daemons, clients

    def start(self) -> None:
        self._before = [bb.cpu_seconds(pid) for pid in self.daemons + self.clients]
        self._wall = time.monotonic()

    def stop(self) -> None:
        self.wall = time.monotonic() - self._wall
        spent = [bb.cpu_seconds(pid) - before for pid, before in zip(self.daemons + self.clients, self._before)]
        self.daemon_cpu = sum(spent[:len(self.daemons)])
        self.busd_cpu = spent[1] if len(self.daemons) > 1 else 0.0
        self.client_cpu = sum(spent[len(self.daemons):])

    def figures(self, per: str, count: float) -> dict[str, float]:
        figures = {f"daemons CPU/{per} (µs)": self.daemon_cpu / count * 1e6,
                   "daemons busy (% of a CPU)": 100 * self.daemon_cpu / self.wall,
                   "clients busy (% of a CPU)": 100 * self.client_cpu / self.wall}
        if self.busd_cpu:
            figures[f"bridging busd CPU/{per} (µs)"] = self.busd_cpu / count * 1e6
        return figures


# --- workloads ---------------------------------------------------------------------------------

def calls(window: int):
    def run(chosen: Setup, seconds: float) -> dict[str, float]:
        name = f"{chosen.name_prefix}.Service"
        max_calls = 1_000_000
        with bb.workers(bb.Worker("service", serve_named, chosen.far.address, name)) as (service,):
            service.receive("ready")
            chosen.wait_visible(name)
            with bb.workers(bb.Worker("caller", bb.call_loop, chosen.near.address, name, window, 0,
                                      max_calls, seconds)) as (caller,):
                caller.receive("ready")
                meter = Meter(chosen.pids, [caller.pid, service.pid])
                meter.start()
                caller.send("go")
                result = caller.receive("done", seconds + bb.REPLY_TIMEOUT)
                meter.stop()
        count = result["calls"]
        figures = {"calls/s": count / result["seconds"]}
        if "p50_us" in result:
            figures["p50 latency (µs)"] = result["p50_us"]
            figures["p99 latency (µs)"] = result["p99_us"]
        return {**figures, **meter.figures("call", count)}
    return run


def signals(chosen: Setup, seconds: float) -> dict[str, float]:
    barrier = f"{chosen.name_prefix}.Service"
    emitter_name = f"{chosen.name_prefix}.Emitter"
    with bb.workers(bb.Worker("service", serve_named, chosen.far.address, barrier)) as (service,):
        service.receive("ready")
        chosen.wait_visible(barrier)
        with bb.workers(bb.Worker("subscriber", subscribe, chosen.near.address, barrier)) as (sink,):
            sink.receive("ready")
            with bb.workers(bb.Worker("emitter", emit_named, chosen.far.address, emitter_name, 5_000_000,
                                      seconds)) as (emitter,):
                emitter.receive("ready")
                chosen.wait_visible(emitter_name)  # the bridge forwards signals of imported names only
                meter = Meter(chosen.pids, [emitter.pid, sink.pid])
                meter.start()
                emitter.send("go")
                emitted = emitter.receive("done", seconds + bb.REPLY_TIMEOUT)
                sink.send(emitted["signals"])
                counted = sink.receive("done", bb.REPLY_TIMEOUT)
                meter.stop()
    delivered = counted["delivered"]
    return {"deliveries/s": delivered / (counted["end"] - emitted["start"]), **meter.figures("delivery", delivered)}


RUNS = {"seq": calls(1), "inflight": calls(bb.IN_FLIGHT), "signal": signals}


def better(figure: str) -> str:
    if "busy" in figure:
        return "-"
    return "lower" if "latency" in figure or "CPU/" in figure or "lost" in figure else "higher"


def format_table(summary: dict, names: list[str], paths: list[str]) -> str:
    ratios = [path for path in paths if path != "direct" and "direct" in paths]
    header = ["workload", "figure", *paths, *(f"{p}/direct" for p in ratios), "better"]
    rows = [header]
    for name in names:
        by_path = summary.get(name, {})
        figures: list[str] = []
        for path in paths:
            figures += [f for f in by_path.get(path, {}) if f not in figures]
        label = name
        for figure in figures:
            values = [by_path.get(path, {}).get(figure) for path in paths]
            base = by_path.get("direct", {}).get(figure)
            cells = [bb._number(v) for v in values]
            for path in ratios:
                value = by_path.get(path, {}).get(figure)
                cells.append(f"{value / base:.2f}" if value is not None and base else "-")
            rows.append([label, figure, *cells, better(figure)])
            label = ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     .rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.3 s per run instead of 2 s")
    parser.add_argument("--seconds", type=float, help="time budget of each run")
    parser.add_argument("--upstream", default="dbus-daemon", choices=("dbus-daemon", "busd"),
                        help="the upstream bus (default dbus-daemon)")
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--repeat", type=int, default=1, help="rounds; figures are the median")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (0.3 if args.quick else 2.0)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [bb.REPO, os.environ.get("PYTHONPATH")]))
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    failures: list[str] = []
    for _ in range(max(1, args.repeat)):
        for name in args.only:
            for path in args.paths:
                try:
                    with setup(path, args.upstream) as chosen:
                        figures = RUNS[name](chosen, seconds)
                except (bb.WorkloadError, OSError, AssertionError) as exc:
                    failures.append(f"{name} via {path}: {exc}")
                    print(f"{name} via {path} failed: {exc}", file=sys.stderr, flush=True)
                    continue
                results.setdefault(name, {}).setdefault(path, []).append(figures)
                first, value = next(iter(figures.items()))
                print(f"{name} via {path}: {first} = {value:,.0f}", file=sys.stderr, flush=True)
    summary = {name: {path: {figure: statistics.median(r[figure] for r in rounds) for figure in rounds[0]}
                      for path, rounds in by_path.items()} for name, by_path in results.items()}
    if args.json:
        print(json.dumps({"upstream": args.upstream, "seconds": seconds, "results": summary,
                          "failures": failures}, indent=2, ensure_ascii=False))
    else:
        print(format_table(summary, args.only, args.paths))
        for failure in failures:
            print(f"failed: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
