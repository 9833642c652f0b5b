#!/usr/bin/env python3
"""Two processes share one large image through a sealed SharedBuffer: only a file descriptor crosses the bus.

    python3 clients/examples/share_image.py [--width 4096 --height 4096]   # starts a viewer, sends it an image
    python3 clients/examples/share_image.py --viewer                      # just the viewer, until stopped

The sender fills a `SharedBuffer(size)` in place, freezes it (sealed against
writing and resizing) and passes it to the viewer's Show method like any
other argument.  The viewer's `SharedBuffer` parameter maps the same pages
read-only after checking the seals, so it can trust that the image will not
change while it reads it; it hashes the pixels where they lie and answers.
Both sides print the hash: the same bytes, never copied through the bus.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal as signals
import subprocess
import sys
import time

import busd_client
from busd_client import Interface, SharedBuffer, UInt32, method

NAME = "org.example.ImageViewer"
PATH = "/org/example/ImageViewer"


class ImageViewer1(Interface, name="org.example.ImageViewer1"):
    @method(out_names=("summary",))
    def Show(self, image: SharedBuffer, width: UInt32, height: UInt32) -> str:
        with image:   # the viewer owns what it received: closed (unmapped) at the end of the block
            digest = hashlib.sha256(image.view).hexdigest()[:16]
            return f"{width}x{height} RGB, {image.size} bytes, sha256 {digest}"


async def view() -> int:
    async with await busd_client.connect() as bus:
        bus.export(PATH, ImageViewer1())
        await bus.request_name(NAME, do_not_queue=True)
        print(f"viewer ready {bus.unique_name}", flush=True)
        stop = asyncio.Event()
        for number in (signals.SIGINT, signals.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(number, stop.set)
        await stop.wait()
    return 0


def paint(width: int, height: int) -> SharedBuffer:
    """A width x height RGB gradient, drawn straight into shared memory, then sealed read-only."""
    row = width * 3
    pattern = bytes(range(256)) * (row // 256 + 2)
    image = SharedBuffer(row * height)
    pixels = image.view
    for y in range(height):
        shift = y % 256
        pixels[y * row:(y + 1) * row] = pattern[shift:shift + row]
    image.freeze()
    return image


async def send(width: int, height: int) -> int:
    viewer = subprocess.Popen([sys.executable, __file__, "--viewer"], stdout=subprocess.PIPE, text=True)
    try:
        assert viewer.stdout is not None
        print(viewer.stdout.readline().strip(), flush=True)
        async with await busd_client.connect() as bus:
            remote = await bus.proxy(NAME, PATH, ImageViewer1)
            with paint(width, height) as image:
                started = time.perf_counter()
                summary = await remote.Show(image, width, height)
                elapsed = time.perf_counter() - started
                print(f"viewer saw: {summary} ({elapsed * 1000:.1f} ms for the call)")
                print(f"sender has: sha256 {hashlib.sha256(image.view).hexdigest()[:16]}")
    finally:
        viewer.terminate()
        viewer.wait()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewer", action="store_true", help="run only the viewer")
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--height", type=int, default=4096)
    options = parser.parse_args()
    if options.viewer:
        return busd_client.run_coroutine(view())
    return busd_client.run_coroutine(send(options.width, options.height))


if __name__ == "__main__":
    sys.exit(main())
