"""Live tests of behaviour where busd once differed from dbus-daemon (issue 11).

Each test runs the same scenario on busd and on dbus-daemon and demands the same
outcome. A monitor (a RawClient that called BecomeMonitor) shows what the bus did
even where no client is left to see it.
"""

from __future__ import annotations

import pytest

from buses import busd_available
from busclient import (  # noqa: F401  (fixtures)
    BUS_KINDS, DBUS, DBUS_PATH, ERROR_PREFIX, Message, RawClient, ToolProcess, busd_bugs, clients,
    run_tool, running_bus, shared_bus, start_bus_logged,
)
from busd.wire.marshal import Variant
from busd.wire.message import ERROR, METHOD_CALL, METHOD_RETURN, NO_REPLY_EXPECTED, SIGNAL

MONITORING = "org.freedesktop.DBus.Monitoring"
IFACE = "org.example.Deviations"
PATH = "/org/example/Deviations"
N = "org.example.Deviations"


def become_monitor(client: RawClient, rules: list[str] = ()) -> RawClient:
    """Make `client` a monitor; returns it once the bus has taken its unique name away."""
    assert client.call_driver("BecomeMonitor", "asu", [list(rules), 0], interface=MONITORING).type == METHOD_RETURN
    client.wait_signal("NameLost", body=[client.unique_name])
    client.backlog.clear()
    return client


def call_with_serial(client: RawClient, destination: str | None, member: str, serial: int, flags: int = 0,
                     interface: str = IFACE, path: str = PATH) -> int:
    return client.send(METHOD_CALL, serial=serial, destination=destination, path=path, interface=interface,
                       member=member, flags=flags)


def seen_until(watcher: RawClient, predicate, what: str) -> list[Message]:
    """Everything `watcher` received up to and including the first message satisfying `predicate`."""
    last = watcher.wait_for(predicate, what=what)
    seen, watcher.backlog = watcher.backlog, []
    return seen + [last]


# ---------------------------------------------------------------- 1. NameLost on disconnect


def test_a_disconnecting_owner_loses_each_name_before_its_owner_changes(clients):
    names = (f"{N}.Lost2", f"{N}.Lost1", f"{N}.Lost3")
    owner, heir = clients(), clients()
    for name in names:
        owner.request_name(name)
    heir.request_name(names[1])  # queued: it inherits this one
    monitor = become_monitor(clients(), [f"sender='{DBUS}'"])
    gone = owner.unique_name
    letter = {gone: "A", heir.unique_name: "B"}
    owner.close()
    seen = seen_until(monitor, lambda m: m.is_signal("NameOwnerChanged") and m.body[0] == gone,
                      f"NameOwnerChanged for {gone}")
    shown = [(m.member, letter.get(m.destination, m.destination), *(letter.get(v, v) for v in m.body))
             for m in seen if m.body and m.body[0] in (*names, gone)]
    # Names go in the reverse order of the requests, the unique name last; NameLost first for each.
    assert shown == [
        ("NameLost", "A", names[2]), ("NameOwnerChanged", None, names[2], "A", ""),
        ("NameLost", "A", names[1]), ("NameOwnerChanged", None, names[1], "A", "B"),
        ("NameAcquired", "B", names[1]),
        ("NameLost", "A", names[0]), ("NameOwnerChanged", None, names[0], "A", ""),
        ("NameLost", "A", "A"), ("NameOwnerChanged", None, "A", "A", ""),
    ]


# ---------------------------------------------------------------- 2. serials of calls awaiting a reply

SAME_SERIAL = "Message has the same reply serial as a currently-outstanding existing method call"


