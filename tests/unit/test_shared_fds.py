"""A broadcast's fds are one SharedFds set for every subscriber's queue (issue 13, #2), closed after the last.

Each receiving process gets its own copies from the kernel, so the bus keeps one
set however many subscribers it queues the broadcast for, as dbus-daemon does.
"""

from __future__ import annotations

import array
import os
import socket

from busd.bus.fds import close_fds
from busd.bus.ports import SharedFds
from busd.wire.message import SIGNAL, build_message
from test_transport_bigbody import RecordingBus, admitted, loop  # noqa: F401 - loop is a fixture
from test_transport_connection import WAIT


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_shared_fds_close_when_the_last_share_is_released() -> None:
    read_end, write_end = os.pipe()
    shared = SharedFds([read_end, write_end])
    first, second = shared.share(), shared.share()
    assert len(first) == 2 and list(second) == [read_end, write_end]
    close_fds(shared)  # the maker's share (the bus, once every queue has its own)
    first.release()
    assert is_open(read_end) and is_open(write_end)
    second.release()
    assert not is_open(read_end) and not is_open(write_end)


def receive_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    data, ancdata, _flags, _ = sock.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
    fds = array.array("i")
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
    return data, list(fds)


def test_one_set_of_fds_reaches_every_subscriber_and_is_closed_once_all_have_it(loop) -> None:  # noqa: F811
    bus = RecordingBus(loop)
    subscribers = [admitted(bus, f"s{i}", unix_fds=True) for i in range(3)]
    read_end, write_end = os.pipe()
    shared = SharedFds([read_end])
    message = build_message(SIGNAL, 1, path="/t", interface="org.example.T", member="Fd", signature="h", body=[0],
                            unix_fds=1)
    bus.input_started()
    for conn, _theirs in subscribers:
        conn.queue(message, b"", shared.share())
        assert conn.out_fds == 1
    close_fds(shared)  # the router is done handing out shares
    assert is_open(read_end), "queued, not yet sent"
    bus.input_done()  # each subscriber's queue is written
    for conn, theirs in subscribers:
        theirs.settimeout(WAIT)
        data, fds = receive_fds(theirs)
        assert data == message and len(fds) == 1 and conn.out_fds == 0
        os.write(write_end, b"x")
        assert os.read(fds[0], 1) == b"x", "the subscriber's own copy of the one pipe"
        os.close(fds[0])
    assert not is_open(read_end), "all three sent: the bus's one set is closed"
    os.close(write_end)
    for conn, theirs in subscribers:
        conn.drop("done")
        theirs.close()


def test_a_subscriber_dropped_with_the_fds_still_queued_releases_only_its_share(loop) -> None:  # noqa: F811
    bus = RecordingBus(loop)
    (kept, kept_end), (dropped, _dropped_end) = (admitted(bus, "kept", unix_fds=True),
                                                 admitted(bus, "dropped", unix_fds=True))
    read_end, write_end = os.pipe()
    shared = SharedFds([read_end])
    message = build_message(SIGNAL, 1, path="/t", interface="org.example.T", member="Fd", signature="h", body=[0],
                            unix_fds=1)
    bus.input_started()
    kept.queue(message, b"", shared.share())
    dropped.queue(message, b"", shared.share())
    close_fds(shared)
    dropped.drop("gone")  # before its queue was written
    assert is_open(read_end), "the other subscriber's copy is still to be sent"
    bus.input_done()
    kept_end.settimeout(WAIT)
    _data, fds = receive_fds(kept_end)
    assert len(fds) == 1
    os.close(fds[0])
    assert not is_open(read_end)
    os.close(write_end)
    kept.drop("done")
    kept_end.close()
