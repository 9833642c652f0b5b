"""Routing through the PeerLink port, in memory: a Bus and a few fake links, no sockets, no daemon.

As h11 tests its Connection with an in-memory pair, these tests wire MemoryLinks
straight to a Bus and check routing basics fast. The live tests (test_bus_*.py)
check the same behaviour end to end against busd and dbus-daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from busd.bus.ports import SharedFds
from busd.bus.router import Bus
from busd.bus.driver import DriverMethod
from busd.bus.limits import Limits
from busd.bus.ports import Credentials, PeerLink
from busd.interfaces import introspection_xml
from busd.wire.marshal import Variant
from busd.wire.message import (
    ERROR, METHOD_CALL, METHOD_RETURN, NO_REPLY_EXPECTED, SIGNAL, Header, build_message, parse_header, read_body,
)
from busd.wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH



class MemoryLink:
    """A PeerLink whose peer is the test: what the bus queues waits in `outbox` until take()."""

    def __init__(self, bus: Bus, label: str):
        self.bus = bus
        self.label = label
        self.credentials = Credentials(os.getpid(), os.getuid(), os.getgid(), (os.getgid(),))
        self.can_pass_fds = False
        self.closed = False
        self.out_bytes = self.out_fds = self.peak_out_bytes = 0
        self.in_bytes = self.peak_in_bytes = self.in_fds = 0
        self.received = [0] * 8
        self.sent = [0] * 8
        self.bytes_read = self.bytes_written = 0
        self.outbox: list[bytes] = []
        self.held = False  # the bus asked us to read no more from the peer
        self.dropped_broadcasts = 0
        self.serial = 0
        self.unique_name: str | None = None
        bus.link_opened(self)
        self.peer = bus.peer_authenticated(self, os.getuid())

    # ------------------------------------------------------------ the port

    def queue(self, head: bytes, body: Any, fds: list[int] | SharedFds | None = None) -> None:
        message = bytes(head) + bytes(body)
        self.outbox.append(message)
        self.out_bytes += len(message)
        self.peak_out_bytes = max(self.peak_out_bytes, self.out_bytes)

    def queued_messages(self) -> int:
        return len(self.outbox)

    def flush(self) -> None:
        pass  # the test reads with take()

    def hold_input(self) -> None:
        self.held = True

    def release_input(self) -> None:
        self.held = False

    def registered(self) -> None:
        pass

    def note_dropped_broadcast(self, limit: int) -> None:
        self.dropped_broadcasts += 1

    def drop(self, reason: str, level: int = logging.WARNING) -> None:
        if not self.closed:
            self.closed = True
            self.bus.link_closed(self)

    # ------------------------------------------------------------ the peer's side

    def send(self, mtype: int, **fields: Any) -> int:
        """Send one message as the peer, as a transport hands over one read; returns its serial."""
        self.serial += 1
        message = build_message(mtype, self.serial, **fields)
        self.bus.input_started()
        try:
            self.bus.receive(self.peer, message, parse_header(message), None)
        finally:
            self.bus.input_done()
        return self.serial

    def call_driver(self, member: str, signature: str = "", body: list | tuple = ()) -> int:
        return self.send(METHOD_CALL, path=DRIVER_PATH, interface=DRIVER_INTERFACE, member=member,
                         destination=DRIVER_NAME, signature=signature, body=body)

    def take(self) -> list[tuple[Header, list]]:
        """Everything the bus queued for the peer since the last take(), as (header, body); the queue drains."""
        messages, self.outbox = self.outbox, []
        self.out_bytes = 0
        self.bus.output_flushed(self)
        return [(h, read_body(m, h)) for m in messages for h in [parse_header(m)]]

    def hello(self) -> str:
        serial = self.call_driver("Hello")
        (reply, body), *_ = self.take()
        assert reply.type == METHOD_RETURN and reply.reply_serial == serial
        self.unique_name = body[0]
        return self.unique_name


@pytest.fixture
def bus():
    loop = asyncio.new_event_loop()
    bus = Bus(loop, "0" * 32, machine_id="0" * 32, introspection=introspection_xml(DRIVER_NAME))
    yield bus
    bus.close()
    loop.close()


def members(messages: list[tuple[Header, list]]) -> list[tuple[int, str | None]]:
    return [(h.type, h.member) for h, _ in messages]


def test_hello_gives_a_unique_name_then_name_acquired(bus: Bus) -> None:
    link = MemoryLink(bus, "a")
    assert bus.incomplete_connections == 1
    serial = link.call_driver("Hello")
    (reply, body), (signal, signal_body) = link.take()
    assert reply.type == METHOD_RETURN and reply.reply_serial == serial and body == [":1.0"]
    assert (signal.type, signal.member, signal_body) == (SIGNAL, "NameAcquired", [":1.0"])
    assert bus.incomplete_connections == 0 and bus.peers[":1.0"] is link.peer


def test_a_call_and_its_reply(bus: Bus) -> None:
    caller, callee = MemoryLink(bus, "caller"), MemoryLink(bus, "callee")
    caller.hello(), callee.hello()
    serial = caller.send(METHOD_CALL, path="/x", interface="com.example.X", member="Ping",
                         destination=callee.unique_name, signature="s", body=["hi"])
    [(call, body)] = callee.take()
    assert (call.member, call.sender, call.serial, body) == ("Ping", caller.unique_name, serial, ["hi"])
    callee.send(METHOD_RETURN, reply_serial=call.serial, destination=caller.unique_name, signature="s", body=["ho"])
    [(reply, body)] = caller.take()
    assert (reply.type, reply.reply_serial, reply.sender, body) == (METHOD_RETURN, serial, callee.unique_name, ["ho"])
    assert bus.replies.pending == {}


def test_a_signal_reaches_only_a_matching_rule(bus: Bus) -> None:
    emitter, listener, bystander = MemoryLink(bus, "e"), MemoryLink(bus, "l"), MemoryLink(bus, "b")
    for link in (emitter, listener, bystander):
        link.hello()
    listener.call_driver("AddMatch", "s", ["type='signal',interface='com.example.Weather'"])
    assert members(listener.take()) == [(METHOD_RETURN, None)]
    bystander.take()
    emitter.send(SIGNAL, path="/w", interface="com.example.Weather", member="Rain", signature="u", body=[3])
    [(signal, body)] = listener.take()
    assert (signal.member, signal.sender, body) == ("Rain", emitter.unique_name, [3])
    assert bystander.take() == []


def test_a_reply_nobody_asked_for_is_dropped(bus: Bus) -> None:
    sender, target = MemoryLink(bus, "s"), MemoryLink(bus, "t")
    sender.hello(), target.hello()
    sender.send(METHOD_RETURN, reply_serial=99, destination=target.unique_name)
    sender.send(ERROR, reply_serial=99, destination=target.unique_name, error_name="com.example.Error")
    assert target.take() == [] and sender.take() == []


def test_a_full_recipient_holds_its_sender_back_until_it_drains(bus: Bus) -> None:
    bus.limits = Limits(max_outgoing_bytes=64 * 1024)  # soft limit: 16 KiB, released below 8 KiB
    sender, reader = MemoryLink(bus, "fast"), MemoryLink(bus, "slow")
    sender.hello(), reader.hello()
    while not sender.held:
        sender.send(SIGNAL, path="/p", interface="com.example.Data", member="Chunk",
                    destination=reader.unique_name, flags=NO_REPLY_EXPECTED, signature="ay", body=[b"x" * 1024])
        assert reader.out_bytes < 20 * 1024, "the sender should be held back past the soft limit"
    assert reader.out_bytes > 16 * 1024  # held just past the soft limit
    assert all(h.member == "Chunk" for h, _ in reader.take())
    assert not sender.held


def test_a_recipient_leaving_releases_the_senders_it_held(bus: Bus) -> None:
    bus.limits = Limits(max_outgoing_bytes=64 * 1024)
    sender, reader = MemoryLink(bus, "fast"), MemoryLink(bus, "slow")
    sender.hello(), reader.hello()
    while not sender.held:
        sender.send(SIGNAL, path="/p", interface="com.example.Data", member="Chunk",
                    destination=reader.unique_name, signature="ay", body=[b"x" * 1024])
    reader.drop("gone")
    assert not sender.held


def test_a_peer_leaving_is_announced_and_its_callers_get_no_reply(bus: Bus) -> None:
    caller, callee = MemoryLink(bus, "caller"), MemoryLink(bus, "callee")
    caller.hello(), callee.hello()
    caller.call_driver("AddMatch", "s", ["type='signal',member='NameOwnerChanged'"])
    caller.take()
    serial = caller.send(METHOD_CALL, path="/x", interface="com.example.X", member="Slow",
                         destination=callee.unique_name)
    callee.drop("gone")
    (error, _), (signal, body) = caller.take()
    assert (error.type, error.reply_serial, error.error_name) == (ERROR, serial, "org.freedesktop.DBus.Error.NoReply")
    assert signal.member == "NameOwnerChanged" and body == [callee.unique_name, callee.unique_name, ""]
    assert callee.unique_name not in bus.peers and callee not in bus.links


def test_every_link_kind_implements_the_port(bus: Bus) -> None:
    """The memory link here, the bridge's stand-in peers and the socket Connection all carry PeerLink's members."""
    from busd.bridge import BridgeSettings
    from busd.bridge.bridge import Bridge
    from busd.bridge.mirror import Mirror

    bridge = Bridge(bus, BridgeSettings(upstream="unix:path=/nonexistent"))
    assert isinstance(MemoryLink(bus, "m"), PeerLink)
    assert isinstance(bridge.home, PeerLink)
    assert isinstance(Mirror(bridge, ":1.42"), PeerLink)


# ---------------------------------------------------------------- replies the bus expects


def call(link: MemoryLink, target: MemoryLink, serial: int, member: str = "Slow") -> None:
    """A method call with a serial of the test's choosing (MemoryLink.send numbers its own)."""
    message = build_message(METHOD_CALL, serial, path="/x", interface="com.example.X", member=member,
                            destination=target.unique_name)
    link.bus.receive(link.peer, message, parse_header(message), None)


