"""SharedBuffer's seals, modes and ownership, and its place in the SDK's types (no bus: memfds only)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from busd_client import SharedBuffer, UnsealedBufferError, check_interface
from busd_client.convert import TAKEN_FD, codec_for
from busd_client._backend import get_backend
from busd_client.dbus_types import guess_signature, signature_of
from busd_client.shared_memory import SharedMemory1, memory_path

REPO = Path(__file__).resolve().parents[2]
ALL_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_seals_are_the_ones_promised():
    with SharedBuffer(b"abc") as frozen, SharedBuffer(3, writable=True) as shared, SharedBuffer(3) as filling:
        assert frozen.seals == ALL_SEALS and frozen.view.readonly and frozen.mode == "frozen"
        assert shared.seals == ALL_SEALS & ~fcntl.F_SEAL_WRITE and not shared.view.readonly
        filling.view[:] = b"xyz"
        with pytest.raises(ValueError, match="freeze"):
            filling.fileno()
        filling.freeze()
        assert filling.seals == ALL_SEALS and filling.tobytes() == b"xyz" and filling.view.readonly


def test_adopting_checks_the_seals_the_mode_needs_and_always_takes_the_fd():
    with SharedBuffer(8, writable=True) as shared:
        with pytest.raises(UnsealedBufferError, match="a 'frozen' SharedBuffer needs .*F_SEAL_WRITE"):
            SharedBuffer.adopt(os.dup(shared.fileno()))
        with SharedBuffer.adopt(os.dup(shared.fileno()), mode="write") as other:
            other.view[:2] = b"hi"
        assert shared.view[:2] == b"hi"
    plain = os.memfd_create("plain", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(plain, 16)
    with pytest.raises(UnsealedBufferError, match="it has no seals"):
        SharedBuffer.adopt(plain, mode="read")
    with pytest.raises(OSError):
        os.fstat(plain)  # closed by the refusal: the receiver cannot leak it


def test_a_buffer_with_views_alive_refuses_to_close_and_stays_usable():
    buffer = SharedBuffer(b"0123456789")
    part = buffer.view[2:5]
    with pytest.raises(BufferError, match="release the memoryviews"):
        buffer.close()
    assert buffer.tobytes() == b"0123456789" and bytes(part) == b"234"
    part.release()
    buffer.close()
    assert buffer.closed
    with pytest.raises(ValueError, match="closed"):
        buffer.fileno()


def test_thousands_of_buffers_leave_no_fd_behind():
    before = open_fds()
    for number in range(2000):
        with SharedBuffer(number.to_bytes(4, "little")) as buffer:
            assert buffer.size == 4
    for _ in range(2000):
        SharedBuffer(64, writable=True)  # dropped unclosed: collected, and its fd closed with it
    assert open_fds() == before


def test_a_shared_buffer_is_an_h_and_decodes_once_per_message():
    assert signature_of(SharedBuffer) == "h"
    with SharedBuffer(b"x") as buffer:
        assert guess_signature(buffer) == "h"
        codec = codec_for(get_backend())
        body, fds = codec.body_encoder("h")([buffer])
        assert body == [0] and fds[0] != buffer.fileno()  # a duplicate travels
        decode = codec.body_decoder("h", [SharedBuffer])
        (received,) = decode(body, fds)
        with received:
            assert received.tobytes() == b"x" and fds == [TAKEN_FD]
            with pytest.raises(ValueError, match="already adopted"):
                decode(body, fds)


def test_the_publisher_class_matches_the_interface_xml():
    check_interface(SharedMemory1, REPO / "interfaces" / "dev.busd.SharedMemory1.xml")


def test_memory_paths_are_distinct_valid_object_paths():
    names = ["org.example.Image", "org.example_Image", "org.example-Image", "a.b.c"]
    paths = [memory_path(name) for name in names]
    assert len(set(paths)) == len(paths)
    assert all(path.startswith("/dev/busd/SharedMemory/") and all(c.isalnum() or c in "/_" for c in path)
               for path in paths)
