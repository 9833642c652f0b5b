"""Live tests of routing: unicast, broadcast, SENDER stamping, reply tracking, timeouts, order and large messages."""

from __future__ import annotations

import os
import threading

import pytest

from busclient import (  # noqa: F401  (fixtures)
    BUS_KINDS, DBUS, DBUS_PATH, ERROR_PREFIX, RawClient, busd_bug, busd_bugs, clients,
    fresh_clients, running_bus, shared_bus, wait_owner, watch_name,
)
from busd.wire.marshal import BIG, LITTLE, Variant, marshal_body
from busd.wire.message import (
    ALLOW_INTERACTIVE_AUTHORIZATION, ERROR, METHOD_CALL, METHOD_RETURN, NO_AUTO_START, NO_REPLY_EXPECTED, SIGNAL,
    build_message,
)

IFACE = "org.example.Routing"
PATH = "/org/example/Routing"

# dbus-daemon lets unrequested replies through when a rule allows every send with
# eavesdrop="true" (as the test config and the stock session.conf do). These rules make
# it drop them, which busd's reply tracking always does; requested replies still pass.
STRICT_REPLIES = '<policy context="default"><deny send_type="method_return"/><deny send_type="error"/></policy>'
BUS_CONFIG = STRICT_REPLIES


def marker(sender: RawClient, receiver: RawClient, text: str) -> None:
    """Send `receiver` a unicast signal and wait for it: proof that everything `sender` sent before arrived.

    The bus keeps each sender's messages in order, so a message the bus dropped
    is one that did not arrive before the marker.
    """
    sender.emit(PATH, IFACE, "Marker", "s", [text], destination=receiver.unique_name)
    receiver.wait_for(lambda m: m.is_signal("Marker") and m.body == [text], what=f"marker {text!r}")


def only_marker_follows(sender: RawClient, receiver: RawClient, text: str = "end") -> list:
    """What `receiver` got from `sender` before the marker (the marker excluded)."""
    sender.emit(PATH, IFACE, "Marker", "s", [text], destination=receiver.unique_name)
    receiver.wait_for(lambda m: m.is_signal("Marker") and m.body == [text], what=f"marker {text!r}")
    before = [m.brief() for m in receiver.backlog if m.sender == sender.unique_name]
    receiver.backlog.clear()
    return before


# ---------------------------------------------------------------- unicast


def test_call_and_reply_between_unique_names(clients):
    caller, callee = clients(), clients()
    serial = caller.call(callee.unique_name, PATH, IFACE, "Echo", "sav", ["hi", []])
    call = callee.wait_call("Echo")
    assert (call.sender, call.destination, call.path, call.interface, call.body) == \
        (caller.unique_name, callee.unique_name, PATH, IFACE, ["hi", []])
    assert call.serial == serial
    callee.reply(call, "s", ["hi back"])
    reply = caller.reply_to(serial)
    assert (reply.type, reply.sender, reply.destination, reply.body) == \
        (METHOD_RETURN, callee.unique_name, caller.unique_name, ["hi back"])


def test_call_to_a_well_known_name_reaches_its_owner(clients):
    caller, callee = clients(), clients()
    callee.request_name("org.example.Routing.Service")
    serial = caller.call("org.example.Routing.Service", PATH, IFACE, "Ping")
    call = callee.wait_call("Ping")
    assert call.destination == "org.example.Routing.Service"
    assert call.sender == caller.unique_name
    callee.error(call, "org.example.Error.Nope", "no")
    reply = caller.reply_to(serial)
    assert (reply.type, reply.error_name, reply.body, reply.sender) == \
        (ERROR, "org.example.Error.Nope", ["no"], callee.unique_name)


def test_a_connection_may_call_itself(clients):
    client = clients()
    serial = client.call(client.unique_name, PATH, IFACE, "Self")
    call = client.wait_call("Self")
    client.reply(call, "u", [7])
    assert client.reply_to(serial).body == [7]


@pytest.mark.parametrize("forged", [":1.9999", DBUS, "org.example.Impostor"])
def test_the_bus_stamps_the_real_sender(clients, forged):
    liar, victim = clients(), clients()
    liar.send(METHOD_CALL, destination=victim.unique_name, path=PATH, interface=IFACE, member="Forged",
              sender=forged, flags=NO_REPLY_EXPECTED)
    liar.send(SIGNAL, destination=victim.unique_name, path=PATH, interface=IFACE, member="ForgedSignal",
              sender=forged)
    assert victim.wait_call("Forged").sender == liar.unique_name
    assert victim.wait_signal("ForgedSignal").sender == liar.unique_name


