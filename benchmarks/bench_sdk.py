"""Benchmark the busd_client SDK against plain dbus-next / dbus-fast on the same bus, and print the ratios.

    python3 benchmarks/bench_sdk.py [--bus dbus-daemon|busd] [--backends dbus_fast,dbus_next]
                                    [--signals N] [--calls N] [--repeats N] [--quick] [--json]

Two workloads, each measured in this process while a helper process (always
plain dbus-fast, so it costs the same for every variant) does the other side:

  signals  the helper broadcasts N small signals (us) as fast as the bus takes
           them; this process receives them with plain low-level code (a
           message handler), with the library's own high-level proxy
           (on_<signal>), or with busd_client.connect_signal and a slot.
  calls    N sequential method calls Add(i, i) -> i to the helper: plain
           low-level bus.call(Message), the library's high-level proxy
           (call_add), or a busd_client proxy.

Plain low-level code and busd_client each run with fd passing negotiated
(busd_client's default, "+fd") and without it ("no-fd"): negotiating it makes
the libraries receive every message with recvmsg, which costs by itself.  Variants take turns --repeats times; each reports its
best rate (operations per second of wall time) and its lowest CPU time per
operation in this process, which is what the SDK adds.  The ratio columns
divide the SDK's figures by plain low-level and high-level code on the same
backend.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(REPO, "tests"), os.path.join(REPO, "clients")]

from buses import start_bus  # noqa: E402

import busd_client  # noqa: E402

HELPER_NAME = "dev.busd.BenchSdk"
PATH = "/dev/busd/BenchSdk"
INTERFACE = "dev.busd.BenchSdk1"
INTROSPECTION = f"""<node><interface name="{INTERFACE}">
  <method name="Add"><arg type="i" direction="in"/><arg type="i" direction="in"/><arg type="i" direction="out"/></method>
  <signal name="Tick"><arg type="u"/><arg type="s"/></signal>
</interface></node>"""


# -- the helper process: plain dbus-fast ------------------------------------------------

async def helper(address: str, signals: int) -> None:
    """Serve Add, and on "go" lines from stdin broadcast `signals` Ticks then a Done."""
    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_address=address).connect()

    def on_message(message: Any) -> Any:
        if message.message_type == MessageType.METHOD_CALL and message.member == "Add":
            return Message.new_method_return(message, "i", [message.body[0] + message.body[1]])
        if message.message_type == MessageType.METHOD_CALL and message.member == "Introspect":
            return Message.new_method_return(message, "s", [INTROSPECTION])
        return None

    bus.add_message_handler(on_message)
    await bus.request_name(HELPER_NAME)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    ping = Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                   interface="org.freedesktop.DBus.Peer", member="Ping")
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "go":
        for number in range(signals):
            bus.send(Message.new_signal(PATH, INTERFACE, "Tick", "us", [number, "tick"]))
            if number % 128 == 127:
                # Flow control: the library drops the connection if the socket buffer fills
                # (EAGAIN), so wait for the bus to catch up every 128 signals.
                ping.serial = 0
                await bus.call(ping)
        await bus.send(Message.new_signal(PATH, INTERFACE, "Done", "", []))
    bus.disconnect()


class Helper:
    def __init__(self, address: str, signals: int) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--helper", address, str(signals)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "ready"

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=30)


# -- measured variants ---------------------------------------------------------------------

@dataclass
class Result:
    backend: str
    workload: str
    variant: str
    operations: int
    rate: float            # operations per second, wall time
    cpu_us: float          # this process's CPU microseconds per operation


async def measure(run: Callable[[], Awaitable[int]]) -> tuple[float, float]:
    """(operations per second of wall time, this process's CPU microseconds per operation) of one run."""
    wall, cpu = time.perf_counter(), time.process_time()
    operations = await run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return operations / wall, cpu / operations * 1e6


def _library(backend: str) -> tuple[Any, Any]:
    return importlib.import_module(backend), importlib.import_module(f"{backend}.aio")


async def signal_variants(backend: str, address: str, helper: Helper, count: int) -> dict[str, Callable[[], Awaitable[int]]]:
    library, aio = _library(backend)
    rule = f"type='signal',sender='{HELPER_NAME}',path='{PATH}',interface='{INTERFACE}'"

    async def plain_low_level(unix_fds: bool = False) -> int:
        bus = await aio.MessageBus(bus_address=address, negotiate_unix_fd=unix_fds).connect()
        done = asyncio.get_running_loop().create_future()
        received = 0

        def on_message(message: Any) -> None:
            nonlocal received
            if message.message_type == library.MessageType.SIGNAL and message.interface == INTERFACE:
                if message.member == "Tick":
                    number, text = message.body
                    received += 1
                elif not done.done():
                    done.set_result(None)

        bus.add_message_handler(on_message)
        await bus.call(library.Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                       interface="org.freedesktop.DBus", member="AddMatch",
                                       signature="s", body=[rule]))
        helper.go()
        await done
        bus.disconnect()
        return received

    async def plain_high_level() -> int:
        bus = await aio.MessageBus(bus_address=address).connect()
        interface = bus.get_proxy_object(HELPER_NAME, PATH, INTROSPECTION).get_interface(INTERFACE)
        done = asyncio.get_running_loop().create_future()
        received = 0

        def on_tick(number: int, text: str) -> None:
            nonlocal received
            received += 1

        def on_done(message: Any) -> None:   # the proxy knows only Tick; Done comes the low-level way
            if message.message_type == library.MessageType.SIGNAL and message.member == "Done" \
                    and not done.done():
                done.set_result(None)

        interface.on_tick(on_tick)
        bus.add_message_handler(on_done)
        # Also a round trip after the proxy's own AddMatch, so both rules are in place.
        await bus.call(library.Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                       interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                                       body=[f"type='signal',interface='{INTERFACE}',member='Done'"]))
        helper.go()
        await done
        bus.disconnect()
        return received

    async def sdk(unix_fds: bool = True) -> int:
        async with await busd_client.connect(address, backend=backend, unix_fds=unix_fds) as bus:
            done = asyncio.Event()
            received = 0

            def on_tick(number: int, text: str) -> None:   # the slot
                nonlocal received
                received += 1

            async with await bus.connect_signal(HELPER_NAME, PATH, INTERFACE, "Tick", on_tick), \
                    await bus.connect_signal(HELPER_NAME, PATH, INTERFACE, "Done", done.set):
                helper.go()
                await done.wait()
            return received

    return {"plain low-level": plain_low_level, "plain low-level +fd": lambda: plain_low_level(unix_fds=True),
            "plain high-level": plain_high_level, "busd_client": sdk,
            "busd_client no-fd": lambda: sdk(unix_fds=False)}


