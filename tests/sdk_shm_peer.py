"""The other process of the shared-memory and lock tests: `python3 tests/sdk_shm_peer.py COMMAND ARGS...`.

Commands (each prints its state as lines the test waits for, and reads stdin):
  serve                      export dev.busd.ShmProbe1 at /dev/busd/ShmProbe under dev.busd.ShmProbe
  publish NAME TEXT|-SIZE    publish TEXT read-only (or -SIZE bytes writable) under NAME; exit on EOF
  lock NAME                  take the lock, print "locked", release on a "release" line, then exit
  semaphore NAME PERMITS     take a permit, print "acquired PERMIT", release on a "release" line

The bus is the session bus of the environment; the backend is $BUSD_CLIENT_BACKEND.
"""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import sys

import busd_client
from busd_client import Interface, SharedBuffer, UnixFD, method, signal

PROBE_NAME = "dev.busd.ShmProbe"
PROBE_PATH = "/dev/busd/ShmProbe"
PROBE_INTERFACE = "dev.busd.ShmProbe1"


def outcome(attempt: object) -> str:
    """What an attempt to change a received buffer did: 'ok', or the exception class and errno name."""
    try:
        attempt()  # type: ignore[operator]
    except OSError as error:
        return f"{type(error).__name__} {errno.errorcode.get(error.errno or 0, error.errno)}"
    except Exception as error:
        return type(error).__name__
    return "ok"


class ShmProbe1(Interface, name=PROBE_INTERFACE):
    """What a receiving process can and cannot do with the buffers it is sent."""

    @method()
    def TryToChange(self, fd: UnixFD) -> dict[str, str]:
        """Try every way to change the memory behind a received fd; the fd is closed afterwards."""
        size = os.fstat(fd).st_size
        try:
            return {
                "write": outcome(lambda: os.pwrite(fd, b"x", 0)),
                "grow": outcome(lambda: os.ftruncate(fd, size + 4096)),
                "shrink": outcome(lambda: os.ftruncate(fd, max(size - 1, 0))),
                "map-writable": outcome(lambda: mmap.mmap(fd, size, mmap.MAP_SHARED,
                                                          mmap.PROT_READ | mmap.PROT_WRITE).close()),
                "adopt-writable": outcome(lambda: SharedBuffer.adopt(os.dup(fd), mode="write").close()),
            }
        finally:
            os.close(fd)

    @method()
    def Checksum(self, buffer: SharedBuffer) -> tuple[int, str]:
        """The size and first bytes of a buffer adopted as the hint says (refused when unsealed)."""
        with buffer:
            view = buffer.view
            return len(view), view[:16].hex()

    @method()
    def WriteThrough(self, fd: UnixFD, text: str) -> None:
        """Map a writable buffer and write `text` at its start (the sender sees it)."""
        with SharedBuffer.adopt(fd, mode="write") as buffer:
            buffer.view[:len(text)] = text.encode()

    @method()
    def MakeBuffer(self, text: str) -> SharedBuffer:
        """A new sealed buffer holding `text` (the reply carries a duplicate; ours is closed when collected)."""
        return SharedBuffer(text.encode())

    @method()
    def EmitFrame(self, text: str) -> None:
        with SharedBuffer(text.encode()) as buffer:
            self.Frame(buffer, len(text))

    @signal()
    def Frame(self, buffer: SharedBuffer, length: int) -> None: ...

    @method()
    def OpenFds(self) -> int:
        return len(os.listdir("/proc/self/fd"))


async def wait_for_line(expected: str) -> None:
    """Wait for a line on stdin; EOF counts as the end of the test."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == expected:
            return


async def main(command: str, args: list[str]) -> None:
    async with await busd_client.connect() as bus:
        if command == "serve":
            bus.export(PROBE_PATH, ShmProbe1())
            await bus.request_name(PROBE_NAME, do_not_queue=True)
            print(f"ready {bus.unique_name}", flush=True)
            await wait_for_line("")
        elif command == "publish":
            name, content = args
            source: bytes | int = -int(content) if content.startswith("-") else content.encode()
            async with await bus.publish_shared_memory(name, source, writable=isinstance(source, int)):
                print(f"published {bus.unique_name}", flush=True)
                await wait_for_line("exit")
        elif command == "lock":
            print(f"waiting {bus.unique_name}", flush=True)
            async with bus.lock(args[0]):
                print(f"locked {bus.unique_name}", flush=True)
                await wait_for_line("release")
            print("released", flush=True)
        elif command == "semaphore":
            print(f"waiting {bus.unique_name}", flush=True)
            async with bus.semaphore(args[0], int(args[1])) as semaphore:
                print(f"acquired {semaphore.permit} {bus.unique_name}", flush=True)
                await wait_for_line("release")
            print("released", flush=True)
        else:
            raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    busd_client.run_coroutine(main(sys.argv[1], sys.argv[2:]))
