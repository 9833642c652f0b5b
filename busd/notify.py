"""systemd readiness notification (sd_notify) without libsystemd."""

from __future__ import annotations

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
