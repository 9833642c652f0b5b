"""Closing the file descriptors a message brought when the bus does not pass them on."""

from __future__ import annotations

import os

from .ports import SharedFds


def close_fds(fds: list[int] | SharedFds | None) -> None:
    """Close every fd of a message that is dropped, refused or answered by the bus (they are the bus's now);
    of shared fds, release the bus's share."""
    if type(fds) is SharedFds:
        fds.release()
    elif fds:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