def test_big_endian_messages_pass_with_serial_flags_and_body_intact(clients):
    sender, receiver = clients(), clients()
    receiver.add_match(f"type='signal',sender='{sender.unique_name}',arg0='big'")
    flags = NO_AUTO_START | ALLOW_INTERACTIVE_AUTHORIZATION
    serial = sender.next_serial()
    sender.send_bytes(build_message(METHOD_CALL, serial, destination=receiver.unique_name, path=PATH,
                                    interface=IFACE, member="BigEndian", signature="sa{sv}",
                                    body=["big", {"k": Variant("u", 5)}], flags=flags, endian=BIG))
    sender.send_bytes(build_message(SIGNAL, sender.next_serial(), path=PATH, interface=IFACE, member="BigEndian",
                                    signature="s", body=["big"], endian=BIG))
    call = receiver.wait_call("BigEndian")
    assert (call.serial, call.flags, call.sender, call.body) == \
        (serial, flags, sender.unique_name, ["big", {"k": Variant("u", 5)}])
    # The byte order a recipient gets may differ (dbus-daemon swaps what it had to read); the content may not.
    signal = receiver.wait_signal("BigEndian")
    assert (signal.sender, signal.body) == (sender.unique_name, ["big"])


def test_unknown_header_fields_are_not_passed_on(clients):
    sender, receiver = clients(), clients()
    fields = [(6, Variant("s", receiver.unique_name)), (1, Variant("o", PATH)), (3, Variant("s", "Unknown")),
              (42, Variant("s", "private")), (7, Variant("s", ":1.9999")), (200, Variant("u", 1))]
    head = bytearray(marshal_body("yyyyuua(yv)", [LITTLE, METHOD_CALL, NO_REPLY_EXPECTED, 1, 0,
                                                  sender.next_serial(), fields]))
    sender.send_bytes(bytes(head + b"\0" * (-len(head) % 8)))
    call = receiver.wait_call("Unknown")
    assert call.header.unknown_spans is None
    assert (call.sender, call.path, call.destination) == (sender.unique_name, PATH, receiver.unique_name)


@pytest.mark.parametrize("flags, error", [(0, "ServiceUnknown"), (NO_AUTO_START, "NameHasNoOwner")])
def test_call_to_an_absent_well_known_name(clients, flags, error):
    caller = clients()
    serial = caller.call("org.example.Routing.Absent", PATH, IFACE, "Anyone", flags=flags)
    reply = caller.reply_to(serial)
    assert (reply.type, reply.error_name, reply.sender) == (ERROR, ERROR_PREFIX + error, DBUS)


def test_call_to_an_absent_unique_name(clients):
    caller = clients()
    reply = caller.reply_to(caller.call(":1.9999", PATH, IFACE, "Anyone"))
    assert (reply.type, reply.error_name, reply.sender) == (ERROR, ERROR_PREFIX + "ServiceUnknown", DBUS)


def test_call_to_an_absent_unique_name_without_auto_start(clients):
    caller = clients()
    reply = caller.reply_to(caller.call(":1.9999", PATH, IFACE, "Anyone", flags=NO_AUTO_START))
    assert (reply.type, reply.error_name) == (ERROR, ERROR_PREFIX + "NameHasNoOwner")


def test_no_reply_expected_to_an_absent_name_gets_no_error(clients, shared_bus):
    if shared_bus.kind == "dbus-daemon":
        pytest.skip("dbus-daemon sends the error anyway; the spec says the reply should be omitted")
    caller = clients()
    caller.call("org.example.Routing.Absent", PATH, IFACE, "Anyone", flags=NO_REPLY_EXPECTED)
    caller.call(":1.9999", PATH, IFACE, "Anyone", flags=NO_REPLY_EXPECTED)
    assert [m.brief() for m in caller.drain()] == []


def test_a_call_without_destination_is_not_a_call_to_the_bus(clients):
    client = clients()
    reply = client.reply_to(client.call(None, DBUS_PATH, DBUS, "RequestName", "su", ["org.example.NoDest", 0]))
    assert (reply.type, reply.error_name) == (ERROR, ERROR_PREFIX + "UnknownMethod")
    assert client.driver_value("NameHasOwner", "s", ["org.example.NoDest"]) is False


