#!/usr/bin/env python3
"""Processes take turns on a printer: a lock on the bus name org.example.Printer.Lock (a QSystemSemaphore of 1).

    python3 clients/examples/printer_lock.py [--workers 3 --pages 2]   # starts the workers, waits for them
    python3 clients/examples/printer_lock.py --worker NAME             # one worker

Each worker is its own process on the session bus and uses the blocking
facade: `with bus.lock(LOCK):` queues on the name, and the bus hands it to the
workers in the order they asked.  A worker that crashed while holding it
would release it by disconnecting; nothing stays behind.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import busd_client

LOCK = "org.example.Printer.Lock"


def work(name: str, pages: int) -> int:
    with busd_client.connect_blocking() as bus:
        for page in range(1, pages + 1):
            with bus.lock(LOCK, timeout=60):
                print(f"{name}: printing page {page}", flush=True)
                time.sleep(0.05)   # the printer at work; nobody else prints meanwhile
                print(f"{name}: page {page} done", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", metavar="NAME", help="run one worker called NAME")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--pages", type=int, default=2)
    options = parser.parse_args()
    if options.worker:
        return work(options.worker, options.pages)
    names = ["alice", "bob", "carol", "dave", "erin", "frank"][:options.workers]
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", name, "--pages", str(options.pages)])
               for name in names]
    return max(worker.wait() for worker in workers)


if __name__ == "__main__":
    sys.exit(main())
