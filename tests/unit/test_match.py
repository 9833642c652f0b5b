"""Match rules: grammar, canonical form, matching semantics, the index, and dbus-daemon agreement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import example, given, settings, strategies as st
from jeepney import DBusAddress

from busd.bus.match import (
    ERROR, METHOD_CALL, METHOD_RETURN, SIGNAL, ArgKind, ArgMatch, MatchRule, MatchRuleInvalid, MatchRuleNotFound,
    MatchRuleTooLong,
)
from busd.bus.match_index import MatchIndex

BUS_DRIVER = DBusAddress("/org/freedesktop/DBus", bus_name="org.freedesktop.DBus",
                         interface="org.freedesktop.DBus")


@dataclass
class Msg:
    """The message attributes a match rule looks at."""

    type: int = SIGNAL
    sender: str | None = ":1.1"
    interface: str | None = "com.example.Iface"
    member: str | None = "Changed"
    path: str | None = "/com/example/obj"
    destination: str | None = None
    signature: str | None = None
    body: list[Any] = field(default_factory=list)

    def args(self) -> list[Any]:
        return self.body


def matches(rule_text: str, msg: Msg, sender_names: tuple[str, ...] = (), destination_names=None) -> bool:
    return MatchRule.parse(rule_text).matches(msg, sender_names, msg.args, destination_names)


# -- grammar ----------------------------------------------------------------------------------

def arg_values(rule: MatchRule) -> dict[int, str]:
    return {arg.index: arg.value for arg in rule.args}


def test_spec_quoting_example_in_quotes():
    rule = MatchRule.parse(r"arg0=''\''',arg1='\',arg2=',',arg3='\\'")
    assert arg_values(rule) == {0: "'", 1: "\\", 2: ",", 3: "\\\\"}


def test_spec_quoting_example_without_quotes_reads_as_dbus_daemon_does():
    # The spec says this equals the rule above; dbus-daemon (checked live below) lets
    # "\," swallow the comma, so arg1 runs on to the next quoted comma and arg2 vanishes.
    rule = MatchRule.parse(r"arg0=\',arg1=\,arg2=',',arg3=\\")
    assert arg_values(rule) == {0: "'", 1: "\\,arg2=,", 3: "\\\\"}


@pytest.mark.parametrize("text, expected", [
    ("type='signal'", {"type": SIGNAL}),
    ("type=signal", {"type": SIGNAL}),
    ("type='method_call'", {"type": METHOD_CALL}),
    ("type='method_return'", {"type": METHOD_RETURN}),
    ("type='error'", {"type": ERROR}),
    ("type='signal',", {"type": SIGNAL}),
    ("  type='signal'", {"type": SIGNAL}),
    ("sender='org.freedes''ktop.DBus'", {"sender": "org.freedesktop.DBus"}),
    ("interface='a.b'''''", {"interface": "a.b"}),
    ("member=Foo,path=/a/b", {"member": "Foo", "path": "/a/b"}),
    ("path_namespace='/'", {"path_namespace": "/"}),
    ("destination=':1.5'", {"destination": ":1.5"}),
    ("sender=':1'", {"sender": ":1"}),
    ("eavesdrop='true'", {"eavesdrop": True}),
    ("eavesdrop='true',eavesdrop='false'", {"eavesdrop": False}),
    ("", {}),
    ("=x", {}),
])
def test_grammar(text, expected):
    assert MatchRule.parse(text) == MatchRule(**expected)


def test_dbus_daemon_large_rule_with_whitespace_and_useless_quotes():
    rule = MatchRule.parse("    type='signal',  \tsender='org.freedes''ktop.DBusSender',   "
                           "interface='org.freedesktop.DBusInterface''''', \tmember='Foo',path='/bar/foo',"
                           "destination=':452345.34'''''")
    assert rule == MatchRule(type=SIGNAL, sender="org.freedesktop.DBusSender",
                             interface="org.freedesktop.DBusInterface", member="Foo", path="/bar/foo",
                             destination=":452345.34")


@pytest.mark.parametrize("key, index, kind", [
    ("arg0", 0, ArgKind.STRING),
    ("arg63", 63, ArgKind.STRING),
    ("arg7path", 7, ArgKind.PATH),
    ("arg0namespace", 0, ArgKind.NAMESPACE),
    ("arg010", 8, ArgKind.STRING),  # dbus-daemon reads the number with strtoul(..., 0)
    ("arg0x10", 16, ArgKind.STRING),
    ("arg+3", 3, ArgKind.STRING),
])
def test_arg_keys(key, index, kind):
    value = "com.example" if kind is ArgKind.NAMESPACE else "v"
    assert MatchRule.parse(f"{key}='{value}'").args == (ArgMatch(index, value, kind),)


def test_only_sixteen_pairs_are_read():
    keys = ",".join(f"arg{i}='{i}'" for i in range(20))
    assert [arg.index for arg in MatchRule.parse(keys).args] == list(range(16))
    assert MatchRule.parse(",".join(f"arg{i}=x" for i in range(16)) + ",bogus=x").args[-1].index == 15


INVALID_RULES = [
    ("type= 'signal'", "Invalid message type ( signal)"),
    ("type='signal' ,member='Foo'", "Invalid message type (signal )"),
    ("  type='signal'  ", "Invalid message type (signal  )"),
    ("type='SIGNAL'", "Invalid message type"),
    (",type='signal'", 'Unknown key ",type"'),
    ("a,b", "no subsequent '='"),
    ("key", "no subsequent '='"),
    ("type='signal',type='signal'", "Key type specified twice"),
    ("sender=':1.1',sender=':1.2'", "Key sender specified twice"),
    ("path='/a',path_namespace='/a'", "path or path_namespace specified twice"),
    ("path=''", "Path '' is invalid"),
    ("path='/a/'", "Path '/a/' is invalid"),
    ("path_namespace='a'", "Path 'a' is invalid"),
    ("interface=''", "Interface name '' is invalid"),
    ("interface='nodot'", "Interface name 'nodot' is invalid"),
    ("member='a.b'", "Member name 'a.b' is invalid"),
    ("member='Ä'", "Member name 'Ä' is invalid"),
    ("sender='a'", "Sender name 'a' is invalid"),
    ("destination='1.a'", "Destination name '1.a' is invalid"),
    ("arg64='x'", "maximum is 63"),
    ("arg-1='x'", "maximum is 63"),
    ("arg='x'", "lacks an arg number"),
    ("argfoo='x'", "could not parse arg number"),
    ("arg99999999999999999999999='x'", "could not parse arg number"),
    ("arg1namespace='a'", "contains junk after argument number (1)"),
    ("arg08='x'", "contains junk after argument number (0)"),
    ("arg00namespace='a'", "contains junk after argument number (0)"),
    ("arg0namespace='a.'", "not a valid prefix of a bus name"),
    ("arg0namespace='1a'", "not a valid prefix of a bus name"),
    ("arg0='a',arg0path='b'", "Argument arg0path matched more than once"),
    ("bogus='x'", 'Unknown key "bogus"'),
    ("eavesdrop='yes'", "eavesdrop='yes' is invalid"),
    ("member='a\\'b'", "Unbalanced quotation marks"),
    ("arg0='unbalanced", "Unbalanced quotation marks"),
]


@pytest.mark.parametrize("text, reason", INVALID_RULES)
def test_invalid_rules(text, reason):
    with pytest.raises(MatchRuleInvalid) as info:
        MatchRule.parse(text)
    assert reason in str(info.value)
    assert info.value.error_name == "org.freedesktop.DBus.Error.MatchRuleInvalid"


def test_rule_too_long_is_a_limit():
    with pytest.raises(MatchRuleTooLong) as info:
        MatchRule.parse("arg0='" + "x" * 1020 + "'")
    assert info.value.error_name == "org.freedesktop.DBus.Error.LimitsExceeded"
    assert "1027 bytes, maximum is 1024" in str(info.value)


# -- canonical form ------------------------------------------------------------------------------

def test_canonical_form_uses_dbus_daemon_key_order_and_quoting():
    rule = MatchRule.parse("arg1path=/p/,eavesdrop=true,destination=:1.2,sender=org.x.Y,path_namespace=/a,"
                           "member=M,interface=a.b,type=signal,arg0='it'\\''s'")
    assert str(rule) == ("type='signal',interface='a.b',member='M',path_namespace='/a',sender='org.x.Y',"
                         "destination=':1.2',eavesdrop='true',arg0='it'\\''s',arg1path='/p/'")
    assert MatchRule.parse(str(rule)) == rule
    assert str(MatchRule.parse("eavesdrop='false'")) == ""


def test_equal_values_of_separately_parsed_rules_are_one_string():
    # Thousands of connections subscribe with the same names: each value must be kept once, not per rule.
    def parse(owner: int) -> MatchRule:
        # Each text is built at run time, so no two share a string before parsing.
        return MatchRule.parse("".join(["type='signal',sender='org.example.Svc',interface='org.example.If',",
                                        "member='Changed',path='/org/example/Obj',",
                                        f"arg0='org.example.Key',arg1path='/p/{owner}/'"]))

    first, second = parse(1), parse(2)
    for field_name in ("sender", "interface", "member", "path"):
        assert getattr(first, field_name) is getattr(second, field_name), field_name
    assert first.args[0].value is second.args[0].value
    assert first.args[1].value == "/p/1/" and second.args[1].value == "/p/2/"


_values = st.text(alphabet="ab',\\ /.=", max_size=8)
_rules = st.builds(
    MatchRule,
    type=st.none() | st.sampled_from([METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL]),
    sender=st.none() | st.sampled_from([":1.1", ":2", "org.example.Name"]),
    interface=st.none() | st.sampled_from(["a.b", "org.example.If_1"]),
    member=st.none() | st.sampled_from(["M", "_x9"]),
    path=st.none() | st.sampled_from(["/", "/a/b"]),
    destination=st.none() | st.sampled_from([":1.3", "org.example.Dest"]),
    args=st.dictionaries(st.integers(0, 63), st.tuples(st.sampled_from([ArgKind.STRING, ArgKind.PATH]), _values),
                         max_size=8).map(lambda d: tuple(ArgMatch(i, v, k) for i, (k, v) in d.items())),
    eavesdrop=st.booleans(),
)


@given(_rules)
def test_canonical_round_trip(rule):
    assert MatchRule.parse(str(rule)) == rule
    assert hash(MatchRule.parse(str(rule))) == hash(rule)


# -- matching ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("actual, expected", [
    ("/", True), ("/aa/", True), ("/aa/bb/", True), ("/aa/bb/cc/", True), ("/aa/bb/cc", True),
    ("/aa/b", False), ("/aa", False), ("/aa/bb", False),
])
def test_spec_arg_path_example(actual, expected):
    assert matches("arg0path='/aa/bb/'", Msg(signature="s", body=[actual])) is expected


@pytest.mark.parametrize("path, expected", [
    ("/com/example/foo", True), ("/com/example/foo/bar", True), ("/com/example/foobar", False),
    ("/com/example", False),
])
def test_spec_path_namespace_example(path, expected):
    assert matches("path_namespace='/com/example/foo'", Msg(path=path)) is expected
    assert matches("path_namespace='/'", Msg(path=path))


@pytest.mark.parametrize("name, expected", [
    ("com.example.backend1", True), ("com.example.backend1.foo", True), ("com.example.backend1.foo.bar", True),
    ("com.example.backend10", False), ("com.example", False),
])
def test_spec_arg0_namespace_example(name, expected):
    rule = "member='NameOwnerChanged',arg0namespace='com.example.backend1'"
    assert matches(rule, Msg(member="NameOwnerChanged", signature="sss", body=[name, "", ":1.4"])) is expected


@pytest.mark.parametrize("rule, signature, body, expected", [
    ("arg0='x'", "s", ["x"], True),
    ("arg0='x'", "s", ["y"], False),
    ("arg0='/x'", "o", ["/x"], False),  # argN matches strings only
    ("arg0path='/x'", "o", ["/x"], True),  # argNpath matches object paths too
    ("arg0='s'", "g", ["s"], False),
    ("arg0path='s'", "g", ["s"], False),
    ("arg0='1'", "i", [1], False),
    ("arg1='x'", "s", ["x"], False),  # no second argument
    ("arg1='x'", "is", [5, "x"], True),
    ("arg0='',arg2='z'", "sis", ["", 1, "z"], True),
    ("arg0namespace='a'", "o", ["/a"], False),
    ("arg0='x'", None, ["x"], True),  # without a signature, a str is a string
])
def test_arg_types(rule, signature, body, expected):
    assert matches(rule, Msg(signature=signature, body=body)) is expected


def test_header_keys():
    msg = Msg(type=SIGNAL, sender=":1.7", interface="a.b", member="M", path="/p")
    assert matches("type='signal',interface='a.b',member='M',path='/p',sender=':1.7'", msg)
    for rule in ("type='method_call'", "interface='a.c'", "member='N'", "path='/q'", "sender=':1.8'",
                 "path_namespace='/p/q'"):
        assert not matches(rule, msg), rule
    assert not matches("interface='a.b'", Msg(interface=None))
    assert not matches("member='M'", Msg(member=None))


def test_sender_by_well_known_name_or_driver():
    msg = Msg(sender=":1.7")
    assert matches("sender='com.example.Name'", msg, sender_names=("com.example.Name", ":1.7"))
    assert not matches("sender='com.example.Name'", msg, sender_names=(":1.7",))
    driver = Msg(sender="org.freedesktop.DBus")
    assert matches("sender='org.freedesktop.DBus'", driver)


def test_destination_and_eavesdrop():
    broadcast = Msg(destination=None)
    unicast = Msg(destination=":1.3")
    assert matches("", broadcast)
    assert not matches("", unicast)  # the addressed recipient gets it without a rule
    assert matches("eavesdrop='true'", unicast)
    assert not matches("destination=':1.3'", unicast)  # not eavesdropping: never an extra recipient
    assert matches("destination=':1.3',eavesdrop='true'", unicast)
    assert not matches("destination=':1.4',eavesdrop='true'", unicast)
    assert not matches("destination=':1.3',eavesdrop='true'", broadcast)
    # A rule naming the well-known destination matches when the recipient owns it.
    to_name = Msg(destination="com.example.Svc")
    rule = "destination=':1.3',eavesdrop='true'"
    assert matches(rule, to_name, destination_names=(":1.3", "com.example.Svc"))
    assert not matches(rule, to_name)  # recipient unknown: compare with the header


def test_get_args_only_called_for_arg_rules():
    calls = []

    def get_args():
        calls.append(1)
        return ["x"]

    msg = Msg(signature="s")
    assert MatchRule.parse("type='signal',path_namespace='/'").matches(msg, (), get_args)
    assert calls == []
    assert MatchRule.parse("arg0='x'").matches(msg, (), get_args)
    assert calls == [1]


# -- the index --------------------------------------------------------------------------------------

def test_index_add_remove_counts():
    index = MatchIndex()
    rule = MatchRule.parse("type='signal',member='Changed'")
    other = MatchRule.parse("type='signal',member='Other'")
    index.add("a", rule)
    index.add("a", rule)
    index.add("a", other)
    index.add("b", rule)
    assert index.count("a") == 3
    assert index.rules("a") == [rule, rule, other]
    assert len(index) == 2
    index.remove("a", MatchRule.parse("member='Changed',type='signal'"))  # equal by value
    assert index.count("a") == 2
    index.remove("a", rule)
    with pytest.raises(MatchRuleNotFound) as info:
        index.remove("a", rule)
    assert info.value.error_name == "org.freedesktop.DBus.Error.MatchRuleNotFound"
    assert index.recipients(Msg(), (), list) == {"b"}
    assert not index.has_eavesdroppers
    index.remove_owner("b")
    assert index.count("b") == 0 and index.rules("b") == []
    assert index.recipients(Msg(), (), list) == set()
    index.remove_owner("nobody")


def test_a_departure_without_rules_keeps_the_cached_recipients():
    # A peer with no rules that sent no cached broadcast is in no cached set and no key: its departure (every
    # connection of a churn) leaves the cache, so the bus's NameOwnerChanged stays a lookup.
    index = MatchIndex()
    index.add("a", MatchRule.parse("type='signal',member='Changed'"))
    fields = (SIGNAL, "com.example.Iface", "Changed", "/com/example/obj", ":1.1")
    assert index.cached_broadcast(*fields) is None
    assert index.recipients(Msg(), (), list) == {"a"}
    assert index.cached_broadcast(*fields) == {"a"}
    index.remove_owner("quiet", unique_name=":1.9")
    assert index.cached_broadcast(*fields) == {"a"}
    index.remove_owner("a", unique_name=":1.5")
    assert index.cached_broadcast(*fields) is None
    assert index.recipients(Msg(), (), list) == set()
    assert index.cached_broadcast(*fields) == frozenset()
    index.remove_owner("sender", unique_name=":1.1")  # keys with its name go (test_hostile's attack #3)
    assert index.cached_broadcast(*fields) is None


def test_broadcasts_with_long_paths_are_not_cached():
    index = MatchIndex()
    index.add("a", MatchRule.parse("type='signal'"))
    long_path = "/" + "p" * 2000
    assert index.recipients(Msg(path=long_path), (), list) == {"a"}
    assert index.cached_broadcast(SIGNAL, "com.example.Iface", "Changed", long_path, ":1.1") is None


def test_rules_that_share_a_bucket_key():
    """Rules equal in the bucketed fields, told apart by an argument: one key holds them all."""
    index = MatchIndex()
    rules = [MatchRule.parse(f"type='signal',member='Changed',arg0='{value}'") for value in ("x", "y", "z")]
    for owner, rule in enumerate(rules):
        index.add(owner, rule)
    index.add("both", rules[0])
    index.add("both", rules[1])
    assert len(index) == 3

    def to(value: str) -> set:
        return index.recipients(Msg(signature="s", body=[value]), (), lambda: [value])

    assert to("x") == {0, "both"} and to("y") == {1, "both"} and to("z") == {2} and to("w") == set()
    index.remove(1, rules[1])
    index.remove_owner("both")
    assert to("x") == {0} and to("y") == set() and to("z") == {2}
    index.remove(2, rules[2])
    assert len(index) == 1 and to("x") == {0} and to("z") == set()
    index.add(3, rules[2])
    assert to("z") == {3} and to("x") == {0}


_shared_rules = [MatchRule.parse("type='signal',member='Changed'"), MatchRule.parse("type='signal',member='Other'")]


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["add", "remove", "leave"]), st.integers(0, 19), st.integers(0, 1)),
                      max_size=80))
def test_rules_shared_by_many_owners(steps):
    """A rule's owners start as a tuple and become a dict past SMALL_OWNERS: both shapes deliver the same."""
    index = MatchIndex()
    model: dict[int, list[MatchRule]] = {}
    for action, owner, which in [("add", owner, 0) for owner in range(12)] + steps:
        rule = _shared_rules[which]
        if action == "add":
            index.add(owner, rule)
            model.setdefault(owner, []).append(rule)
        elif action == "remove" and rule in model.get(owner, []):
            index.remove(owner, rule)
            model[owner].remove(rule)
        elif action == "leave":
            index.remove_owner(owner)
            model.pop(owner, None)
        for member, shared in (("Changed", _shared_rules[0]), ("Other", _shared_rules[1])):
            expected = {o for o, rules in model.items() if shared in rules}
            assert index.recipients(Msg(member=member), (), list) == expected
        assert len(index) == len({r for rules in model.values() for r in rules})
        assert sorted(index.owners()) == sorted(o for o, rules in model.items() if rules)