def errors_of(messages: list[tuple[Header, list]]) -> list[tuple[str | None, list]]:
    return [(h.error_name, body) for h, body in messages if h.type == ERROR]


def test_a_call_reusing_the_serial_of_a_pending_call_to_the_same_callee_is_refused(bus: Bus) -> None:
    caller, callee, other = MemoryLink(bus, "caller"), MemoryLink(bus, "callee"), MemoryLink(bus, "other")
    for link in (caller, callee, other):
        link.hello()
    call(caller, callee, 7)
    call(caller, other, 7)  # the same serial to another callee is a different call
    call(caller, callee, 7)
    assert errors_of(caller.take()) == [(
        "org.freedesktop.DBus.Error.AccessDenied",
        ["Message has the same reply serial as a currently-outstanding existing method call"])]
    assert len(callee.take()) == 1 and len(other.take()) == 1
    assert caller.peer.replies_outstanding == 2 and len(bus.replies.pending) == 2


def test_a_caller_over_max_replies_per_connection_is_refused(bus: Bus) -> None:
    bus.limits = Limits(max_replies_per_connection=1)
    caller, callee = MemoryLink(bus, "caller"), MemoryLink(bus, "callee")
    caller.hello(), callee.hello()
    call(caller, callee, 100)
    call(caller, callee, 101)
    assert errors_of(caller.take()) == [(
        "org.freedesktop.DBus.Error.LimitsExceeded",
        ["The maximum number of pending replies per connection has been reached"])]
    [(first, _)] = callee.take()
    callee.send(METHOD_RETURN, reply_serial=first.serial, destination=caller.unique_name)
    assert caller.peer.replies_outstanding == 0 and not callee.peer.expecting and bus.replies.pending == {}