async def call_variants(backend: str, address: str, count: int) -> dict[str, Callable[[], Awaitable[int]]]:
    library, aio = _library(backend)

    async def plain_low_level(unix_fds: bool = False) -> int:
        bus = await aio.MessageBus(bus_address=address, negotiate_unix_fd=unix_fds).connect()
        for number in range(count):
            reply = await bus.call(library.Message(destination=HELPER_NAME, path=PATH, interface=INTERFACE,
                                                   member="Add", signature="ii", body=[number, 1]))
            assert reply.body[0] == number + 1
        bus.disconnect()
        return count

    async def plain_high_level() -> int:
        bus = await aio.MessageBus(bus_address=address).connect()
        interface = bus.get_proxy_object(HELPER_NAME, PATH, INTROSPECTION).get_interface(INTERFACE)
        for number in range(count):
            assert await interface.call_add(number, 1) == number + 1
        bus.disconnect()
        return count

    async def sdk(unix_fds: bool = True) -> int:
        async with await busd_client.connect(address, backend=backend, unix_fds=unix_fds) as bus:
            remote = await bus.proxy(HELPER_NAME, PATH)
            for number in range(count):
                assert await remote.Add(number, 1) == number + 1
        return count

    return {"plain low-level": plain_low_level, "plain low-level +fd": lambda: plain_low_level(unix_fds=True),
            "plain high-level": plain_high_level, "busd_client": sdk,
            "busd_client no-fd": lambda: sdk(unix_fds=False)}


async def benchmark(options: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    bus = start_bus(options.bus)
    try:
        helper = Helper(bus.address, options.signals)
        try:
            for backend in options.backends:
                for workload, variants, count in (
                        ("signals", await signal_variants(backend, bus.address, helper, options.signals),
                         options.signals),
                        ("calls", await call_variants(backend, bus.address, options.calls), options.calls)):
                    # Variants take turns, so that load from elsewhere on the machine hits them alike;
                    # each keeps its best rate and its lowest CPU cost.
                    runs: dict[str, list[tuple[float, float]]] = {variant: [] for variant in variants}
                    for _ in range(options.repeats):
                        for variant, run in variants.items():
                            runs[variant].append(await measure(run))
                    for variant, measured in runs.items():
                        results.append(Result(backend, workload, variant, count,
                                              max(rate for rate, _ in measured),
                                              min(cpu for _, cpu in measured)))
        finally:
            helper.stop()
    finally:
        bus.stop()
    return results


def report(results: list[Result], bus_kind: str) -> str:
    lines = [f"busd_client vs plain libraries on {bus_kind} (rate: best wall-clock ops/s; cpu: this "
             f"process's lowest µs per op; ratio = busd_client / plain)",
             "+fd: fd passing negotiated (busd_client's default); no-fd: connect(unix_fds=False); "
             "'vs low' compares with plain low-level code with the same fd setting",
             f"{'backend':<10} {'workload':<8} {'variant':<19} {'rate/s':>9} {'cpu µs':>8}"
             f" {'rate vs low':>12} {'cpu vs low':>11} {'rate vs high':>13} {'cpu vs high':>12}"]
    by_key = {(r.backend, r.workload, r.variant): r for r in results}
    for result in results:
        line = (f"{result.backend:<10} {result.workload:<8} {result.variant:<19} "
                f"{result.rate:>9.0f} {result.cpu_us:>8.1f}")
        if result.variant.startswith("busd_client"):
            # Like for like: with fd passing negotiated, or without.
            plain = "plain low-level" if result.variant.endswith("no-fd") else "plain low-level +fd"
            low = by_key[(result.backend, result.workload, plain)]
            high = by_key[(result.backend, result.workload, "plain high-level")]
            line += (f" {result.rate / low.rate:>12.2f} {result.cpu_us / low.cpu_us:>11.2f}"
                     f" {result.rate / high.rate:>13.2f} {result.cpu_us / high.cpu_us:>12.2f}")
        lines.append(line)
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--helper":
        asyncio.run(helper(sys.argv[2], int(sys.argv[3])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bus", default="dbus-daemon", choices=["dbus-daemon", "busd"])
    parser.add_argument("--backends", default="dbus_fast,dbus_next",
                        type=lambda text: [name.strip() for name in text.split(",") if name.strip()])
    parser.add_argument("--signals", type=int, default=20000)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a few seconds: 3000 signals, 500 calls, 1 run each")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    options = parser.parse_args()
    if options.quick:
        options.signals, options.calls, options.repeats = 3000, 500, 1
    results = asyncio.run(benchmark(options))
    if options.json:
        print(json.dumps([asdict(result) for result in results], indent=2))
    else:
        print(report(results, options.bus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
