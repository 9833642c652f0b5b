"""The per-user ledger (busd/bus/ledger.py), in memory: each line charged, released, refused at its quota,
and every line back to zero (the uid forgotten) once every peer has left."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from busd.bus.ledger import LINES, Ledger
from busd.bus.limits import Limits
from busd.bus.ports import Credentials
from busd.bus.router import Bus
from busd.interfaces import introspection_xml
from busd.wire.message import METHOD_CALL, METHOD_RETURN, NO_REPLY_EXPECTED, SIGNAL
from busd.wire.wellknown import DRIVER_NAME, DRIVER_PATH

from test_router_memory import MemoryLink, call, errors_of

UID = os.getuid()
LIMITS_EXCEEDED = "org.freedesktop.DBus.Error.LimitsExceeded"


class UidLink(MemoryLink):
    """A MemoryLink whose peer is `uid` (MemoryLink's are the test's own uid)."""

    def __init__(self, bus: Bus, label: str, uid: int):
        self.uid = uid
        super().__init__(bus, label)

    @property
    def credentials(self) -> Credentials:  # type: ignore[override]
        return Credentials(1, self.uid, self.uid, (self.uid,))

    @credentials.setter
    def credentials(self, value: Credentials) -> None:
        pass  # MemoryLink sets its own; this link's uid is fixed


def make_bus(**limits: int) -> Bus:
    return Bus(asyncio.new_event_loop(), "0" * 32, Limits(**limits), machine_id="0" * 32,
               introspection=introspection_xml(DRIVER_NAME))


@pytest.fixture
def bus():
    bus = make_bus()
    yield bus
    bus.close()
    bus.loop.close()


def used(bus: Bus, uid: int = UID) -> dict[str, int]:
    # (the ledger's running total of names is every user's Names line summed, whenever anyone looks)
    assert bus.ledger.names_total == sum(user.names for user in bus.ledger.users.values())
    return {line: value[0] for line, value in bus.ledger.report()[uid].items()}


def become_monitor(link: MemoryLink) -> None:
    link.send(METHOD_CALL, path=DRIVER_PATH, interface="org.freedesktop.DBus.Monitoring", member="BecomeMonitor",
              destination=DRIVER_NAME, signature="asu", body=[[], 0])
    assert link.peer in link.bus.monitors


def everyone_leaves(bus: Bus, *links: MemoryLink) -> None:
    for link in links:
        link.drop("gone")
    assert bus.ledger.users == {}, "every line must be back to zero once every peer has left"
    assert bus.ledger.names_total == 0


def test_lines_are_named_and_reported_with_used_peak_and_quota(bus: Bus) -> None:
    link = MemoryLink(bus, "a")
    report = bus.ledger.report()
    assert list(report[UID]) == list(LINES)
    assert report[UID]["IncompleteConnections"] == (1, 1, bus.limits.max_incomplete_connections)
    link.hello()
    assert used(bus)["IncompleteConnections"] == 0 and used(bus)["Connections"] == 1
    assert bus.ledger.report()[UID]["Connections"] == (1, 1, bus.limits.max_connections_per_user)
    everyone_leaves(bus, link)


def test_queued_bytes_are_charged_until_the_peer_reads_them(bus: Bus) -> None:
    a, b = MemoryLink(bus, "a"), MemoryLink(bus, "b")
    a.hello(), b.hello()
    assert used(bus)["OutgoingBytes"] == 0
    a.send(SIGNAL, path="/p", interface="com.example.X", member="Data", destination=b.unique_name,
           signature="ay", body=[b"x" * 1000])
    assert used(bus)["OutgoingBytes"] == b.out_bytes > 1000
    b.take()
    assert used(bus)["OutgoingBytes"] == 0
    assert bus.ledger.report()[UID]["OutgoingBytes"][1] > 1000  # the peak stays
    everyone_leaves(bus, a, b)


def test_a_peer_leaving_with_a_full_queue_releases_it(bus: Bus) -> None:
    a, b = MemoryLink(bus, "a"), MemoryLink(bus, "b")
    a.hello(), b.hello()
    a.call_driver("GetId")
    assert used(bus)["OutgoingBytes"] > 0
    a.drop("gone")
    assert used(bus)["OutgoingBytes"] == 0
    everyone_leaves(bus, b)


def test_the_users_quota_refuses_a_unicast_as_a_full_queue_and_drops_broadcasts(caplog) -> None:
    bus = make_bus(max_outgoing_bytes_per_user=4096)
    sender, reader = UidLink(bus, "sender", 1000), UidLink(bus, "reader", 2000)
    other = UidLink(bus, "other", 3000)
    for link in (sender, reader, other):
        link.hello()
    reader.call_driver("AddMatch", "s", ["type='signal',interface='com.example.X'"])
    other.call_driver("AddMatch", "s", ["type='signal',interface='com.example.X'"])
    reader.take(), other.take()
    with caplog.at_level(logging.WARNING, logger="busd.bus"):
        got = 0
        for _ in range(5):  # 5 x 1.1 KiB: the fourth is over reader's user's 4 KiB
            sender.send(SIGNAL, path="/p", interface="com.example.X", member="Data", signature="ay",
                        body=[b"x" * 1000])
            got += len(other.take())
        assert bus.ledger.users[2000].out_bytes <= 4096 and len(reader.outbox) == 3
        assert got == 5, "another user's subscriber, that reads, gets every broadcast"
        serial = sender.send(METHOD_CALL, path="/p", interface="com.example.X", member="Call",
                             destination=reader.unique_name, signature="ay", body=[b"x" * 1000])
    assert errors_of(sender.take()) == [(LIMITS_EXCEEDED, ["Rejected: destination has a full message queue"])]
    refusals = [r.getMessage() for r in caplog.records if "2000" in r.getMessage()]
    assert any("OutgoingBytes" in text and "4096" in text for text in refusals)
    assert len([text for text in refusals if "broadcasts" in text]) == 1, "one log line per episode"
    assert serial and sender.peer.replies_outstanding == 0
    reader.take()
    assert bus.ledger.users[2000].out_bytes == 0
    everyone_leaves(bus, sender, reader, other)
    bus.close()


def test_driver_replies_count_against_max_outgoing_bytes(bus: Bus) -> None:
    bus.limits = Limits(max_outgoing_bytes=2000)
    a = MemoryLink(bus, "a")
    a.hello()
    for _ in range(50):
        a.send(METHOD_CALL, path=DRIVER_PATH, interface="org.freedesktop.DBus.Introspectable",
               member="Introspect", destination=DRIVER_NAME)
    assert a.out_bytes <= 2000, "replies past the limit are dropped, not queued"
    assert used(bus)["OutgoingBytes"] == a.out_bytes
    a.take()
    a.call_driver("GetId")
    assert len(a.take()) == 1, "once read, the peer is answered again"
    everyone_leaves(bus, a)


def test_a_monitor_that_stops_reading_misses_messages_instead_of_growing(bus: Bus) -> None:
    bus.limits = Limits(max_outgoing_bytes=4096)
    monitor, a, b = MemoryLink(bus, "monitor"), MemoryLink(bus, "a"), MemoryLink(bus, "b")
    for link in (monitor, a, b):
        link.hello()
    become_monitor(monitor)
    monitor.take()
    for _ in range(20):
        a.send(SIGNAL, path="/p", interface="com.example.X", member="Data", destination=b.unique_name,
               signature="ay", body=[b"x" * 500])
        b.take()
    assert 0 < monitor.out_bytes <= 4096
    everyone_leaves(bus, monitor, a, b)


def test_match_rules_are_charged_released_and_refused_at_the_users_quota(caplog) -> None:
    bus = make_bus(max_match_rules_per_user=3)
    a, b = UidLink(bus, "a", 1000), UidLink(bus, "b", 1000)
    a.hello(), b.hello()
    for link, n in ((a, 2), (b, 1)):
        for i in range(n):
            link.call_driver("AddMatch", "s", [f"member='M{i}'"])
    assert used(bus, 1000)["MatchRules"] == 3
    with caplog.at_level(logging.WARNING, logger="busd.bus"):
        b.call_driver("AddMatch", "s", ["member='One_too_many'"])
    [(name, [text])] = errors_of(b.take())
    assert name == LIMITS_EXCEEDED and "max_match_rules_per_user=3" in text and "1000" in text
    assert any("MatchRules" in r.getMessage() and "1000" in r.getMessage() for r in caplog.records)
    a.call_driver("RemoveMatch", "s", ["member='M0'"])
    assert used(bus, 1000)["MatchRules"] == 2
    assert bus.ledger.report()[1000]["MatchRules"][1:] == (3, 3)
    a.drop("gone")
    assert used(bus, 1000)["MatchRules"] == 1
    everyone_leaves(bus, b)
    bus.close()


def test_names_owned_and_queued_are_charged_released_and_refused_at_the_users_quota() -> None:
    bus = make_bus(max_names_per_user=2)
    a, b = UidLink(bus, "a", 1000), UidLink(bus, "b", 1000)
    a.hello(), b.hello()
    a.call_driver("RequestName", "su", ["com.example.One", 0])
    b.call_driver("RequestName", "su", ["com.example.One", 0])  # queued
    assert used(bus, 1000)["Names"] == 2
    b.take()
    b.call_driver("RequestName", "su", ["com.example.Two", 0])
    [(name, [text])] = errors_of(b.take())
    assert name == LIMITS_EXCEEDED and "max_names_per_user=2" in text
    a.drop("gone")  # b becomes the owner; a's name goes back
    assert used(bus, 1000)["Names"] == 1
    b.call_driver("ReleaseName", "s", ["com.example.One"])
    assert used(bus, 1000)["Names"] == 0
    everyone_leaves(bus, b)
    bus.close()


def test_a_name_taken_over_is_released_from_its_old_owners_user() -> None:
    bus = make_bus()
    a, b = UidLink(bus, "a", 1000), UidLink(bus, "b", 2000)
    a.hello(), b.hello()
    a.call_driver("RequestName", "su", ["com.example.One", 0x1 | 0x4])  # allow replacement, do not queue
    b.call_driver("RequestName", "su", ["com.example.One", 0x2])  # replace existing
    assert used(bus, 1000)["Names"] == 0 and used(bus, 2000)["Names"] == 1
    everyone_leaves(bus, a, b)
    bus.close()


def test_pending_replies_are_charged_released_and_refused_at_the_users_quota() -> None:
    bus = make_bus(max_replies_per_user=2)
    a, b, callee = UidLink(bus, "a", 1000), UidLink(bus, "b", 1000), UidLink(bus, "callee", 2000)
    for link in (a, b, callee):
        link.hello()
    call(a, callee, 10)
    call(b, callee, 10)
    assert used(bus, 1000)["PendingReplies"] == 2
    call(a, callee, 11)
    [(name, [text])] = errors_of(a.take())
    assert name == LIMITS_EXCEEDED and text == ("The maximum number of pending replies for UID 1000 has been "
                                                "reached (max_replies_per_user=2)")
    first, second = callee.take()
    callee.send(METHOD_RETURN, reply_serial=first[0].serial, destination=a.unique_name)
    assert used(bus, 1000)["PendingReplies"] == 1
    everyone_leaves(bus, a, b, callee)
    bus.close()


def test_a_caller_leaving_drops_its_pending_calls(bus: Bus) -> None:
    """As dbus-daemon: the callee's late answer is unexpected, and nothing of the call is kept."""
    caller, callee = MemoryLink(bus, "caller"), MemoryLink(bus, "callee")
    caller.hello(), callee.hello()
    for serial in range(1, 4):
        call(caller, callee, serial)
    assert len(callee.peer.expecting) == 3
    caller.drop("gone")
    assert bus.replies.pending == {} and not callee.peer.expecting and used(bus)["PendingReplies"] == 0
    everyone_leaves(bus, callee)


