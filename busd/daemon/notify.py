"""systemd service notification (sd_notify) without libsystemd: readiness, status, stopping, watchdog."""

from __future__ import annotations

import asyncio
import os
import socket


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1") to $NOTIFY_SOCKET; False when not under systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), path)
        except OSError:
            return False
    return True


def notify_ready(status: str) -> bool:
    return notify(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")


def notify_stopping() -> bool:
    return notify("STOPPING=1\nSTATUS=Shutting down")


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between keep-alives: half of $WATCHDOG_USEC, as sd_watchdog_enabled() advises; None when off."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2_000_000


class Watchdog:
    """Sends WATCHDOG=1 from the event loop, so a stuck loop stops the keep-alives and systemd restarts us."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float):
        self.loop = loop
        self.interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._beat()

    @classmethod
    def from_environment(cls, loop: asyncio.AbstractEventLoop) -> Watchdog | None:
        interval = watchdog_interval()
        if interval is None or not os.environ.get("NOTIFY_SOCKET"):
            return None
        return cls(loop, interval)

    def _beat(self) -> None:
        notify("WATCHDOG=1")
        self._handle = self.loop.call_later(self.interval, self._beat)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
