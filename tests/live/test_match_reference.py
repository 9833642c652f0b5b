"""Match rules checked against dbus-daemon: which rules it accepts, which it treats as equal, whom it delivers to."""

from __future__ import annotations

import pytest
import itertools
from busd.bus.match import MatchRule, MatchRuleInvalid, MatchRuleNotFound, SIGNAL
from busd.bus.match_index import MatchIndex
from jeepney import DBusAddress, HeaderFields, new_method_call, new_signal
from jeepney.io.blocking import open_dbus_connection
from jeepney import MessageType
from test_match import BUS_DRIVER, INVALID_RULES, Msg


def _driver_call(conn, method: str, rule: str) -> str | None:
    """Call AddMatch/RemoveMatch; the D-Bus error name, or None on success."""
    reply = conn.send_and_get_reply(new_method_call(BUS_DRIVER, method, "s", (rule,)), timeout=10)
    if reply.header.message_type == MessageType.error:
        return reply.header.fields[HeaderFields.error_name]
    return None


TRICKY_RULES = [text for text, _ in INVALID_RULES] + [
    "type='signal'", "type=signal", "type='signal',", "", "=x", ",,", "path_namespace='/'", "arg0=''",
    "arg63='x'", "arg0path=''", "arg0namespace=':1.3'", "sender=':1'", "sender=':'", "arg0='Ä'",
    "arg010='x'", "arg0x10='x'", "arg+3='y'", "eavesdrop='true',eavesdrop='false'",
    ",".join(f"arg{i}=x" for i in range(16)) + ",bogus=x",
    r"arg0=\',arg1=\,arg2=',',arg3=\\",
]


EQUALITY_PAIRS = [
    ("arg010='x'", "arg8='x'"),
    ("arg0x10='x'", "arg16='x'"),
    ("arg+3='y'", "arg3='y'"),
    ("arg1path='/a/',arg3='b'", "arg3='b',arg1path='/a/'"),
    (r"arg0=''\''',arg1='\',arg2=',',arg3='\\'", r"arg0=\',arg1=\,arg2=',',arg3=\\"),
    ("eavesdrop='true',eavesdrop='false'", ""),
    ("eavesdrop='true'", ""),
    ("type='signal',member='A'", "member='A',type=signal"),
    ("arg0='a'", "arg0path='a'"),
    ("path='/a'", "path_namespace='/a'"),
    ("sender=':1.1'", "destination=':1.1'"),
    ("arg0=a\\'b", r"arg0='a'\''b'"),
    ("arg0=a\\b", "arg0='a\\b'"),
    (",".join(f"arg{i}=x" for i in range(16)) + ",bogus=x", ",".join(f"arg{i}=x" for i in range(16))),
]


DELIVERY_RULES = [
    "",
    "type='signal'",
    "type='method_call'",
    "interface='com.example.A'",
    "member='Ping'",
    "path='/a'",
    "path_namespace='/a'",
    "sender='com.example.Sender'",
    "sender='com.example.Nobody'",
    "arg0='x'",
    "arg0path='/a/'",
    "arg1path='/a/b'",
    "arg0namespace='com.example'",
    "eavesdrop='true'",
    "eavesdrop='true',interface='com.example.B'",
    "destination='{dest}',eavesdrop='true'",
    "destination='{dest}'",
    "destination='com.example.Dest',eavesdrop='true'",
]


# (interface, member, path, signature, body, unicast)
DELIVERY_MESSAGES = [
    ("com.example.A", "Ping", "/a", "s", ("x",), False),
    ("com.example.A", "Ping", "/a/b", "so", ("/a/c", "/a/b"), False),
    ("com.example.B", "Pong", "/ab", "s", ("com.example.x",), False),
    ("com.example.B", "Ping", "/b", "o", ("/a/x",), False),
    ("com.example.B", "Ping", "/b", "o", ("/a",), False),
    ("com.example.A", "Ping", "/a", "s", ("x",), True),
    ("com.example.B", "Pong", "/a/b", "g", ("x",), True),
    ("com.example.A", "Other", "/c", "", (), False),
]


SENTINEL = DBusAddress("/sentinel", interface="com.example.Sentinel")


def test_validity_agrees_with_dbus_daemon(reference_bus):
    conn = open_dbus_connection(reference_bus.address)
    try:
        for text in TRICKY_RULES:
            error = _driver_call(conn, "AddMatch", text)
            try:
                MatchRule.parse(text)
                ours = None
            except MatchRuleInvalid as exc:
                ours = exc.error_name
            assert ours == error, text
    finally:
        conn.close()