def test_a_call_past_its_reply_timeout_gets_no_reply_and_its_late_answer_is_dropped(bus: Bus) -> None:
    bus.limits = Limits(reply_timeout=0)
    caller, callee = MemoryLink(bus, "caller"), MemoryLink(bus, "callee")
    caller.hello(), callee.hello()
    call(caller, callee, 5)
    [(delivered, _)] = callee.take()
    bus._sweep_replies()
    assert errors_of(caller.take()) == [(
        "org.freedesktop.DBus.Error.NoReply", ["Message did not receive a reply (timeout by message bus)"])]
    assert bus.replies.pending == {} and caller.peer.replies_outstanding == 0 and not callee.peer.expecting
    callee.send(METHOD_RETURN, reply_serial=delivered.serial, destination=caller.unique_name)
    assert caller.take() == []


# ---------------------------------------------------------------- the driver's table and its checks

DRIVER_XML = Path(__file__).resolve().parents[2] / "interfaces" / "org.freedesktop.DBus.xml"


def test_every_driver_row_declares_the_signatures_its_introspection_xml_gives() -> None:
    """The rows' input and output signatures are the ones org.freedesktop.DBus.xml (and dev.busd.Policy1.xml,
    served beside it) publish, method by method."""
    published = {}
    for interface in [element for path in (DRIVER_XML, DRIVER_XML.with_name("dev.busd.Policy1.xml"))
                      for element in ET.parse(path).getroot().iter("interface")]:
        for method in interface.iter("method"):
            args = method.findall("arg")
            published[(interface.get("name"), method.get("name"))] = (
                "".join(a.get("type") for a in args if a.get("direction", "in") == "in"),
                "".join(a.get("type") for a in args if a.get("direction") == "out"))
    loop = asyncio.new_event_loop()
    bus = Bus(loop, "0" * 32, machine_id="0" * 32, introspection=DRIVER_XML.read_text())
    try:
        rows: dict[tuple[str, str], DriverMethod] = bus.driver.methods
        assert {key: (row.in_signature, row.out_signature) for key, row in rows.items()} == published
        assert [row.member for row in rows.values() if not row.needs_hello] == ["Hello"]
    finally:
        bus.close()
        loop.close()