def test_remove_owner_drops_rules_naming_its_unique_name():
    index = MatchIndex()
    about_b = MatchRule.parse("sender=':1.2'")
    to_b = MatchRule.parse("destination=':1.2',eavesdrop=true")
    unrelated = MatchRule.parse("sender=':1.9'")
    index.add("a", about_b)
    index.add("a", about_b)
    index.add("c", to_b)
    index.add("c", unrelated)
    index.add("b", unrelated)
    index.remove_owner("b", unique_name=":1.2")
    assert index.rules("a") == []
    assert index.rules("c") == [unrelated]
    with pytest.raises(MatchRuleNotFound):
        index.remove("a", about_b)


def test_remove_owner_without_rules_leaves_rules_naming_it():
    index = MatchIndex()
    about_b = MatchRule.parse("sender=':1.2'")
    index.add("a", about_b)
    index.remove_owner("b", unique_name=":1.2")  # dbus-daemon only sweeps when b had rules
    assert index.rules("a") == [about_b]


def test_recipients_each_once_and_skips_addressed_recipient():
    index = MatchIndex()
    for text in ("", "type='signal'", "member='Changed'", "arg0='x'"):
        index.add("a", MatchRule.parse(text))
    index.add("b", MatchRule.parse("member='Changed',eavesdrop=true"))
    index.add("c", MatchRule.parse("member='Other'"))
    calls = []

    def get_args():
        calls.append(1)
        return ["x"]

    assert index.has_eavesdroppers
    assert index.recipients(Msg(signature="s"), (), get_args) == {"a", "b"}
    assert calls == [1]
    unicast = Msg(destination=":1.5")
    assert index.recipients(unicast, (), get_args) == {"b"}
    assert index.recipients(unicast, (), get_args, addressed_recipient="b") == set()