# ---------------------------------------------------------------- reply tracking


def test_a_reply_nobody_asked_for_is_dropped(clients):
    a, b = clients(), clients()
    b.send(METHOD_RETURN, destination=a.unique_name, reply_serial=4242)
    b.send(ERROR, destination=a.unique_name, reply_serial=4243, error_name="org.example.Error.Unasked")
    assert only_marker_follows(b, a) == []


def test_only_the_first_reply_passes_and_only_from_the_callee(clients):
    caller, callee, stranger = clients(), clients(), clients()
    serial = caller.call(callee.unique_name, PATH, IFACE, "Once")
    call = callee.wait_call("Once")
    stranger.send(METHOD_RETURN, destination=caller.unique_name, reply_serial=serial, signature="s",
                  body=["stranger"])
    assert only_marker_follows(stranger, caller) == []
    callee.reply(call, "s", ["first"])
    callee.reply(call, "s", ["second"])
    assert caller.reply_to(serial).body == ["first"]
    assert only_marker_follows(callee, caller) == []


def test_no_reply_expected_calls_arrive_flagged_and_their_replies_are_dropped(clients):
    caller, callee = clients(), clients()
    serial = caller.call(callee.unique_name, PATH, IFACE, "FireAndForget", flags=NO_REPLY_EXPECTED)
    call = callee.wait_call("FireAndForget")
    assert call.flags & NO_REPLY_EXPECTED
    callee.reply(call, "s", ["unwanted"])
    assert only_marker_follows(callee, caller) == []
    assert call.serial == serial


def test_every_pending_caller_gets_no_reply_when_the_callee_disconnects(clients):
    first, second, callee = clients(), clients(), clients()
    serials = [first.call(callee.unique_name, PATH, IFACE, "Never"),
               first.call(callee.unique_name, PATH, IFACE, "Never")]
    other = second.call(callee.unique_name, PATH, IFACE, "Never")
    for _ in range(3):
        callee.wait_call("Never")
    callee.close()
    for client, serial in [(first, serials[0]), (first, serials[1]), (second, other)]:
        reply = client.reply_to(serial)
        assert (reply.type, reply.error_name, reply.sender) == (ERROR, ERROR_PREFIX + "NoReply", DBUS)


def test_any_message_to_an_absent_name_is_answered_with_an_error(clients):
    caller, callee = clients(), clients()
    caller.call(callee.unique_name, PATH, IFACE, "Late")
    call = callee.wait_call("Late")
    name = caller.unique_name
    watch_name(callee, name)
    caller.close()
    wait_owner(callee, name, "")
    serials = [callee.reply(call, "s", ["too late"]),
               callee.emit(PATH, IFACE, "Lost", destination="org.example.Routing.Nobody"),
               callee.send(SIGNAL, path=PATH, interface=IFACE, member="Lost", destination=":1.9999",
                           flags=NO_AUTO_START)]
    errors = {m.reply_serial: m.error_name for m in callee.drain() if m.type == ERROR}
    assert errors == dict(zip(serials, [ERROR_PREFIX + "ServiceUnknown", ERROR_PREFIX + "ServiceUnknown",
                                        ERROR_PREFIX + "NameHasNoOwner"]))


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_reply_timeout(kind):
    with running_bus(kind, '<limit name="reply_timeout">300</limit>' + STRICT_REPLIES) as bus, \
            RawClient(bus.address) as caller, RawClient(bus.address) as callee:
        serial = caller.call(callee.unique_name, PATH, IFACE, "Slow")
        call = callee.wait_call("Slow")
        reply = caller.reply_to(serial, timeout=5)
        assert (reply.type, reply.error_name, reply.sender) == (ERROR, ERROR_PREFIX + "NoReply", DBUS)
        # The late answer finds no pending call and is dropped.
        callee.reply(call)
        assert only_marker_follows(callee, caller) == []


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_max_replies_per_connection(kind):
    with running_bus(kind, '<limit name="max_replies_per_connection">2</limit>') as bus, \
            RawClient(bus.address) as caller, RawClient(bus.address) as callee:
        serials = [caller.call(callee.unique_name, PATH, IFACE, "Pending") for _ in range(3)]
        reply = caller.reply_to(serials[2])
        assert (reply.type, reply.error_name) == (ERROR, ERROR_PREFIX + "LimitsExceeded")
        calls = [callee.wait_call("Pending") for _ in range(2)]
        assert [c.serial for c in calls] == serials[:2]
        callee.reply(calls[0])
        assert caller.reply_to(serials[0]).type == METHOD_RETURN
        # One reply is pending again, so there is room for one more.
        serial = caller.call(callee.unique_name, PATH, IFACE, "Pending")
        assert callee.wait_call("Pending").serial == serial