def test_connections_of_a_user_are_counted_against_max_connections_per_user() -> None:
    bus = make_bus(max_connections_per_user=2)
    links = [UidLink(bus, f"l{i}", 1000) for i in range(3)]
    links[0].hello(), links[1].hello()
    serial = links[2].call_driver("Hello")
    [(error, [text])] = [(h, body) for h, body in links[2].take()]
    assert error.error_name == LIMITS_EXCEEDED and error.reply_serial == serial
    assert text == "The maximum number of active connections for UID 1000 has been reached " \
                   "(max_connections_per_user=2)"
    assert used(bus, 1000)["Connections"] == 2 and used(bus, 1000)["IncompleteConnections"] == 1
    everyone_leaves(bus, *links)
    bus.close()


def test_incomplete_connections_past_the_users_quota_are_dropped() -> None:
    bus = make_bus(max_incomplete_connections_per_user=2)
    links = [UidLink(bus, f"l{i}", 1000) for i in range(3)]
    other = UidLink(bus, "other", 2000)
    bus.loop.call_soon(bus.loop.stop)
    bus.loop.run_forever()  # the refused link is dropped on the next turn
    assert [link.closed for link in links] == [False, False, True] and not other.closed
    assert used(bus, 1000)["IncompleteConnections"] == 2
    everyone_leaves(bus, *links, other)
    bus.close()


