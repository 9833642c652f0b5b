"""Live tests of monitors (org.freedesktop.DBus.Monitoring.BecomeMonitor), with a raw client and dbus-monitor."""

from __future__ import annotations

import pytest

from busclient import (  # noqa: F401  (fixtures)
    DBUS, ERROR_PREFIX, Message, RawClient, ToolProcess, busd_bug, busd_bugs, clients, run_tool, shared_bus,
    wait_owner, watch_name,
)
from busd.wire.message import ERROR, METHOD_RETURN

MONITORING = "org.freedesktop.DBus.Monitoring"
IFACE = "org.example.Monitor"
PATH = "/org/example/Monitor"


def become_monitor(client: RawClient, rules: list[str] = ()) -> None:
    assert client.call_driver("BecomeMonitor", "asu", [list(rules), 0], interface=MONITORING).type == METHOD_RETURN


def seen_until(monitor: RawClient, end_member: str) -> list[Message]:
    """Everything the monitor got up to and including the signal `end_member`."""
    end = monitor.wait_for(lambda m: m.member == end_member, what=f"{end_member} at the monitor")
    seen, monitor.backlog = monitor.backlog, []
    return seen + [end]


def test_become_monitor_gives_up_every_name(clients):
    monitor, observer = clients(), clients()
    monitor.request_name("org.example.Monitor.Owned")
    monitor.add_match("type='signal'")
    name = monitor.unique_name
    watch_name(observer, name)
    watch_name(observer, "org.example.Monitor.Owned")
    become_monitor(monitor)
    # The unique name goes first, then each well-known name, as from dbus-daemon.
    assert [m.body for m in (wait_owner(observer, name, ""), wait_owner(observer, "org.example.Monitor.Owned", ""))] \
        == [[name, name, ""], ["org.example.Monitor.Owned", name, ""]]
    names = observer.driver_value("ListNames")
    assert name not in names and "org.example.Monitor.Owned" not in names
    assert observer.driver_error("GetNameOwner", "s", [name]) == ERROR_PREFIX + "NameHasNoOwner"
    reply = observer.reply_to(observer.call(name, PATH, IFACE, "AnyoneThere"))
    assert (reply.type, reply.error_name) == (ERROR, ERROR_PREFIX + "ServiceUnknown")


def test_the_monitor_hears_it_lost_its_names(clients):
    monitor = clients()
    monitor.request_name("org.example.Monitor.Lost")
    become_monitor(monitor)
    lost = [monitor.wait_signal("NameLost").body for _ in range(2)]
    assert lost == [[monitor.unique_name], ["org.example.Monitor.Lost"]]


def test_a_monitor_sees_every_message_in_order(clients):
    a, b, monitor = clients(), clients(), clients()
    become_monitor(monitor)
    b.request_name("org.example.Monitor.B")
    serial = a.call("org.example.Monitor.B", PATH, IFACE, "Method", "s", ["hi"])
    call = b.wait_call("Method")
    b.reply(call, "s", ["ho"])
    a.reply_to(serial)
    a.emit(PATH, IFACE, "Broadcast")  # nobody has a match rule for it
    a.emit(PATH, IFACE, "Unicast", destination=b.unique_name)
    b.wait_signal("Unicast")
    b.error(call, "org.example.Error.Late", "unrequested")  # dropped, but the monitor still sees it
    b.sync()  # the bus has handled b's error before a's End: no order holds between two senders
    a.emit(PATH, IFACE, "End")
    seen = seen_until(monitor, "End")
    from_a = [m.brief() for m in seen if m.sender == a.unique_name]
    assert from_a == [("method_call", "Method", "hi"), ("signal", "Broadcast"), ("signal", "Unicast"),
                      ("signal", "End")]
    from_b = [m.brief() for m in seen if m.sender == b.unique_name]
    assert from_b == [("method_call", "RequestName", "org.example.Monitor.B", 0), ("method_return", None, "ho"),
                      ("error", "org.example.Error.Late", "unrequested"), ("method_call", "Ping")]
    from_bus_to_b = [m.brief() for m in seen if m.sender == DBUS and m.destination == b.unique_name]
    assert from_bus_to_b == [("signal", "NameAcquired", "org.example.Monitor.B"), ("method_return", None, 1),
                             ("method_return", None)]
    assert ("signal", "NameOwnerChanged", "org.example.Monitor.B", "", b.unique_name) in \
        [m.brief() for m in seen if m.sender == DBUS]


def test_a_monitor_sees_messages_the_bus_could_not_deliver(clients):
    a, monitor = clients(), clients()
    become_monitor(monitor)
    a.reply_to(a.call(":1.9999", PATH, IFACE, "ToNobody"))
    a.emit(PATH, IFACE, "End")
    seen = [m.brief() for m in seen_until(monitor, "End")]
    assert ("method_call", "ToNobody") in seen
    assert seen.index(("method_call", "ToNobody")) < \
        [i for i, m in enumerate(seen) if m[1] == ERROR_PREFIX + "ServiceUnknown"][0]


def test_monitor_rules_filter_and_see_unicast_too(clients):
    a, b, monitor = clients(), clients(), clients()
    become_monitor(monitor, [f"type='signal',interface='{IFACE}',member='Wanted'", "member='End'"])
    a.emit(PATH, IFACE, "Wanted", "s", ["broadcast"])
    a.emit(PATH, IFACE, "Wanted", "s", ["unicast"], destination=b.unique_name)
    a.emit(PATH, IFACE, "Unwanted")
    a.call(b.unique_name, PATH, IFACE, "Wanted", flags=0x1)  # a call, not a signal
    a.emit(PATH, IFACE, "End")
    seen = [m.brief() for m in seen_until(monitor, "End") if m.sender == a.unique_name]
    assert seen == [("signal", "Wanted", "broadcast"), ("signal", "Wanted", "unicast"), ("signal", "End")]


@pytest.mark.parametrize("flags, rules, error", [(1, [], "InvalidArgs"), (0, ["type='bogus'"], "MatchRuleInvalid")])
def test_become_monitor_errors(clients, flags, rules, error):
    client = clients()
    assert client.driver_error("BecomeMonitor", "asu", [rules, flags], interface=MONITORING) == ERROR_PREFIX + error
    assert client.driver_value("GetNameOwner", "s", [client.unique_name]) == client.unique_name


def test_a_monitor_that_sends_is_dropped(clients):
    monitor, observer = clients(), clients()
    name = monitor.unique_name
    become_monitor(monitor)
    monitor.emit(PATH, IFACE, "FromAMonitor")
    monitor.wait_closed()
    observer.add_match(f"type='signal',interface='{IFACE}'")
    observer.emit(PATH, IFACE, "Check")
    assert [m.member for m in observer.drain() if m.is_signal()] == ["Check"]
    assert name not in observer.driver_value("ListNames")


def test_dbus_monitor_prints_traffic(shared_bus):
    with ToolProcess(shared_bus, "dbus-monitor", "--address", shared_bus.address) as monitor:
        monitor.output.wait_for(r"member=NameLost")  # it is a monitor now
        run_tool(shared_bus, "dbus-send", "--session", "--type=signal", PATH, f"{IFACE}.FromDbusSend",
                 "string:hello", "int32:42")
        line = monitor.output.wait_for(rf"interface={IFACE}; member=FromDbusSend")
        assert line.startswith("signal ") and "destination=(null destination)" in line
        assert monitor.output.wait_for(r"^\s+string ").strip() == 'string "hello"'
        assert monitor.output.wait_for(r"^\s+int32 ").strip() == "int32 42"