# ---------------------------------------------------------------- signals


def test_a_broadcast_signal_reaches_matching_rules_only(clients):
    sender, listener, deaf = clients(), clients(), clients()
    listener.add_match(f"type='signal',interface='{IFACE}'")
    deaf.add_match("type='signal',interface='org.example.Other'")
    sender.add_match(f"type='signal',interface='{IFACE}',member='Broadcast'")
    sender.emit(PATH, IFACE, "Broadcast", "i", [1])
    for client in (listener, sender):
        signal = client.wait_signal("Broadcast")
        assert (signal.sender, signal.destination, signal.body) == (sender.unique_name, None, [1])
    marker(sender, deaf, "done")
    assert [m.brief() for m in deaf.backlog] == []


def test_a_unicast_signal_reaches_its_destination_only(clients):
    sender, target, bystander = clients(), clients(), clients()
    bystander.add_match(f"type='signal',interface='{IFACE}'")
    target.request_name("org.example.Routing.Target")
    sender.emit(PATH, IFACE, "Direct", "s", ["to you"], destination="org.example.Routing.Target")
    signal = target.wait_signal("Direct")
    assert (signal.sender, signal.destination) == (sender.unique_name, "org.example.Routing.Target")
    # Without eavesdrop='true', a match rule never shows someone else's unicast signal.
    sender.emit(PATH, IFACE, "Broadcast", "s", ["for all"])
    assert bystander.wait_signal("Broadcast").body == ["for all"]
    assert [m.brief() for m in bystander.backlog] == []


def test_per_sender_order_is_kept_across_message_kinds(clients):
    sender, receiver = clients(), clients()
    receiver.add_match(f"type='signal',sender='{sender.unique_name}'")
    receiver.request_name("org.example.Routing.Ordered")
    sent = []
    for i in range(300):
        kind = i % 3
        if kind == 0:
            sent.append(sender.call(receiver.unique_name, PATH, IFACE, "Step", "u", [i], flags=NO_REPLY_EXPECTED))
        elif kind == 1:
            sent.append(sender.emit(PATH, IFACE, "Step", "u", [i]))
        else:
            sent.append(sender.emit(PATH, IFACE, "Step", "u", [i], destination="org.example.Routing.Ordered"))
    got = [receiver.wait_for(lambda m: m.member == "Step").body[0] for _ in sent]
    assert got == list(range(300))


# ---------------------------------------------------------------- large messages


def _relay_large(bus_address: str, size: int) -> None:
    with RawClient(bus_address) as sender, RawClient(bus_address) as receiver:
        payload = os.urandom(1024) * (size // 1024)
        message_serial = sender.next_serial()
        data = build_message(METHOD_CALL, message_serial, destination=receiver.unique_name, path=PATH,
                             interface=IFACE, member="Big", signature="ay", body=[payload])
        writer = threading.Thread(target=sender.send_bytes, args=(data,))
        writer.start()
        try:
            call = receiver.wait_call("Big", timeout=60)
        finally:
            writer.join(60)
        assert call.body[0] == payload
        receiver.reply(call, "u", [len(call.body[0])])
        assert sender.reply_to(message_serial, timeout=30).body == [size]


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_a_message_of_tens_of_mib_passes_intact(kind):
    with running_bus(kind) as bus:
        _relay_large(bus.address, 24 << 20)


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_a_message_over_max_message_size_drops_its_sender(kind):
    with running_bus(kind, '<limit name="max_message_size">65536</limit>') as bus, \
            RawClient(bus.address) as sender, RawClient(bus.address) as receiver:
        watch_name(receiver, sender.unique_name)
        sender.call(receiver.unique_name, PATH, IFACE, "TooBig", "ay", [b"x" * 70000])
        sender.wait_closed()
        wait_owner(receiver, sender.unique_name, "")
        assert [m.member for m in receiver.backlog if m.type == METHOD_CALL] == []