def test_a_call_reusing_the_serial_of_a_pending_call_to_the_same_callee_is_refused(clients):
    caller, callee = clients(), clients()
    callee.request_name(f"{N}.Callee")
    monitor = become_monitor(clients(), [f"interface='{IFACE}'", f"sender='{DBUS}',type='error'"])
    call_with_serial(caller, callee.unique_name, "First", 500)
    call_with_serial(caller, callee.unique_name, "Second", 500)
    # Through the well-known name too: the key is the connection that must answer.
    call_with_serial(caller, f"{N}.Callee", "Third", 500)
    errors = [caller.reply_to(500), caller.reply_to(500)]
    assert [(e.type, e.error_name, e.body) for e in errors] == [(ERROR, ERROR_PREFIX + "AccessDenied", [SAME_SERIAL])] * 2
    first = callee.wait_call("First")
    assert [m.member for m in callee.drain() if m.type == METHOD_CALL] == []
    # Monitors see each refused call, then its error.
    assert [m.member or m.error_name for m in seen_until(monitor, lambda m: m.type == ERROR, "an error")] == \
        ["First", "Second", ERROR_PREFIX + "AccessDenied"]
    # Answered, the serial is free again.
    callee.reply(first, "s", ["one"])
    assert caller.reply_to(500).body == ["one"]
    call_with_serial(caller, callee.unique_name, "Again", 500)
    assert callee.wait_call("Again").serial == 500


def test_a_serial_pending_with_one_callee_may_be_used_for_another(clients):
    caller, first, second = clients(), clients(), clients()
    call_with_serial(caller, first.unique_name, "Shared", 600)
    call_with_serial(caller, second.unique_name, "Shared", 600)
    first.reply(first.wait_call("Shared"), "s", ["first"])
    second.reply(second.wait_call("Shared"), "s", ["second"])
    # Both answers pass: each callee answers its own call.
    assert sorted(caller.reply_to(600).body[0] for _ in range(2)) == ["first", "second"]


def test_calls_expecting_no_reply_and_calls_to_the_bus_may_reuse_a_pending_serial(clients):
    caller, callee = clients(), clients()
    call_with_serial(caller, callee.unique_name, "Pending", 700)
    call_with_serial(caller, callee.unique_name, "NoReply", 700, flags=NO_REPLY_EXPECTED)
    call_with_serial(caller, DBUS, "GetId", 700, interface=DBUS, path=DBUS_PATH)
    assert caller.reply_to(700).type == METHOD_RETURN
    assert [m.member for m in callee.drain() if m.type == METHOD_CALL] == ["Pending", "NoReply"]
    assert [m.brief() for m in caller.drain()] == []


def marker_after(sender: RawClient, *watchers: RawClient) -> list[list[Message]]:
    """Each watcher's messages up to a signal `sender` emits now (the bus keeps one sender's order).

    The watchers must be monitors or have a rule matching member='Marker'.
    """
    sender.send(SIGNAL, path=PATH, interface=IFACE, member="Marker")
    return [[m for m in seen_until(w, lambda m: m.is_signal("Marker") and m.sender == sender.unique_name,
                                   "the marker signal")[:-1]] for w in watchers]


# ---------------------------------------------------------------- 3. unknown message types

UNKNOWN_TYPE = "Message bus will not accept messages of unknown type\n"


def test_a_message_of_unknown_type_is_not_delivered(clients):
    sender, recipient = clients(), clients()
    recipient.add_match("eavesdrop=true")
    monitor = become_monitor(clients(), [f"sender='{sender.unique_name}'", f"destination='{sender.unique_name}'"])
    for destination in (recipient.unique_name, DBUS):
        serial = sender.send(5, destination=destination, path=PATH, interface=IFACE, member="FromTheFuture")
        # dbus-daemon answers even though it is no call; monitors see the message, then the answer.
        error = sender.reply_to(serial)
        assert (error.error_name, error.body) == (ERROR_PREFIX + "AccessDenied", [UNKNOWN_TYPE])
    sender.send(7, destination=None, path=PATH, interface=IFACE, member="Broadcast")  # dropped, unseen
    recipient_saw, monitor_saw = marker_after(sender, recipient, monitor)
    assert [m.brief() for m in recipient_saw if m.sender == sender.unique_name] == []
    assert [(m.type, m.member or m.error_name) for m in monitor_saw] == [
        (5, "FromTheFuture"), (ERROR, ERROR_PREFIX + "AccessDenied"),
        (5, "FromTheFuture"), (ERROR, ERROR_PREFIX + "AccessDenied"),
    ]