def test_every_line_is_zero_after_a_busy_crowd_leaves(bus: Bus) -> None:
    """The leak check: names, rules, calls both ways, queues, a monitor; then everyone leaves."""
    links = [MemoryLink(bus, f"l{i}") for i in range(4)]
    for link in links:
        link.hello()
    monitor = MemoryLink(bus, "monitor")
    monitor.hello()
    become_monitor(monitor)
    a, b, c, d = links
    a.call_driver("RequestName", "su", ["com.example.A", 0])
    b.call_driver("RequestName", "su", ["com.example.A", 0])
    c.call_driver("AddMatch", "s", ["type='signal'"])
    call(a, b, 1), call(b, a, 1), call(c, d, 7)
    d.send(SIGNAL, path="/p", interface="com.example.X", member="S", signature="s", body=["x"])
    d.send(METHOD_CALL, path="/p", interface="com.example.X", member="NoReply", destination=a.unique_name,
           flags=NO_REPLY_EXPECTED)
    assert any(used(bus).values())
    everyone_leaves(bus, d, monitor, b, a, c)


def test_a_ledger_with_no_users_reports_nothing() -> None:
    ledger = Ledger(Limits())
    assert ledger.report() == {}
    quotas = Limits(max_outgoing_bytes=100, max_outgoing_unix_fds=1).user_quotas()
    assert (quotas.outgoing_bytes, quotas.outgoing_fds) == (512 << 20, 1024)
    assert Limits(max_outgoing_bytes_per_user=5).user_quotas().outgoing_bytes == 5


