#!/usr/bin/env python3
"""Example service: exports dev.busd.Example1 (a method, properties, a periodic signal) on the session bus.

    python3 clients/examples/example_service.py [--interval SECONDS]

It prints "ready <unique name>" once it owns dev.busd.Example1, and runs
until SIGINT/SIGTERM.  The class is checked against
interfaces/dev.busd.Example1.xml when it is defined.
"""

from __future__ import annotations

import argparse
import asyncio
import signal as signals
import sys
import time
from pathlib import Path

from pydantic import BaseModel

import busd_client
from busd_client import Interface, RequestNameReply, UInt32, dbus_property, method, signal
from busd_client.errors import InvalidArgs

NAME = "dev.busd.Example1"
PATH = "/dev/busd/Example1"
XML = Path(__file__).resolve().parents[2] / "interfaces" / "dev.busd.Example1.xml"


class Status(BaseModel):
    """Sent as the D-Bus struct (uds)."""

    count: UInt32
    interval: float
    label: str


class Example1(Interface, name=NAME, xml=XML):
    def __init__(self, interval: float, label: str) -> None:
        self._interval = interval
        self._count = 0
        self.label = label
        self.interval_changed = asyncio.Event()

    @method(out_names=("greeting",))
    def Greet(self, who: str) -> str:
        if not who:
            raise InvalidArgs("say who to greet")
        return f"Hello, {who}!"

    @method(out_names=("status",))
    def GetStatus(self) -> Status:
        return Status(count=self._count, interval=self._interval, label=self.label)

    @signal()
    def Tick(self, count: UInt32, timestamp: float) -> None: ...

    @dbus_property()
    def Interval(self) -> float:
        return self._interval

    @Interval.setter
    def Interval(self, value: float) -> None:
        if value <= 0:
            raise InvalidArgs(f"Interval must be positive, got {value}")
        self._interval = value
        self.interval_changed.set()

    @dbus_property(access="read")  # settable from Python only; each change is announced
    def Count(self) -> UInt32:
        return self._count

    @Count.setter
    def Count(self, value: int) -> None:
        self._count = value


async def serve(interval: float, label: str) -> int:
    async with await busd_client.connect() as bus:
        example = Example1(interval, label)
        bus.export(PATH, example)
        reply = await bus.request_name(NAME, do_not_queue=True)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            print(f"{NAME} is already owned by {await bus.get_name_owner(NAME)}", file=sys.stderr)
            return 1
        print(f"ready {bus.unique_name}", flush=True)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signals.SIGINT, signals.SIGTERM):
            loop.add_signal_handler(number, stop.set)
        bus_gone = asyncio.ensure_future(bus.wait_closed())
        while not stop.is_set():
            example.interval_changed.clear()
            waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(example.interval_changed.wait())}
            done, pending = await asyncio.wait(waits | {bus_gone}, timeout=example.Interval,
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in pending - {bus_gone}:
                task.cancel()
            if bus_gone.done():
                print("the bus closed the connection", file=sys.stderr)
                return 1
            if not done:  # the interval elapsed
                example.Count = example.Count + 1   # emits PropertiesChanged
                example.Tick(example.Count, time.time())
        bus_gone.cancel()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between Ticks (default 1)")
    parser.add_argument("--label", default="example", help="label reported by GetStatus")
    options = parser.parse_args()
    return busd_client.run_coroutine(serve(options.interval, options.label))


if __name__ == "__main__":
    sys.exit(main())
