"""glibc's allocator set for a daemon that runs for months: fixed mmap and trim thresholds.

Why. glibc raises its mmap threshold whenever a block it had mmapped is freed
(up to 32 MiB), and its trim threshold to twice that. After the first large
message, buffers of that size come from the heap, and the free space they
leave there is kept: under mixed traffic busd's RSS crept up in steps while
Python's own heap stayed flat (benchmarks/soak.py --diagnose: "free" inside
the heap grew from 1 to 13 MiB). Setting both thresholds turns that
adjustment off: large buffers are mmapped and unmapped when freed, and free
space at the top of the heap over TRIM_THRESHOLD goes back to the kernel.
Measured with soak.py over 2 minutes: slope after the warm-up from about
+1 MiB/min (in steps) to flat.

A user who sets MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ (glibc's own
tunables) keeps their choice. On other C libraries this does nothing.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 10  # the stream's read buffer size: one read's bytes and larger are mmapped
TRIM_THRESHOLD = 512 << 10
USER_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def tune_allocator(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """Fix glibc's mmap and trim thresholds; whether it did (not on other C libraries, nor when the user set them)."""
    if any(name in environ for name in USER_TUNABLES):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl's mallopt() does nothing useful
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


__all__ = ["tune_allocator"]
