#!/usr/bin/env python3
"""Example subscriber: connects dev.busd.Example1's Tick signal to a slot, and keeps receiving when the service restarts.

    python3 clients/examples/subscriber.py [--ticks N]

Prints one line per event: "subscribed", "appeared <name> <owner>",
"greeting <text>", "tick <count> from <sender>", "vanished <name>".
Stops after N ticks (default: never) or on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal as signals
import sys

import busd_client
from busd_client import Bus, MessageInfo

NAME = "dev.busd.Example1"
PATH = "/dev/busd/Example1"


async def greet(bus: Bus) -> None:
    example = await bus.proxy(NAME, PATH)
    print(f"greeting {await example.Greet('subscriber')}", flush=True)


async def subscribe(ticks: int | None) -> int:
    async with await busd_client.connect() as bus:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signals.SIGINT, signals.SIGTERM):
            loop.add_signal_handler(number, stop.set)
        received = 0

        def on_tick(count: int, timestamp: float, info: MessageInfo) -> None:   # the slot
            nonlocal received
            received += 1
            print(f"tick {count} from {info.sender}", flush=True)
            if ticks is not None and received >= ticks:
                stop.set()

        async def on_appeared(name: str, owner: str) -> None:
            print(f"appeared {name} {owner}", flush=True)
            await greet(bus)

        # The subscription names the service by its well-known name, so it
        # follows the name to each new process that owns it.
        async with await bus.connect_signal(NAME, PATH, NAME, "Tick", on_tick):
            with bus.watch_name(NAME, on_appeared, lambda name: print(f"vanished {name}", flush=True)) as watcher:
                await watcher.ready()
                print("subscribed", flush=True)
                await stop.wait()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=None, help="exit after this many ticks")
    options = parser.parse_args()
    return busd_client.run_coroutine(subscribe(options.ticks))


if __name__ == "__main__":
    sys.exit(main())