# Small value pools make rules and messages collide often.
_senders = [":1.1", ":1.2", "org.example.A", "org.example.B"]
_names_owned = st.sets(st.sampled_from(["org.example.A", "org.example.B"]))
_arg_filters = st.lists(
    st.one_of(
        st.tuples(st.integers(0, 2), st.sampled_from(["", "a", "/a/", "/a/b", "org.example"]),
                  st.sampled_from([ArgKind.STRING, ArgKind.PATH])),
        st.tuples(st.just(0), st.sampled_from(["org", "org.example"]), st.just(ArgKind.NAMESPACE)),
    ),
    max_size=2, unique_by=lambda t: t[0],
).map(lambda items: tuple(ArgMatch(i, v, k) for i, v, k in items))
_random_rules = st.builds(
    MatchRule,
    type=st.none() | st.sampled_from([METHOD_CALL, SIGNAL]),
    sender=st.none() | st.sampled_from(_senders),
    interface=st.none() | st.sampled_from(["a.b", "a.c"]),
    member=st.none() | st.sampled_from(["X", "Y"]),
    path=st.none() | st.sampled_from(["/a", "/a/b"]),
    path_namespace=st.none() | st.sampled_from(["/", "/a"]),
    destination=st.none() | st.sampled_from([":1.5", "org.example.D"]),
    args=_arg_filters,
    eavesdrop=st.booleans(),
).filter(lambda r: r.path is None or r.path_namespace is None)
_bodies = st.lists(st.tuples(st.sampled_from("sogi"), st.sampled_from(["", "a", "/a/", "/a/b", "org.example.x"])),
                   max_size=3)


