"""Live tests of match rules: the grammar and its quoting, what each key matches, AddMatch/RemoveMatch bookkeeping."""

from __future__ import annotations

import pytest

from busclient import (  # noqa: F401  (fixtures)
    BUS_KINDS, DBUS, ERROR_PREFIX, RawClient, busd_bug, busd_bugs, clients, running_bus, shared_bus,
    wait_owner, watch_name,
)
from busd.wire.marshal import Variant
from busd.wire.message import METHOD_CALL, METHOD_RETURN, NO_REPLY_EXPECTED

IFACE = "org.example.Match"
PATH = "/org/example/Match"

# (rule text, accepted?) -- what dbus-daemon 1.14 answers to AddMatch.
GRAMMAR = [
    ("", True), ("type='signal'", True), ("type='method_call'", True), ("type='method_return'", True),
    ("type='error'", True), ("type='bogus'", False), ("type=signal", True), ("type=''", False),
    ("type='signal',", True), (",type='signal'", False), ("type='signal',,member='X'", False),
    (" type='signal'", True), ("type ='signal'", True), ("type= 'signal'", False), ("type='signal' ", False),
    ("member='X',type='signal'", True), ("type='signal',type='signal'", False),
    ("sender='org.example.A'", True), ("sender=':1.5'", True), ("sender='bad..name'", False),
    ("sender='org.freedesktop.DBus'", True),
    ("interface='org.example.I'", True), ("interface='noDots'", False), ("interface='bad..i'", False),
    ("member='Valid_1'", True), ("member='1bad'", False), ("member='a.b'", False),
    ("path='/a/b'", True), ("path='/a/b/'", False), ("path='a'", False),
    ("path_namespace='/a'", True), ("path_namespace='/'", True), ("path='/a',path_namespace='/a'", False),
    ("destination=':1.1'", True), ("destination='org.example.D'", True), ("destination='bad..'", False),
    ("arg0='x'", True), ("arg63='x'", True), ("arg64='x'", False), ("arg0path='/a/'", True),
    ("arg0namespace='org.example'", True), ("arg0namespace='org'", True), ("arg1namespace='org.example'", False),
    ("arg0namespace='bad..'", False), ("arg0namespace=''", False),
    ("arg010='x'", True), ("arg00='x'", True), ("argx='x'", False), ("arg='x'", False),
    ("arg0='x',arg0='y'", False), ("arg0='x',arg0path='/y'", False), ("arg0=''", True),
    ("arg0='it'\\''s'", True), ("arg0='a,b'", True), ("arg0=a\\'b", True), ("arg0='unterminated", False),
    ('arg0="dq"', True), ("arg0='a\\,b'", True),
    ("eavesdrop='true'", True), ("eavesdrop='false'", True), ("eavesdrop='maybe'", False),
    ("unknown='x'", False), ("type", False), ("type=", False),
    (",".join(["member='X'"] * 17), False),
]


def test_grammar_accepts_and_rejects_what_dbus_daemon_does(clients):
    client = clients()
    answers = {}
    for rule, _ in GRAMMAR:
        reply = client.call_driver("AddMatch", "s", [rule])
        answers[rule] = reply.type == METHOD_RETURN
        assert answers[rule] or reply.error_name == ERROR_PREFIX + "MatchRuleInvalid", rule
    assert answers == dict(GRAMMAR)


def received(sender: RawClient, listener: RawClient, rules: list[str],
             emissions: list[tuple[str, str, list]]) -> list[int]:
    """Indexes of `emissions` (path, signature, body) that reach `listener` through `rules`.

    Emission i is signal E<i>; a unicast marker signal afterwards bounds the wait.
    """
    for rule in rules:
        listener.add_match(rule)
    for i, (path, signature, body) in enumerate(emissions):
        sender.emit(path, IFACE, f"E{i}", signature, body)
    sender.emit(PATH, IFACE, "Done", destination=listener.unique_name)
    listener.wait_signal("Done")
    got = [int(m.member[1:]) for m in listener.backlog if m.is_signal() and m.member.startswith("E")]
    listener.backlog.clear()
    return got