def test_equality_agrees_with_dbus_daemon_remove_match(reference_bus):
    conn = open_dbus_connection(reference_bus.address)
    try:
        for added, removed in EQUALITY_PAIRS:
            assert _driver_call(conn, "AddMatch", added) is None
            equal = MatchRule.parse(added) == MatchRule.parse(removed)
            error = _driver_call(conn, "RemoveMatch", removed)
            assert (error is None) == equal, (added, removed)
            if error is not None:
                assert _driver_call(conn, "RemoveMatch", added) is None
    finally:
        conn.close()


@pytest.mark.parametrize("leaver_has_rules", [False, True])
def test_disconnect_and_rules_naming_the_unique_name_agree_with_dbus_daemon(reference_bus, leaver_has_rules):
    watcher = open_dbus_connection(reference_bus.address)
    leaver = open_dbus_connection(reference_bus.address)
    try:
        gone = leaver.unique_name
        about = f"sender='{gone}'"
        assert _driver_call(watcher, "AddMatch", about) is None
        assert _driver_call(watcher, "AddMatch", f"type='signal',member='NameOwnerChanged',arg0='{gone}'") is None
        if leaver_has_rules:
            assert _driver_call(leaver, "AddMatch", "member='Foo'") is None
        leaver.close()
        while True:  # wait until the bus has processed the disconnection
            msg = watcher.receive(timeout=10)
            if msg.header.fields.get(HeaderFields.member) == "NameOwnerChanged" and msg.body[0] == gone:
                break
        daemon_error = _driver_call(watcher, "RemoveMatch", about)
    finally:
        watcher.close()
    index = MatchIndex()
    index.add("watcher", MatchRule.parse(about))
    if leaver_has_rules:
        index.add("leaver", MatchRule.parse("member='Foo'"))
    index.remove_owner("leaver", unique_name=gone)
    try:
        index.remove("watcher", MatchRule.parse(about))
        ours = None
    except MatchRuleNotFound as exc:
        ours = exc.error_name
    assert ours == daemon_error
    assert (ours is None) is not leaver_has_rules


def test_recipients_agree_with_dbus_daemon_delivery(reference_bus):
    """Each receiver holds one rule; the index must pick the receivers dbus-daemon delivered to."""
    address = reference_bus.address
    sender = open_dbus_connection(address)
    dest = open_dbus_connection(address)
    receivers = [open_dbus_connection(address) for _ in DELIVERY_RULES]
    try:
        reply = sender.send_and_get_reply(new_method_call(BUS_DRIVER, "RequestName", "su",
                                                          ("com.example.Sender", 4)), timeout=10)
        assert reply.body == (1,)
        reply = dest.send_and_get_reply(new_method_call(BUS_DRIVER, "RequestName", "su",
                                                        ("com.example.Dest", 4)), timeout=10)
        assert reply.body == (1,)
        rules = [text.format(dest=dest.unique_name) for text in DELIVERY_RULES]
        index = MatchIndex()
        for position, (conn, text) in enumerate(zip(receivers, rules)):
            assert _driver_call(conn, "AddMatch", text) is None
            assert _driver_call(conn, "AddMatch", "type='signal',interface='com.example.Sentinel'") is None
            index.add(position, MatchRule.parse(text))
        serials = itertools.count(100)
        expected: dict[int, set[int]] = {}
        for interface, member, path, signature, body, unicast in DELIVERY_MESSAGES:
            msg = new_signal(DBusAddress(path, interface=interface), member, signature, body)
            if unicast:
                msg.header.fields[HeaderFields.destination] = dest.unique_name
            serial = next(serials)
            sender.send(msg, serial=serial)
            ours = Msg(type=SIGNAL, sender=sender.unique_name, interface=interface, member=member, path=path,
                       destination=dest.unique_name if unicast else None, signature=signature, body=list(body))
            expected[serial] = index.recipients(ours, ("com.example.Sender",), ours.args,
                                                recipient_names=(dest.unique_name, "com.example.Dest"))
        sender.send(new_signal(SENTINEL, "Done"), serial=next(serials))
        delivered: dict[int, set[int]] = {serial: set() for serial in expected}
        for position, conn in enumerate(receivers):
            while True:  # messages arrive in order, so the sentinel comes last
                msg = conn.receive(timeout=10)
                if msg.header.fields.get(HeaderFields.interface) == "com.example.Sentinel":
                    break
                if msg.header.fields.get(HeaderFields.sender) == sender.unique_name:
                    delivered[msg.header.serial].add(position)
        assert delivered == expected
    finally:
        for conn in (sender, dest, *receivers):
            conn.close()