def test_a_message_of_unknown_type_to_an_absent_name_meets_service_unknown(clients):
    sender = clients()
    serial = sender.send(6, destination=f"{N}.Absent", path=PATH, interface=IFACE, member="Nobody")
    assert sender.reply_to(serial).error_name == ERROR_PREFIX + "ServiceUnknown"


# ---------------------------------------------------------------- 4. calls without a destination

PEER = "org.freedesktop.DBus.Peer"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
EMPTY_NODE = ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
              '"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n<node>\n</node>\n')


def unknown_method(member: str, interface: str, signature: str = "") -> tuple:
    return ("error", ERROR_PREFIX + "UnknownMethod",
            f'Method "{member}" with signature "{signature}" on interface "{interface}" doesn\'t exist\n')


@pytest.mark.parametrize("interface, member, path, signature, body, answer", [
    (PEER, "Ping", "/", "", [], ("method_return", None)),
    (PEER, "Ping", PATH, "s", ["ignored"], ("method_return", None)),
    (PEER, "Frobnicate", PATH, "", [], ("error", ERROR_PREFIX + "UnknownMethod",
                                         f"Unknown method invoked on {PEER} interface")),
    (INTROSPECTABLE, "Introspect", DBUS_PATH, "", [], ("method_return", None, EMPTY_NODE)),
    (None, "Ping", PATH, "", [], unknown_method("Ping", "(null)")),
    (None, "GetId", DBUS_PATH, "", [], unknown_method("GetId", "(null)")),
    (DBUS, "GetId", DBUS_PATH, "", [], unknown_method("GetId", DBUS)),
    (DBUS, "Hello", DBUS_PATH, "", [], unknown_method("Hello", DBUS)),
    (DBUS, "RequestName", DBUS_PATH, "su", [f"{N}.NoDestination", 0], unknown_method("RequestName", DBUS, "su")),
    (IFACE, "Anything", PATH, "", [], unknown_method("Anything", IFACE)),
])
def test_the_bus_answers_a_call_without_destination_as_a_plain_peer(clients, interface, member, path, signature,
                                                                   body, answer):
    caller = clients()
    reply = caller.reply_to(caller.call(None, path, interface, member, signature, body))
    assert reply.brief() == answer
    assert (reply.sender, reply.destination) == (None, None)


def test_the_machine_id_is_served_to_a_call_without_destination(clients):
    caller = clients()
    machine_id = caller.call_driver("GetMachineId", interface=PEER).value()
    reply = caller.reply_to(caller.call(None, PATH, PEER, "GetMachineId"))
    assert reply.body == [machine_id]


def test_a_call_without_destination_is_seen_by_no_rule_and_no_monitor(clients):
    caller, listener, eavesdropper = clients(), clients(), clients()
    for kind in ("method_call", "method_return", "error"):
        listener.add_match(f"type='{kind}'")
        eavesdropper.add_match(f"type='{kind}',eavesdrop=true")
    for watcher in (listener, eavesdropper):
        watcher.add_match("member='Marker'")
        watcher.drain()
    monitor = become_monitor(clients(), [f"sender='{caller.unique_name}'", f"destination='{caller.unique_name}'"])
    for interface, member in ((PEER, "Ping"), (IFACE, "Unknown")):
        caller.reply_to(caller.call(None, PATH, interface, member))
    caller.send(METHOD_RETURN, reply_serial=77)
    caller.send(ERROR, reply_serial=78, error_name="org.example.Deviations.Error")
    seen = marker_after(caller, listener, eavesdropper, monitor)
    assert [[m.brief() for m in got if caller.unique_name in (m.sender, m.destination)] for got in seen] == [[], [], []]
    assert [m.brief() for m in caller.drain()] == []  # replies and errors get no answer


# ---------------------------------------------------------------- 5. what a connection sends before Hello

NOT_ACTIVE_YET = ":not.active.yet"