@settings(max_examples=300, deadline=None)
@given(
    adds=st.lists(st.tuples(st.integers(0, 5), _random_rules), max_size=25),
    removes=st.lists(st.integers(0, 30), max_size=5),
    msg_type=st.sampled_from([METHOD_CALL, SIGNAL]),
    sender=st.sampled_from([":1.1", ":1.2"]),
    sender_names=_names_owned,
    interface=st.none() | st.sampled_from(["a.b", "a.c"]),
    member=st.none() | st.sampled_from(["X", "Y"]),
    path=st.none() | st.sampled_from(["/", "/a", "/a/b", "/ab"]),
    destination=st.none() | st.sampled_from([":1.5", "org.example.D", ":1.6"]),
    recipient=st.none() | st.integers(0, 5),
    recipient_names=st.none() | st.sets(st.sampled_from([":1.5", "org.example.D"])),
    body=_bodies,
)
def test_index_recipients_equal_brute_force(adds, removes, msg_type, sender, sender_names, interface, member,
                                            path, destination, recipient, recipient_names, body):
    index = MatchIndex()
    for owner, rule in adds:
        index.add(owner, rule)
    for position in removes:
        if position < len(adds):
            owner, rule = adds[position]
            if rule in index.rules(owner):
                index.remove(owner, rule)
    msg = Msg(type=msg_type, sender=sender, interface=interface, member=member, path=path,
              destination=destination, signature="".join(code for code, _ in body),
              body=[5 if code == "i" else value for code, value in body])
    expected = {owner for owner in index.owners()
                if any(rule.matches(msg, sender_names, msg.args, recipient_names) for rule in index.rules(owner))}
    expected.discard(recipient)
    assert index.recipients(msg, sender_names, msg.args, addressed_recipient=recipient,
                            recipient_names=recipient_names) == expected