def test_the_machine_id_and_introspection_are_the_ones_the_bus_was_given() -> None:
    loop = asyncio.new_event_loop()
    xml = introspection_xml(DRIVER_NAME)
    bus = Bus(loop, "0" * 32, machine_id="ab" * 16, introspection=xml)
    try:
        link = MemoryLink(bus, "a")
        link.hello()
        link.send(METHOD_CALL, path="/", interface="org.freedesktop.DBus.Peer", member="GetMachineId",
                  destination=DRIVER_NAME)
        link.send(METHOD_CALL, path=DRIVER_PATH, interface="org.freedesktop.DBus.Introspectable",
                  member="Introspect", destination=DRIVER_NAME)
        assert [body for _, body in link.take()] == [["ab" * 16], [xml]]
    finally:
        bus.close()
        loop.close()


def test_an_interface_added_beside_the_driver_is_introspected_and_its_properties_served(bus: Bus) -> None:
    link = MemoryLink(bus, "a")
    link.hello()
    xml = '  <interface name="dev.example.Extra">\n    <property name="Up" type="b" access="read"/>\n  </interface>\n'

    def introspect_and_get() -> list[list]:
        link.send(METHOD_CALL, path=DRIVER_PATH, interface="org.freedesktop.DBus.Introspectable",
                  member="Introspect", destination=DRIVER_NAME)
        link.send(METHOD_CALL, path=DRIVER_PATH, interface="org.freedesktop.DBus.Properties", member="Get",
                  destination=DRIVER_NAME, signature="ss", body=["dev.example.Extra", "Up"])
        return [body for _, body in link.take()]

    base = introspect_and_get()[0][0]
    bus.driver.add_interface("dev.example.Extra", xml, lambda: {"Up": Variant("b", True)})
    served, value = introspect_and_get()
    assert served == [base.replace("</node>", xml + "</node>")]
    assert value == [Variant("b", True)]
    bus.driver.remove_interface("dev.example.Extra")
    served, error = introspect_and_get()
    assert served == [base]
    assert "dev.example.Extra" in error[0]


