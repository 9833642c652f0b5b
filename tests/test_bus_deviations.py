"""Live tests of behaviour where busd once differed from dbus-daemon (issue 11).

Each test runs the same scenario on busd and on dbus-daemon and demands the same
outcome. A monitor (a RawClient that called BecomeMonitor) shows what the bus did
even where no client is left to see it.
"""

from __future__ import annotations

from busclient import (  # noqa: F401  (fixtures)
    DBUS, DBUS_PATH, ERROR_PREFIX, Message, RawClient, busd_bug, busd_bugs, clients, shared_bus, wait_owner,
    watch_name,
)
from busd.wire.message import ERROR, METHOD_CALL, METHOD_RETURN, NO_REPLY_EXPECTED

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