def test_monitors_see_what_an_unregistered_connection_sends_before_it_is_dropped(clients):
    recipient = clients()
    monitor = become_monitor(clients(), ["member='TooEarly'"])  # sender= cannot match a peer with no name
    sent = []
    for destination in (None, recipient.unique_name):
        newcomer = clients(hello=False)
        newcomer.send(SIGNAL, destination=destination, path=PATH, interface=IFACE, member="TooEarly")
        newcomer.wait_closed()
        sent.append(destination)
    seen = [monitor.wait_signal("TooEarly") for _ in sent]
    assert [(m.sender, m.destination) for m in seen] == [(NOT_ACTIVE_YET, d) for d in sent]


def test_monitors_see_a_driver_call_before_hello_and_its_refusal(clients):
    monitor = become_monitor(clients(), ["member='GetId'", "type='error'"])
    newcomer = clients(hello=False)
    error = newcomer.reply_to(newcomer.call(DBUS, DBUS_PATH, DBUS, "GetId"))
    assert (error.error_name, error.destination) == (ERROR_PREFIX + "AccessDenied", NOT_ACTIVE_YET)
    newcomer.hello()  # the refusal did not drop it
    seen = seen_until(monitor, lambda m: m.type == ERROR, "the refusal")
    assert [(m.kind, m.member or m.error_name, m.sender, m.destination) for m in seen] == [
        ("method_call", "GetId", NOT_ACTIVE_YET, DBUS),
        ("error", ERROR_PREFIX + "AccessDenied", DBUS, NOT_ACTIVE_YET),
    ]


def test_a_call_without_destination_before_hello_is_answered_and_keeps_the_connection(clients):
    newcomer = clients(hello=False)
    assert newcomer.reply_to(newcomer.call(None, PATH, PEER, "Ping")).type == METHOD_RETURN
    newcomer.send(METHOD_RETURN, reply_serial=1)  # no destination: ignored, not routed
    assert newcomer.reply_to(newcomer.call(None, PATH, IFACE, "Nothing")).error_name == ERROR_PREFIX + "UnknownMethod"
    assert newcomer.hello().startswith(":")


def test_gdbus_emit_without_hello_shows_in_dbus_monitor(shared_bus):
    with ToolProcess(shared_bus, "dbus-monitor", "--address", shared_bus.address,
                     f"interface='{IFACE}',member='PeerToPeer'") as monitor:
        monitor.output.wait_for("NameLost")  # dbus-monitor became a monitor
        run_tool(shared_bus, "gdbus", "emit", f"--address={shared_bus.address}", "--object-path", PATH,
                 "--signal", f"{IFACE}.PeerToPeer")
        line = monitor.output.wait_for("member=PeerToPeer")
    assert f"sender={NOT_ACTIVE_YET}" in line


# ---------------------------------------------------------------- 6. connections that never say Hello


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_a_connection_is_closed_at_auth_timeout_unless_it_said_hello(kind):
    if kind == "busd" and not busd_available():
        pytest.skip("the busd daemon is not built yet")
    bus, log = start_bus_logged(kind, '<limit name="auth_timeout">1000</limit>')
    try:
        with RawClient(bus.address) as registered, RawClient(bus.address, hello=False) as silent, \
                RawClient(bus.address, authenticate=False) as mute:
            silent.wait_closed()
            mute.wait_closed()
            # The registered client was accepted first, so its time was up before: Hello saved it.
            registered.sync()
            if kind == "busd":
                log.wait_for(r"dropping connection .*auth_timeout=1000ms")
    finally:
        bus.stop()


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_at_max_incomplete_connections_a_new_connection_waits_its_turn(kind):
    with running_bus(kind, '<limit name="max_incomplete_connections">2</limit>') as bus, \
            RawClient(bus.address, hello=False) as first, RawClient(bus.address, hello=False) as second, \
            RawClient(bus.address, authenticate=False) as third:
        first.hello()  # room for one more incomplete connection: the third is accepted
        third.authenticate()
        third.hello()
        second.hello()  # and nobody was dropped to make room


# ---------------------------------------------------------------- driver errors, word for word

PROPERTIES = "org.freedesktop.DBus.Properties"
STATS = "org.freedesktop.DBus.Debug.Stats"