@pytest.mark.parametrize("member, name, text", [
    ("RequestName", "not..valid", 'Requested bus name "not..valid" is not valid'),
    ("ReleaseName", "not..valid", 'Given bus name "not..valid" is not valid'),
    ("RequestName", ":1.7", "Cannot acquire a service starting with ':' such as \":1.7\""),
    ("ReleaseName", ":1.7", "Cannot release a service starting with ':' such as \":1.7\""),
    ("RequestName", DRIVER_NAME, 'Connection ":1.0" is not allowed to own the service "org.freedesktop.DBus" '
                                 "because it is reserved for D-Bus' use only"),
    ("ReleaseName", DRIVER_NAME, "Cannot release the org.freedesktop.DBus service because it is owned by the bus"),
])
def test_request_and_release_name_refuse_what_is_not_a_claimable_name(bus: Bus, member: str, name: str,
                                                                         text: str) -> None:
    link = MemoryLink(bus, "a")
    link.hello()
    link.call_driver(member, "su" if member == "RequestName" else "s",
                     [name, 0] if member == "RequestName" else [name])
    assert errors_of(link.take()) == [("org.freedesktop.DBus.Error.InvalidArgs", [text])]


def test_request_name_announces_the_name_before_answering(bus: Bus) -> None:
    link = MemoryLink(bus, "a")
    link.hello()
    serial = link.call_driver("RequestName", "su", ["com.example.Name", 0])
    (acquired, body), (reply, code) = link.take()
    assert (acquired.member, body) == ("NameAcquired", ["com.example.Name"])
    assert (reply.reply_serial, code) == (serial, [1])
    serial = link.call_driver("ReleaseName", "s", ["com.example.Name"])
    (lost, body), (reply, code) = link.take()
    assert (lost.member, body, reply.reply_serial, code) == ("NameLost", ["com.example.Name"], serial, [1])


@pytest.mark.parametrize("member, what", [
    ("GetConnectionUnixUser", "UID"), ("GetConnectionUnixProcessID", "PID"),
    ("GetConnectionCredentials", "credentials"), ("GetAdtAuditSessionData", "audit session data"),
    ("GetConnectionSELinuxSecurityContext", "security context"),
])
def test_credential_lookups_of_a_name_nobody_owns_say_which_was_asked(bus: Bus, member: str, what: str) -> None:
    link = MemoryLink(bus, "a")
    link.hello()
    link.call_driver(member, "s", [":1.99"])
    assert errors_of(link.take()) == [("org.freedesktop.DBus.Error.NameHasNoOwner",
                                       [f"Could not get {what} of name ':1.99': no such name"])]


def test_credential_lookups_of_the_bus_itself_give_the_daemon_s_process(bus: Bus) -> None:
    link = MemoryLink(bus, "a")
    link.hello()
    link.call_driver("GetConnectionUnixUser", "s", [DRIVER_NAME])
    link.call_driver("GetConnectionUnixProcessID", "s", [DRIVER_NAME])
    assert [body for _, body in link.take()] == [[os.getuid()], [os.getpid()]]


def test_a_method_with_a_path_restriction_is_refused_elsewhere(bus: Bus) -> None:
    link = MemoryLink(bus, "a")
    link.hello()
    link.send(METHOD_CALL, path="/", interface=DRIVER_INTERFACE, member="UpdateActivationEnvironment",
              destination=DRIVER_NAME, signature="a{ss}", body=[{"A": "b"}])
    assert errors_of(link.take()) == [(
        "org.freedesktop.DBus.Error.AccessDenied",
        ["UpdateActivationEnvironment is only allowed on the object path /org/freedesktop/DBus"])]