@pytest.mark.parametrize("rule, emissions, expected", [
    ("arg0='it'\\''s'", [(PATH, "s", ["it's"]), (PATH, "s", ["its"])], [0]),
    ("arg0='a,b'", [(PATH, "s", ["a,b"]), (PATH, "s", ["a"])], [0]),
    ("arg0=a\\'b", [(PATH, "s", ["a'b"]), (PATH, "s", ["ab"])], [0]),
    ("arg0='a\\,b'", [(PATH, "s", ["a\\,b"]), (PATH, "s", ["a,b"])], [0]),
    ("arg0=''", [(PATH, "s", [""]), (PATH, "", [])], [0]),
    # argN compares strings only: not integers, object paths or strings inside containers.
    ("arg0='5'", [(PATH, "s", ["5"]), (PATH, "i", [5]), (PATH, "o", ["/5"]), (PATH, "as", [["5"]]),
                  (PATH, "v", [Variant("s", "5")])], [0]),
    ("arg1='b'", [(PATH, "ss", ["a", "b"]), (PATH, "s", ["b"]), (PATH, "sss", ["x", "b", "y"])], [0, 2]),
    ("arg0='x',arg2='z'", [(PATH, "sss", ["x", "y", "z"]), (PATH, "sss", ["x", "z", "y"]), (PATH, "ss", ["x", "z"])],
     [0]),
    # argNpath: either side may be a '/'-terminated prefix of the other; strings and object paths.
    ("arg0path='/aa/bb/'", [(PATH, "s", ["/aa/bb/cc"]), (PATH, "o", ["/aa/bb/cc"]), (PATH, "s", ["/aa/"]),
                            (PATH, "s", ["/aa/bb"]), (PATH, "s", ["/aa/bbc"]), (PATH, "s", ["/"]),
                            (PATH, "s", ["/aa/bb/"]), (PATH, "i", [1])], [0, 1, 2, 5, 6]),
    ("arg0namespace='org.example'", [(PATH, "s", ["org.example"]), (PATH, "s", ["org.example.Sub"]),
                                     (PATH, "s", ["org.examples"]), (PATH, "s", ["org"]), (PATH, "o", ["/org"])],
     [0, 1]),
    ("path='/org/example/Match'", [(PATH, "", []), (PATH + "/Sub", "", []), ("/", "", [])], [0]),
    ("path_namespace='/org/example'", [(PATH, "", []), ("/org/example", "", []), ("/org/examples", "", []),
                                       ("/org", "", [])], [0, 1]),
    ("path_namespace='/'", [(PATH, "", []), ("/", "", [])], [0, 1]),
    (f"type='signal',interface='{IFACE}',member='E1'", [(PATH, "", []), (PATH, "", [])], [1]),
    ("type='method_call'", [(PATH, "", [])], []),
    ("interface='org.example.Other'", [(PATH, "", [])], []),
    ("", [(PATH, "", []), ("/", "s", ["x"])], [0, 1]),
])
def test_what_a_rule_matches(clients, rule, emissions, expected):
    sender, listener = clients(), clients()
    rule = f"sender='{sender.unique_name}'," + rule if rule else f"sender='{sender.unique_name}'"
    assert received(sender, listener, [rule], emissions) == expected


def test_sender_by_well_known_name_follows_its_owner(clients):
    sender, listener = clients(), clients()
    sender.request_name("org.example.Match.Sender")
    emission = [(PATH, "", [])]
    assert received(sender, listener, ["sender='org.example.Match.Sender'"], emission) == [0]
    sender.release_name("org.example.Match.Sender")
    assert received(sender, listener, [], emission) == []


def test_a_destination_rule_does_not_match_broadcasts(clients):
    sender, listener = clients(), clients()
    rule = f"sender='{sender.unique_name}',destination='{listener.unique_name}'"
    assert received(sender, listener, [rule], [(PATH, "", [])]) == []


def test_a_signal_reaches_a_connection_once_however_many_rules_match(clients):
    sender, listener = clients(), clients()
    rules = [f"sender='{sender.unique_name}'", f"sender='{sender.unique_name}',type='signal'",
             f"sender='{sender.unique_name}',interface='{IFACE}'", f"sender='{sender.unique_name}'"]
    assert received(sender, listener, rules, [(PATH, "s", ["x"])]) == [0]


def test_each_add_match_needs_its_own_remove_match(clients):
    sender, listener = clients(), clients()
    rule = f"sender='{sender.unique_name}',member='E0'"
    emission = [(PATH, "", [])]
    assert received(sender, listener, [rule, rule], emission) == [0]
    listener.call_driver("RemoveMatch", "s", [rule]).value()
    assert received(sender, listener, [], emission) == [0]
    listener.call_driver("RemoveMatch", "s", [rule]).value()
    assert received(sender, listener, [], emission) == []
    assert listener.driver_error("RemoveMatch", "s", [rule]) == ERROR_PREFIX + "MatchRuleNotFound"