def test_debug_stats_report_every_user_and_each_connection_s_lines(bus: Bus) -> None:
    a, b = MemoryLink(bus, "a"), UidLink(bus, "b", 1000)
    a.hello(), b.hello()
    a.call_driver("AddMatch", "s", ["member='X'"])
    a.take()
    a.send(METHOD_CALL, path=DRIVER_PATH, interface="org.freedesktop.DBus.Debug.Stats", member="GetStats",
           destination=DRIVER_NAME)
    [(_, [stats])] = a.take()
    assert stats["ActiveConnections"].value == 2  # dbus-daemon's keys stay
    users = stats["dev.busd.UserAccounting"].value
    assert users[UID]["MatchRules"] == (1, 1, bus.ledger.quotas.match_rules)
    assert users[1000]["Connections"] == (1, 1, bus.limits.max_connections_per_user)
    a.send(METHOD_CALL, path=DRIVER_PATH, interface="org.freedesktop.DBus.Debug.Stats",
           member="GetConnectionStats", destination=DRIVER_NAME, signature="s", body=[b.unique_name])
    [(_, [conn])] = a.take()
    assert conn["UniqueName"].value == b.unique_name and conn["dev.busd.UnixUserID"].value == 1000
    lines = conn["dev.busd.ConnectionAccounting"].value
    assert lines["MatchRules"] == (0, 0, bus.limits.max_match_rules_per_connection)
    assert lines["OutgoingBytes"][2] == bus.limits.max_outgoing_bytes
    everyone_leaves(bus, a, b)


