"""Live tests of unix fd passing (SCM_RIGHTS): both directions, negotiation, limits and no leaked fds."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import pytest

from busclient import (  # noqa: F401  (fixtures)
    BUS_KINDS, DBUS, DBUS_PATH, ERROR_PREFIX, RawClient, busd_bug, busd_bugs, clients, open_fd_count, running_bus,
    shared_bus, wait_owner, watch_name,
)
from busd.wire.message import ERROR, METHOD_CALL, METHOD_RETURN, build_message

IFACE = "org.example.Fds"
PATH = "/org/example/Fds"
FD_LIMIT = '<limit name="max_message_unix_fds">4</limit>'


@contextmanager
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    try:
        yield read_end, write_end
    finally:
        os.close(read_end)
        os.close(write_end)


def test_fds_travel_in_a_call_and_back_in_its_reply(clients):
    caller, callee = clients(), clients()
    assert caller.unix_fd and callee.unix_fd
    with pipe() as (read_end, write_end):
        serial = caller.call(callee.unique_name, PATH, IFACE, "TakeFd", "h", [0], fds=[read_end])
        call = callee.wait_call("TakeFd")
        assert len(call.fds) == 1 and call.body == [0]
        os.write(write_end, b"through the bus")
        assert os.read(call.fds[0], 100) == b"through the bus"
        # And back: the callee answers with the write end of a pipe of its own.
        with pipe() as (back_read, back_write):
            callee.reply(call, "hh", [0, 1], fds=[back_write, call.fds[0]])
            reply = caller.reply_to(serial)
            assert reply.type == METHOD_RETURN and len(reply.fds) == 2
            os.write(reply.fds[0], b"and back")
            assert os.read(back_read, 100) == b"and back"
        call.close_fds()
        reply.close_fds()


def test_a_broadcast_signal_carries_fds_to_each_listener_that_can_take_them(clients):
    sender, able, unable = clients(), clients(), clients(negotiate_unix_fd=False)
    assert not unable.unix_fd
    rule = f"type='signal',sender='{sender.unique_name}'"
    able.add_match(rule)
    unable.add_match(rule)
    with pipe() as (read_end, write_end):
        sender.emit(PATH, IFACE, "WithFd", "h", [0], fds=[read_end])
        sender.emit(PATH, IFACE, "WithoutFd", "s", ["plain"])
        got = able.wait_signal("WithFd")
        os.write(write_end, b"x")
        assert os.read(got.fds[0], 1) == b"x"
        got.close_fds()
        # The listener without fd support never sees the signal with fds, but the next one.
        assert unable.wait_for(lambda m: m.is_signal()).member == "WithoutFd"


def test_a_call_with_fds_to_a_peer_without_fd_support_is_refused(clients):
    caller, unable = clients(), clients(negotiate_unix_fd=False)
    with pipe() as (read_end, _):
        reply = caller.reply_to(caller.call(unable.unique_name, PATH, IFACE, "TakeFd", "h", [0], fds=[read_end]))
    assert (reply.type, reply.error_name) == (ERROR, ERROR_PREFIX + "NotSupported")
    assert [m.brief() for m in unable.drain()] == []


def test_fds_sent_without_negotiating_them_drop_the_connection(clients):
    unable, other = clients(negotiate_unix_fd=False), clients()
    with pipe() as (read_end, _):
        unable.send_bytes(build_message(METHOD_CALL, unable.next_serial(), destination=other.unique_name,
                                        path=PATH, interface=IFACE, member="TakeFd", signature="h", body=[0],
                                        unix_fds=1), [read_end])
    unable.wait_closed()
    assert other.driver_value("NameHasOwner", "s", [other.unique_name]) is True


def test_a_unix_fds_field_promising_more_fds_than_arrived_drops_the_connection(clients):
    liar, other = clients(), clients()
    with pipe() as (read_end, _):
        liar.send_bytes(build_message(METHOD_CALL, liar.next_serial(), destination=other.unique_name, path=PATH,
                                      interface=IFACE, member="TakeFd", signature="h", body=[1], unix_fds=2),
                        [read_end])
    liar.wait_closed()
    assert [m.member for m in other.drain()] == []


def test_fds_without_a_unix_fds_field_are_discarded(clients):
    sender, receiver = clients(), clients()
    with pipe() as (read_end, _):
        sender.send_bytes(build_message(METHOD_CALL, sender.next_serial(), destination=receiver.unique_name,
                                        path=PATH, interface=IFACE, member="NoFdField"), [read_end])
    call = receiver.wait_call("NoFdField")
    assert call.fds == []
    assert sender.driver_value("GetNameOwner", "s", [sender.unique_name]) == sender.unique_name


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_max_message_unix_fds(kind):
    with running_bus(kind, FD_LIMIT) as bus, RawClient(bus.address) as sender, \
            RawClient(bus.address) as receiver, pipe() as (read_end, _):
        sender.call(receiver.unique_name, PATH, IFACE, "Four", "hhhh", [0, 1, 2, 3], fds=[read_end] * 4)
        call = receiver.wait_call("Four")
        assert len(call.fds) == 4
        call.close_fds()
        sender.call(receiver.unique_name, PATH, IFACE, "Five", "hhhhh", [0, 1, 2, 3, 4], fds=[read_end] * 5)
        sender.wait_closed()
        assert [m.member for m in receiver.drain()] == []


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_the_bus_holds_no_fd_after_any_path(kind):
    """Send fds down every path (delivered, refused, dropped, queued for a peer that leaves), then count."""
    with running_bus(kind, FD_LIMIT) as bus, RawClient(bus.address) as observer, pipe() as (read_end, _):
        observer.add_match(f"type='signal',sender='{DBUS}',member='NameOwnerChanged'")
        observer.drain()
        before = open_fd_count(bus.process.pid)
        sender, receiver = RawClient(bus.address), RawClient(bus.address)
        unable, hoarder = RawClient(bus.address, negotiate_unix_fd=False), RawClient(bus.address)
        receiver.add_match("type='signal'")
        unable.add_match("type='signal'")
        # Delivered (and closed by the receiver), as call and as broadcast signal.
        sender.call(receiver.unique_name, PATH, IFACE, "Take", "h", [0], fds=[read_end])
        receiver.wait_call("Take").close_fds()
        sender.emit(PATH, IFACE, "Spread", "h", [0], fds=[read_end])
        receiver.wait_signal("Spread").close_fds()
        # Refused: to a peer without fd support, to nobody, to the bus itself.
        for destination in (unable.unique_name, "org.example.Fds.Nobody", DBUS):
            reply = sender.reply_to(sender.call(destination, DBUS_PATH, IFACE, "Take", "h", [0], fds=[read_end]))
            assert reply.type == ERROR
        # Queued: the hoarder never reads, and leaves with fds still on their way.
        for _ in range(64):
            sender.call(hoarder.unique_name, PATH, IFACE, "Hoard", "hay", [0, b"\0" * 65536], fds=[read_end],
                        flags=0x1)
        sender.sync()
        # Over the per-message limit: the sender is dropped.
        extra = RawClient(bus.address)
        extra.call(receiver.unique_name, PATH, IFACE, "TooMany", "hhhhh", [0] * 5, fds=[read_end] * 5)
        extra.wait_closed()
        names = [c.unique_name for c in (sender, receiver, unable, hoarder, extra)]
        for client in (sender, receiver, unable, hoarder, extra):
            client.close()
        for name in names:
            wait_owner(observer, name, "")
        observer.sync()
        assert open_fd_count(bus.process.pid) == before