# Mostly rules the cache can answer for (no argument test, no destination), so that it is exercised.
_plain_rules = st.builds(
    MatchRule,
    type=st.none() | st.just(SIGNAL),
    sender=st.sampled_from([None, "org.example.A", ":1.1"]),
    interface=st.none() | st.sampled_from(["a.b", "a.c"]),
    path=st.none() | st.sampled_from(["/a", "/a/b"]),
    args=st.one_of(st.just(()), st.just(()), st.just(()), _arg_filters),
)
_changes = st.one_of(
    st.none(), st.none(),
    st.tuples(st.just("add"), st.integers(0, 5), st.one_of(_plain_rules, _plain_rules, _random_rules)),
    st.tuples(st.just("remove"), st.integers(0, 30)),
    st.tuples(st.just("leave"), st.integers(0, 5)),
    st.tuples(st.just("rename"), st.sampled_from([":1.1", ":1.2"]), _names_owned),
    st.tuples(st.just("rename"), st.sampled_from([":1.1", ":1.2"]), _names_owned),
)
# A few messages, so that most broadcasts repeat an earlier one's header and the cache answers.
_broadcasts = st.tuples(st.sampled_from([":1.1", ":1.2"]), st.sampled_from(["a.b", "a.c"]), _bodies)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(_changes, _broadcasts), max_size=30))
# Random search seldom lines up "cached, then the sender gains the name a rule wants, then again":
@example(steps=[(("add", 1, MatchRule(sender="org.example.A")), (":1.1", "a.b", [])),
                (("rename", ":1.1", {"org.example.A"}), (":1.1", "a.b", []))])