@pytest.mark.parametrize("interface, member, signature, body, error, text", [
    (DBUS, "RequestName", "s", [f"{N}.Args"], "InvalidArgs", "Call to RequestName has wrong args (s, expected su)\n"),
    (DBUS, "GetId", "u", [1], "InvalidArgs", "Call to GetId has wrong args (u, expected )\n"),
    (DBUS, "AddMatch", "s", ["type='nonsense'"], "MatchRuleInvalid", "Invalid message type (nonsense) in match rule\n"),
    (DBUS, "AddMatch", "s", ["member='a',member='b'"], "MatchRuleInvalid", "Key member specified twice in match rule\n"),
    (DBUS, "AddMatch", "s", ["path='x'"], "MatchRuleInvalid", "Path 'x' is invalid\n"),
    (DBUS, "AddMatch", "s", ["arg64='x'"], "MatchRuleInvalid",
     "Key 'arg64' in match rule has arg number 64 but the maximum is 63.\n"),
    (DBUS, "AddMatch", "s", ["bogus='x'"], "MatchRuleInvalid", 'Unknown key "bogus" in match rule'),
    (DBUS, "AddMatch", "s", ["arg0x='x'"], "MatchRuleInvalid",
     "Key 'arg0x' in match rule contains junk after argument number (0). "
     "Only 'arg0path' (for example) or 'arg0namespace' are valid"),
    (DBUS, "RemoveMatch", "s", ["member='NeverAdded'"], "MatchRuleNotFound",
     "The given match rule wasn't found and can't be removed"),
    (PROPERTIES, "Get", "ss", [DBUS, "Nope"], "UnknownProperty", f'Property "{DBUS}.Nope" not found'),
    (PROPERTIES, "Get", "ss", [f"{N}.Iface", "Features"], "UnknownInterface", f'Interface "{N}.Iface" not found'),
    (PROPERTIES, "Set", "ssv", [DBUS, "Features", Variant("as", [])], "PropertyReadOnly",
     f"Property '{DBUS}.Features' cannot be set"),
    (MONITORING, "BecomeMonitor", "asu", [[], 1], "InvalidArgs", "BecomeMonitor does not support any flags yet"),
])
def test_driver_errors_are_worded_as_by_dbus_daemon(clients, interface, member, signature, body, error, text):
    reply = clients().call_driver(member, signature, body, interface=interface)
    assert (reply.error_name, reply.body) == (ERROR_PREFIX + error, [text])


@pytest.mark.parametrize("interface", [PEER, INTROSPECTABLE, PROPERTIES, MONITORING, STATS])
def test_the_driver_s_interfaces_without_properties_have_none(clients, interface):
    assert clients().call_driver("GetAll", "s", [interface], interface=PROPERTIES).value() == {}


def test_update_activation_environment_accepts_any_variable_name(clients):
    client = clients()
    assert client.call_driver("UpdateActivationEnvironment", "a{ss}", [{"A=B": "c", "": "d", "BUSD_OK": "e"}]).value() \
        is None


# ---------------------------------------------------------------- eavesdropping


def test_an_eavesdropper_sees_its_own_unicast_calls(clients):
    spy, callee = clients(), clients()
    spy.add_match("type='method_call',eavesdrop=true")
    spy.call(callee.unique_name, PATH, IFACE, "Watched")
    callee.wait_call("Watched")
    assert spy.wait_call("Watched").sender == spy.unique_name


def test_eavesdroppers_see_a_call_to_the_bus_after_what_it_caused(clients):
    spy, owner = clients(), clients()
    spy.add_match("type='method_call',eavesdrop=true,member='AddMatch'")
    # The rule an AddMatch adds already sees that AddMatch.
    assert spy.wait_call("AddMatch").sender == spy.unique_name
    spy.add_match("type='method_call',eavesdrop=true,member='RequestName'")
    spy.add_match(f"type='signal',member='NameOwnerChanged',arg0='{N}.Eavesdropped'")
    spy.drain()
    owner.request_name(f"{N}.Eavesdropped")
    # The signal the RequestName caused comes before the RequestName.
    seen = seen_until(spy, lambda m: m.member == "RequestName", "the eavesdropped RequestName")
    assert [(m.member, m.sender) for m in seen] == [("NameOwnerChanged", DBUS), ("RequestName", owner.unique_name)]
