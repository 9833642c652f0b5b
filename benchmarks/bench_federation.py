"""Benchmark busd's federation over NATS: calls and signals between nodes, against the same traffic on one bus.

    python3 benchmarks/bench_federation.py [--quick] [--json] [--only seq inflight signal] [--subscribers 1 3]

Two paths for every workload, each on freshly started processes:

  one-bus     both ends on one busd (no NATS at all): the baseline
  federation  a nats-server on loopback and busd nodes on it: the service (or emitter) on node
              `far`, the caller on node `near0`, signal subscribers spread over nodes near0..near2

Workloads: `seq` (one call at a time: calls/s and p50/p99 latency), `inflight` (64 calls
in flight: calls/s), `signal-N` (one emitter, N subscribers: deliveries/s, and signals
lost). The clients are bench_bus.py's raw-socket load generators in separate processes;
daemon CPU counts every busd and the nats-server of the path.
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

import bench_bridge as br  # noqa: E402  (bench_bus's clients with well-known names)
import bench_bus as bb  # noqa: E402  (also puts tests/ on the path)
import rawclient as rc  # noqa: E402
from buses import RunningBus, start_bus  # noqa: E402
from federation_nodes import NatsServer, Node  # noqa: E402

PREFIX = "org.busd.Bench.Fed"
PATHS = ("one-bus", "federation")
QUIET = 2.0  # seconds without a signal after the emitter finished: the rest were lost


def subscribe_counting(pipe: Pipe, address: str, barrier: str) -> None:
    """bench_bridge.subscribe, but a signal NATS dropped does not hang it: it stops QUIET s after the last one."""
    conn = rc.Connection.open(address, timeout=bb.REPLY_TIMEOUT)
    conn.add_match(bb.SIGNAL_RULE)
    # Once this call across is answered, the far node has this node's heartbeat with the rule.
    conn.call(rc.method_call(barrier, bb.BENCH_PATH, bb.BENCH_INTERFACE, "Ping"))
    pipe.send(("ready", None))
    poller = select.epoll()
    poller.register(conn.sock.fileno(), select.EPOLLIN)
    poller.register(pipe.fileno(), select.EPOLLIN)
    counted, expected, last = 0, None, time.monotonic()
    while expected is None or counted < expected:
        events = poller.poll(QUIET if expected is not None else bb.REPLY_TIMEOUT)
        if not events:
            break
        for fd, _ in events:
            if fd == pipe.fileno():
                expected = pipe.recv()
            else:
                got = conn.reader.count()
                if got:
                    counted += got
                    last = time.monotonic()
    pipe.send(("done", {"end": last, "delivered": counted}))


class Setup:
    """The processes of one path: `far` runs the service or emitter, `near` the callers or subscribers."""

    def __init__(self, path: str, near_nodes: int):
        self.nats: NatsServer | None = None
        self.nodes: list[Node] = []
        self.buses: list[RunningBus] = []
        if path == "one-bus":
            bus = start_bus("busd", extra_config=bb.SESSION_LIMITS)
            self.buses.append(bus)
            self.far_address = bus.address
            self.near_addresses = [bus.address] * near_nodes
            return
        self.nats = NatsServer()
        pattern = (f"{PREFIX}.*",)
        for name in ["far", *(f"near{i}" for i in range(near_nodes))]:
            self.nodes.append(Node(self.nats, name, federation="bench", imports=pattern, exports=pattern))
        self.far_address = self.nodes[0].address
        self.near_addresses = [node.address for node in self.nodes[1:]]

    @property
    def pids(self) -> list[int]:
        pids = [bus.process.pid for bus in self.buses] + [node.bus.process.pid for node in self.nodes]
        return pids + ([self.nats.process.pid] if self.nats else [])

    def wait_visible(self, name: str) -> None:
        for address in set(self.near_addresses):
            if address != self.far_address:
                with br.RawClient(address) as client:
                    br.watch_name(client, name)
                    if not client.driver_value("NameHasOwner", "s", [name]):
                        client.wait_for(lambda m: m.is_signal("NameOwnerChanged") and m.body[0] == name
                                        and m.body[2], bb.REPLY_TIMEOUT, f"{name} on a near node")

    def stop(self) -> None:
        for node in self.nodes:
            node.bus.stop()
        for bus in self.buses:
            bus.stop()
        if self.nats is not None:
            self.nats.stop()


@contextmanager
def setup(path: str, near_nodes: int) -> Iterator[Setup]:
    chosen = Setup(path, near_nodes)
    try:
        yield chosen
    finally:
        chosen.stop()


def meter(chosen: Setup, clients: list[int]) -> br.Meter:
    """bench_bridge's meter over every daemon of the path (its 'bridging busd' figure is left out: cpu_figures())."""
    return br.Meter(chosen.pids, clients)


def cpu_figures(measured: br.Meter, per: str, count: float) -> dict[str, float]:
    return {key: value for key, value in measured.figures(per, count).items() if not key.startswith("bridging")}