def test_cached_broadcast_recipients_follow_every_change(steps):
    # Broadcast recipients are cached by header fields and sender; rule changes, departures and (told by
    # the bus through names_changed) a sender's names empty the cache. Each answer must equal brute force.
    index = MatchIndex()
    added: list = []
    names_of: dict[str, set] = {":1.1": set(), ":1.2": set()}
    for change, (sender, interface, body) in steps:
        kind = change[0] if change else None
        if kind == "add":
            index.add(change[1], change[2])
            added.append(change[1:])
        elif kind == "remove" and added:
            owner, rule = added[change[1] % len(added)]
            if rule in index.rules(owner):
                index.remove(owner, rule)
        elif kind == "leave":
            index.remove_owner(change[1])
        elif kind == "rename":
            names_of[change[1]] = set(change[2])
            index.names_changed()
        msg = Msg(type=SIGNAL, sender=sender, interface=interface, member="X", path="/a",
                  signature="".join(code for code, _ in body),
                  body=[5 if code == "i" else value for code, value in body])
        sender_names = names_of[sender]
        expected = {owner for owner in index.owners()
                    if any(rule.matches(msg, sender_names, msg.args, None) for rule in index.rules(owner))}
        assert set(index.recipients(msg, sender_names, msg.args)) == expected