class DropRecordingLink(UidLink):
    """A UidLink that remembers why the bus dropped it."""

    def __init__(self, bus: Bus, label: str, uid: int):
        self.dropped_for: str | None = None
        super().__init__(bus, label, uid)

    def drop(self, reason: str, level: int = logging.WARNING) -> None:
        if not self.closed:
            self.dropped_for = reason
        super().drop(reason, level)

    def buffered(self, in_bytes: int, in_fds: int = 0) -> None:
        """The transport read part of a message (and `in_fds` fds no message has claimed yet)."""
        self.in_bytes, self.in_fds = in_bytes, in_fds
        self.bus.input_buffered(self)


def test_unfinished_input_is_charged_to_its_user_and_released_when_the_link_leaves() -> None:
    bus = make_bus(max_incoming_bytes_per_user=1000, max_incoming_unix_fds_per_user=4)
    a, b = DropRecordingLink(bus, "a", 1000), DropRecordingLink(bus, "b", 1000)
    a.buffered(300, 2)
    b.buffered(500)
    assert bus.ledger.report()[1000]["IncomingBytes"] == (800, 800, 1000)
    assert used(bus, 1000)["IncomingFDs"] == 2
    a.buffered(0)  # its message is whole now: nothing held
    assert used(bus, 1000)["IncomingBytes"] == 500 and used(bus, 1000)["IncomingFDs"] == 0
    assert bus.ledger.report()[1000]["IncomingBytes"][1] == 800  # the peak stays
    a.buffered(100, 1)
    b.drop("gone")  # a link that leaves mid-message gives back what it held
    assert used(bus, 1000)["IncomingBytes"] == 100
    assert a.dropped_for is None and b.dropped_for == "gone"
    everyone_leaves(bus, a)
    bus.close()


def test_many_links_of_one_user_each_holding_part_of_a_message_are_stopped_at_the_user_s_quota() -> None:
    # Attack #1 after Hello: each connection may hold up to max_message_size of a message it never finishes;
    # together they may not hold more than the user's IncomingBytes quota. Another user is not affected.
    bus = make_bus(max_incoming_bytes_per_user=1000)
    links = [DropRecordingLink(bus, f"a{i}", 1000) for i in range(5)]
    other = DropRecordingLink(bus, "other", 1001)
    for link in links[:4]:
        link.buffered(250)
    assert not any(link.closed for link in links)
    links[4].buffered(1)
    assert links[4].closed and "IncomingBytes quota (1000)" in links[4].dropped_for
    assert "uid 1000" in links[4].dropped_for
    assert used(bus, 1000)["IncomingBytes"] == 1000  # the dropped link's byte went back
    other.buffered(900)
    assert not other.closed
    everyone_leaves(bus, *links[:4], other)
    bus.close()


def test_unclaimed_fds_are_bounded_per_user() -> None:
    bus = make_bus(max_incoming_unix_fds_per_user=3)
    a, b = DropRecordingLink(bus, "a", 1000), DropRecordingLink(bus, "b", 1000)
    a.buffered(10, 2)
    b.buffered(10, 2)
    assert b.closed and "IncomingFDs quota (3)" in b.dropped_for and not a.closed
    everyone_leaves(bus, a)
    bus.close()