def calls(window: int):
    def run(chosen: Setup, seconds: float) -> dict[str, float]:
        name = f"{PREFIX}.Service"
        with bb.workers(bb.Worker("service", br.serve_named, chosen.far_address, name)) as (service,):
            service.receive("ready")
            chosen.wait_visible(name)
            with bb.workers(bb.Worker("caller", bb.call_loop, chosen.near_addresses[0], name, window, 0,
                                      1_000_000, seconds)) as (caller,):
                caller.receive("ready")
                measured = meter(chosen, [caller.pid, service.pid])
                measured.start()
                caller.send("go")
                result = caller.receive("done", seconds + bb.REPLY_TIMEOUT)
                measured.stop()
        count = result["calls"]
        figures = {"calls/s": count / result["seconds"]}
        if "p50_us" in result:
            figures["p50 latency (µs)"] = result["p50_us"]
            figures["p99 latency (µs)"] = result["p99_us"]
        return {**figures, **cpu_figures(measured, "call", count)}
    return run


def signals(subscribers: int):
    def run(chosen: Setup, seconds: float) -> dict[str, float]:
        barrier = f"{PREFIX}.Service"
        emitter_name = f"{PREFIX}.Emitter"
        with bb.workers(bb.Worker("service", br.serve_named, chosen.far_address, barrier)) as (service,):
            service.receive("ready")
            chosen.wait_visible(barrier)
            sinks = [bb.Worker(f"subscriber{i}", subscribe_counting,
                               chosen.near_addresses[i % len(chosen.near_addresses)], barrier)
                     for i in range(subscribers)]
            with bb.workers(*sinks):
                for sink in sinks:
                    sink.receive("ready")
                with bb.workers(bb.Worker("emitter", br.emit_named, chosen.far_address, emitter_name,
                                          200_000, seconds)) as (emitter,):
                    emitter.receive("ready")
                    chosen.wait_visible(emitter_name)  # signals cross from owners of exported names only
                    measured = meter(chosen, [emitter.pid, *(sink.pid for sink in sinks)])
                    measured.start()
                    emitter.send("go")
                    emitted = emitter.receive("done", seconds + bb.REPLY_TIMEOUT)
                    for sink in sinks:
                        sink.send(emitted["signals"])
                    counted = [sink.receive("done", bb.REPLY_TIMEOUT + QUIET) for sink in sinks]
                    measured.stop()
        delivered = sum(c["delivered"] for c in counted)
        end = max(c["end"] for c in counted)
        expected = emitted["signals"] * subscribers
        return {"deliveries/s": delivered / max(end - emitted["start"], 1e-9),
                "lost (%)": 100 * (expected - delivered) / expected,
                **cpu_figures(measured, "delivery", max(delivered, 1))}
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.3 s per run instead of 2 s")
    parser.add_argument("--seconds", type=float, help="time budget of each run")
    parser.add_argument("--only", nargs="+", choices=("seq", "inflight", "signal"), default=["seq", "inflight",
                                                                                              "signal"])
    parser.add_argument("--subscribers", nargs="+", type=int, default=[1, 3], help="signal subscribers (N)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--repeat", type=int, default=1, help="rounds; figures are the median")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (0.3 if args.quick else 2.0)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [bb.REPO, os.environ.get("PYTHONPATH")]))
    runs: dict[str, tuple] = {}
    for name in args.only:
        if name == "signal":
            for n in args.subscribers:
                runs[f"signal-{n}"] = (signals(n), min(n, 3))
        else:
            runs[name] = (calls(1 if name == "seq" else bb.IN_FLIGHT), 1)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    failures: list[str] = []
    for _ in range(max(1, args.repeat)):
        for name, (run, near_nodes) in runs.items():
            for path in args.paths:
                try:
                    with setup(path, near_nodes) as chosen:
                        figures = run(chosen, seconds)
                except (bb.WorkloadError, OSError, AssertionError, RuntimeError) as exc:
                    failures.append(f"{name} via {path}: {exc}")
                    print(f"{name} via {path} failed: {exc}", file=sys.stderr, flush=True)
                    continue
                results.setdefault(name, {}).setdefault(path, []).append(figures)
                first, value = next(iter(figures.items()))
                print(f"{name} via {path}: {first} = {value:,.0f}", file=sys.stderr, flush=True)
    summary = {name: {path: {figure: statistics.median(r[figure] for r in rounds) for figure in rounds[0]}
                      for path, rounds in by_path.items()} for name, by_path in results.items()}
    if args.json:
        print(json.dumps({"seconds": seconds, "results": summary, "failures": failures}, indent=2,
                         ensure_ascii=False))
    else:
        table = br.format_table({name: {("direct" if p == "one-bus" else p): f for p, f in by_path.items()}
                                 for name, by_path in summary.items()}, list(runs),
                                ["direct" if p == "one-bus" else p for p in args.paths])
        print(table.replace("direct", "one-bus"))
        for failure in failures:
            print(f"failed: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
