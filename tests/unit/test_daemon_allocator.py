"""busd.daemon.allocator: glibc's thresholds are fixed at start, unless the user chose them."""

from __future__ import annotations

import ctypes

from busd.daemon.allocator import tune_allocator


def glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except AttributeError:
        return False
    return True


def test_glibc_s_thresholds_are_set() -> None:
    assert tune_allocator({}) is glibc()


def test_a_user_s_own_malloc_tunables_are_left_alone() -> None:
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        assert tune_allocator({name: "1"}) is False