def test_remove_match_compares_rules_not_text(clients):
    sender, listener = clients(), clients()
    listener.add_match(f"type='signal',sender='{sender.unique_name}',member='E0'")
    listener.call_driver("RemoveMatch", "s", [f"member=E0,sender='{sender.unique_name}',type=signal"]).value()
    assert received(sender, listener, [], [(PATH, "", [])]) == []


def test_remove_match_only_touches_the_callers_rules(clients):
    sender, first, second = clients(), clients(), clients()
    rule = f"sender='{sender.unique_name}'"
    first.add_match(rule)
    assert second.driver_error("RemoveMatch", "s", [rule]) == ERROR_PREFIX + "MatchRuleNotFound"
    assert received(sender, first, [], [(PATH, "", [])]) == [0]


def test_rules_naming_a_departed_unique_name_stay_until_removed(clients):
    leaver, listener = clients(), clients()
    name = leaver.unique_name
    rule = f"sender='{name}'"
    listener.add_match(rule)
    watch_name(listener, name)
    leaver.close()
    wait_owner(listener, name, "")
    # The rule can never match again (unique names are not reused), but it is still the
    # listener's: dbus-daemon removes it only on RemoveMatch.
    listener.call_driver("RemoveMatch", "s", [rule]).value()
    assert listener.driver_error("RemoveMatch", "s", [rule]) == ERROR_PREFIX + "MatchRuleNotFound"


def test_driver_signals_match_like_any_other(clients):
    watcher, mover = clients(), clients()
    watcher.add_match(f"type='signal',sender='{DBUS}',member='NameOwnerChanged',arg0='org.example.Match.Moved'")
    mover.request_name("org.example.Match.Moved")
    signal = watcher.wait_signal("NameOwnerChanged")
    assert (signal.sender, signal.body) == (DBUS, ["org.example.Match.Moved", "", mover.unique_name])
    mover.request_name("org.example.Match.Unwatched")
    assert [m.brief() for m in watcher.drain()] == []


# ---------------------------------------------------------------- eavesdropping


def test_eavesdrop_rules_see_unicast_traffic_between_others(clients):
    caller, callee, eavesdropper, polite = clients(), clients(), clients(), clients()
    eavesdropper.add_match(f"eavesdrop='true',sender='{caller.unique_name}'")
    eavesdropper.add_match(f"eavesdrop='true',sender='{callee.unique_name}'")
    polite.add_match(f"sender='{caller.unique_name}'")
    serial = caller.call(callee.unique_name, PATH, IFACE, "Secret", "s", ["psst"])
    call = callee.wait_call("Secret")
    callee.reply(call, "s", ["shh"])
    caller.reply_to(serial)
    caller.emit(PATH, IFACE, "Private", destination=callee.unique_name)
    callee.wait_signal("Private")
    seen = eavesdropper.wait_for(lambda m: m.member == "Secret")
    assert (seen.type, seen.sender, seen.destination, seen.body) == \
        (METHOD_CALL, caller.unique_name, callee.unique_name, ["psst"])
    reply = eavesdropper.wait_for(lambda m: m.type == METHOD_RETURN and m.sender == callee.unique_name)
    assert reply.body == ["shh"]
    eavesdropper.wait_signal("Private")
    # Without eavesdrop='true' a rule never shows messages addressed to someone else.
    assert [m.brief() for m in polite.drain()] == []
    # The addressed recipient gets its message once, even when its own eavesdrop rule matches too.
    callee.add_match(f"eavesdrop='true',sender='{caller.unique_name}'")
    caller.call(callee.unique_name, PATH, IFACE, "Twice", flags=NO_REPLY_EXPECTED)
    callee.wait_call("Twice")
    assert [m.member for m in callee.drain() if m.member == "Twice"] == []


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_max_match_rules_per_connection(kind):
    with running_bus(kind, '<limit name="max_match_rules_per_connection">2</limit>') as bus, \
            RawClient(bus.address) as client:
        client.add_match("member='One'")
        client.add_match("member='Two'")
        assert client.driver_error("AddMatch", "s", ["member='Three'"]) == ERROR_PREFIX + "LimitsExceeded"
        client.call_driver("RemoveMatch", "s", ["member='One'"]).value()
        client.add_match("member='Three'")