def test_incoming_quotas_are_derived_from_the_message_limits() -> None:
    quotas = Limits(max_message_size=1 << 20, max_message_unix_fds=16).user_quotas()
    assert (quotas.incoming_bytes, quotas.incoming_fds) == (512 << 20, 1024)
    quotas = Limits(max_message_size=1 << 27, max_message_unix_fds=1024).user_quotas()
    assert (quotas.incoming_bytes, quotas.incoming_fds) == (4 << 27, 4096)
    assert Limits(max_incoming_bytes_per_user=7).user_quotas().incoming_bytes == 7


class NeverStarts:
    """An Activator for one name that records each start and never starts anything itself."""

    def __init__(self, name: str):
        self.name = name
        self.started: list[str] = []

    def is_activatable(self, name: str, *, auto_start: bool = True) -> bool:
        return name == self.name

    def activatable_names(self) -> list[str]:
        return [self.name]

    def start(self, name: str, requester) -> None:
        self.started.append(name)

    def cancel(self, name: str) -> None:
        pass

    def environment_updated(self, env: dict[str, str]) -> None:
        pass


def test_messages_held_for_an_activation_are_charged_to_their_sender_until_they_go_on() -> None:
    # A message to a name being started waits in the bus (up to service_start_timeout): its bytes are the
    # sender's user's IncomingBytes, and past the quota the sender is refused instead of the bus holding it.
    from busd.bus.activation import PendingStarts

    bus = make_bus(max_incoming_bytes_per_user=3 << 20)
    activator = NeverStarts("org.example.Lazy")
    starts = PendingStarts(bus, activator)
    bus.driver.attach_activation(starts)
    bus.add_observer(starts)  # told when the name gets its owner
    sender, service = UidLink(bus, "sender", 1000), UidLink(bus, "service", 1001)
    sender.hello(), service.hello()
    sender.take(), service.take()
    payload = bytes(1 << 20)
    for _ in range(2):
        sender.send(METHOD_CALL, path="/", interface="org.example.Lazy", member="Take",
                    destination="org.example.Lazy", signature="ay", body=[payload])
    assert activator.started == ["org.example.Lazy"]
    held = used(bus, 1000)["IncomingBytes"]
    assert 2 << 20 < held < (2 << 20) + 1024
    sender.send(METHOD_CALL, path="/", interface="org.example.Lazy", member="Take",
                destination="org.example.Lazy", signature="ay", body=[payload])  # a third MiB: over 3 MiB
    [(error, [text])] = errors_of(sender.take())
    assert error == LIMITS_EXCEEDED and "IncomingBytes quota" in text and "org.example.Lazy" in text
    assert used(bus, 1000)["IncomingBytes"] == held
    service.call_driver("RequestName", "su", ["org.example.Lazy", 0])
    assert [h.member for h, _ in service.take() if h.type == METHOD_CALL] == ["Take", "Take"]
    assert used(bus, 1000)["IncomingBytes"] == 0, "delivered: the charge goes back"
    everyone_leaves(bus, sender, service)
    bus.close()


def test_a_sender_leaving_while_its_message_is_held_leaves_nothing_charged() -> None:
    from busd.bus.activation import PendingStarts

    bus = make_bus()
    bus.driver.attach_activation(PendingStarts(bus, NeverStarts("org.example.Lazy")))
    sender = UidLink(bus, "sender", 1000)
    sender.hello()
    sender.send(METHOD_CALL, path="/", interface="org.example.Lazy", member="Take",
                destination="org.example.Lazy", signature="ay", body=[bytes(4096)])
    sender.drop("gone")
    assert 1000 in bus.ledger.users, "still held: still charged"
    bus.driver.activation.fail("org.example.Lazy", "org.freedesktop.DBus.Error.Spawn.Failed", "no")
    assert bus.ledger.users == {}
    bus.close()
