"""Closing the file descriptors a message brought when the bus does not pass them on."""

from __future__ import annotations

import os


def close_fds(fds: list[int] | None) -> None:
    """Close every fd of a message that is dropped, refused or answered by the bus (they are the bus's now)."""
    if fds:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