def test_a_repeated_broadcast_is_answered_from_the_cache_unless_a_rule_tests_an_argument():
    index = MatchIndex()
    index.add("listener", MatchRule.parse("type='signal',interface='com.example.Iface'"))
    calls = []

    def args() -> list:
        calls.append(1)
        return ["x"]

    first = index.recipients(Msg(), (), args)
    assert first == {"listener"} and index.recipients(Msg(), (), args) is first  # the same set, not recomputed
    index.add("picky", MatchRule.parse("type='signal',arg0='x'"))
    assert index.recipients(Msg(body=["x"], signature="s"), (), args) == {"listener", "picky"}
    assert index.recipients(Msg(body=["y"], signature="s"), (), lambda: ["y"]) == {"listener"}  # not cached


# -- agreement with a live dbus-daemon ----------------------------------------------------------------

















def test_eavesdropping_rules_of_owners_that_may_not_eavesdrop_read_no_body():
    index = MatchIndex()
    index.add("nobody", MatchRule.parse("eavesdrop='true',arg0='x'"))
    index.add("root", MatchRule.parse("eavesdrop='true',member='Changed'"))
    calls = []

    def get_args():
        calls.append(1)
        return ["x"]

    may = {"nobody": False, "root": True}.__getitem__
    unicast = Msg(destination=":1.5", signature="s")
    assert index.recipients(unicast, (), get_args, may_eavesdrop=may) == {"root"}
    assert calls == []
    assert index.recipients(unicast, (), get_args) == {"nobody", "root"}
    assert calls == [1]
    # A broadcast is not eavesdropping: the same rules see it whatever the policy says.
    assert index.recipients(Msg(signature="s"), (), get_args, may_eavesdrop=may) == {"nobody", "root"}
