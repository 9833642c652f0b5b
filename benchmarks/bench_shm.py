#!/usr/bin/env python3
"""MB/s of a payload handed to another process through a sealed SharedBuffer, against the same bytes as `ay`.

    python3 benchmarks/bench_shm.py [--buses busd,dbus-daemon] [--sizes 65536,1048576,16777216]
                                    [--seconds 0.5] [--json]

A helper process (busd_client, dbus-fast) serves two methods that read every
byte they are given (zlib.crc32) and return the checksum, so each side does
the work a real receiver would:

  ay           TakeBytes(ay): the payload travels in the message, through the bus
  buffer/new   TakeBuffer(h): a SharedBuffer made from the payload for each call
               (one copy into a memfd, sealed), only its fd travels
  buffer/once  TakeBuffer(h): one SharedBuffer made before timing, sent each call
               (an image shared once, shown many times)

Calls are sequential; each variant runs for --seconds per size and bus and
reports payload MB/s (10^6 bytes) of wall time.  Timings vary with the load of
the machine: compare columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import zlib
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(REPO, "tests"), os.path.join(REPO, "clients")]

from buses import start_bus  # noqa: E402

import busd_client  # noqa: E402
from busd_client import Interface, SharedBuffer, UInt32, method  # noqa: E402

HELPER_NAME = "dev.busd.BenchShm"
PATH = "/dev/busd/BenchShm"
VARIANTS = ("ay", "buffer/new", "buffer/once")


class BenchShm1(Interface, name="dev.busd.BenchShm1"):
    @method()
    def TakeBytes(self, payload: bytes) -> UInt32:
        return zlib.crc32(payload)

    @method()
    def TakeBuffer(self, payload: SharedBuffer) -> UInt32:
        with payload:
            return zlib.crc32(payload.view)


async def helper() -> None:
    async with await busd_client.connect() as bus:
        bus.export(PATH, BenchShm1())
        await bus.request_name(HELPER_NAME, do_not_queue=True)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def measure(address: str, sizes: list[int], seconds: float) -> dict[int, dict[str, float]]:
    """Payload MB/s of each variant at each size."""
    results: dict[int, dict[str, float]] = {}
    async with await busd_client.connect(address) as bus:
        remote = await bus.proxy(HELPER_NAME, PATH, BenchShm1)
        for size in sizes:
            payload = os.urandom(size)
            expected = zlib.crc32(payload)
            once = SharedBuffer(payload)

            async def call(variant: str) -> int:
                if variant == "ay":
                    return await remote.TakeBytes(payload)
                if variant == "buffer/new":
                    with SharedBuffer(payload) as fresh:
                        return await remote.TakeBuffer(fresh)
                return await remote.TakeBuffer(once)

            results[size] = {}
            for variant in VARIANTS:
                if await call(variant) != expected:  # warm-up, and a check that the bytes arrived intact
                    raise RuntimeError(f"{variant}: the helper read different bytes")
                calls = 0
                started = time.perf_counter()
                while (elapsed := time.perf_counter() - started) < seconds:
                    await call(variant)
                    calls += 1
                results[size][variant] = size * calls / elapsed / 1e6
            once.close()
    return results


def run_on(kind: str, sizes: list[int], seconds: float) -> dict[int, dict[str, float]]:
    bus = start_bus(kind)
    helper_process = None
    try:
        env = dict(bus.client_env(), BUSD_CLIENT_BACKEND="dbus_fast", PYTHONPATH=os.path.join(REPO, "clients"))
        helper_process = subprocess.Popen([sys.executable, __file__, "--helper"], env=env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert helper_process.stdout is not None
        if helper_process.stdout.readline().strip() != "ready":
            raise RuntimeError("the helper did not start")
        return asyncio.run(measure(bus.address, sizes, seconds))
    finally:
        if helper_process is not None:
            helper_process.communicate(timeout=30)  # closing stdin ends it
        bus.stop()


def size_label(size: int) -> str:
    return f"{size // 2**20} MiB" if size >= 2**20 else f"{size // 2**10} KiB"


def print_table(report: dict[str, dict[int, dict[str, float]]]) -> None:
    header = f"| {'payload':<8} | {'bus':<11} | " + " | ".join(f"{v + ' MB/s':>16}" for v in VARIANTS) + \
             " | buffer/once ÷ ay |"
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    sizes = sorted({size for by_size in report.values() for size in by_size})
    for size in sizes:
        for kind, by_size in report.items():
            figures = by_size[size]
            cells = " | ".join(f"{figures[v]:>16,.0f}" for v in VARIANTS)
            print(f"| {size_label(size):<8} | {kind:<11} | {cells} | {figures['buffer/once'] / figures['ay']:>15.1f}x |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buses", default="busd,dbus-daemon")
    parser.add_argument("--sizes", default="65536,1048576,16777216", help="payload sizes in bytes")
    parser.add_argument("--seconds", type=float, default=0.5, help="time per variant, size and bus")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument("--helper", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.helper:
        busd_client.run_coroutine(helper())
        return 0
    sizes = [int(size) for size in options.sizes.split(",")]
    report: dict[str, Any] = {kind: run_on(kind, sizes, options.seconds) for kind in options.buses.split(",")}
    if options.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