def test_only_hello_is_served_before_hello(bus: Bus) -> None:
    link = MemoryLink(bus, "a")
    link.call_driver("GetId")
    assert errors_of(link.take()) == [(
        "org.freedesktop.DBus.Error.AccessDenied",
        ["Client tried to send a message other than Hello without being registered"])]
    assert link.hello() == ":1.0"
    link.call_driver("Hello")
    assert errors_of(link.take()) == [("org.freedesktop.DBus.Error.Failed", ["Already handled an Hello message"])]
    bystander = MemoryLink(bus, "b")
    bystander.send(SIGNAL, path="/p", interface="com.example.X", member="Early", destination=link.unique_name)
    assert bystander.closed and link.take() == []


def test_the_wire_caches_keep_nothing_of_peers_that_left(bus: Bus) -> None:
    # Issue 13: caches keyed on client data never keep data of a peer that has gone. Calls to a peer by its
    # unique name put that name in the parsing caches (header fields, bus names); unique names never come
    # back, so under churn those entries were megabytes waiting for the caches to start over.
    import tracemalloc

    caller = MemoryLink(bus, "caller")
    caller.hello()

    def one_peer_comes_calls_and_goes() -> None:
        callee = MemoryLink(bus, "callee")
        callee.hello()
        call(caller, callee, 1, member="Ping")
        callee.drop("gone")

    for _ in range(50):  # warm: whatever is allocated once
        one_peer_comes_calls_and_goes()
    caller.take()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(2000):
            one_peer_comes_calls_and_goes()
        caller.take()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 200_000, f"{retained} bytes kept after 2000 peers came, were called and left"


def test_a_reply_that_arrives_after_its_caller_left_is_not_kept_in_the_wire_caches(bus: Bus) -> None:
    # The reply is parsed (and its header cached) after the caller's departure made the caches forget
    # its name; the bus, finding nobody by that name, has them forget it again.
    from busd.wire import message as wire_message

    caller, callee = MemoryLink(bus, "caller"), MemoryLink(bus, "callee")
    caller.hello(), callee.hello()
    call(caller, callee, 5)
    [(received, _)] = callee.take()
    departed = caller.unique_name
    caller.drop("gone")
    for _ in range(2):  # headers are cached from their second sighting
        callee.send(METHOD_RETURN, reply_serial=received.serial, destination=departed, signature="s",
                    body=["late"])
    cached = [*wire_message._FIELDS_CACHE.values(), *(h for h, _ in wire_message._REPLY_FIELDS_CACHE.values())]
    assert departed not in wire_message._KEYS_BY_UNIQUE_DESTINATION
    assert all(h.destination != departed for h in cached)


def test_a_sender_rule_sees_the_signals_of_a_peer_once_it_owns_the_name(bus: Bus) -> None:
    # Broadcast recipients are cached per sender; gaining (or losing) a name must not leave a stale answer.
    emitter, listener = MemoryLink(bus, "e"), MemoryLink(bus, "l")
    emitter.hello(), listener.hello()
    listener.call_driver("AddMatch", "s", ["type='signal',sender='com.example.Weather'"])
    listener.take()

    def rain() -> None:
        emitter.send(SIGNAL, path="/w", interface="com.example.Weather", member="Rain", signature="u", body=[3])

    rain()
    assert listener.take() == []
    emitter.call_driver("RequestName", "su", ["com.example.Weather", 0])
    emitter.take(), listener.take()
    rain()
    assert members(listener.take()) == [(SIGNAL, "Rain")]
    emitter.call_driver("ReleaseName", "s", ["com.example.Weather"])
    emitter.take(), listener.take()
    rain()
    assert listener.take() == []
