"""Unit tests of the bridge's pure parts: name patterns, settings from the command line and XML, re-addressing
messages, and which local match rules become upstream subscriptions."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings, strategies as st

from busd.bridge.bridge import Bridge
from busd.bridge.readdress import readdressed
from busd.bridge.settings import BridgeConfigError, BridgeSettings, NamePattern, bridge_settings, check_upstream
from busd.bridge.subscriptions import Subscriptions
from busd.bus.router import Bus
from busd.bus.match import MatchRule
from busd.config.loader import load_config
from busd.interfaces import introspection_xml
from busd.wire.address import AddressError
from busd.wire.marshal import BIG, LITTLE
from busd.wire.message import ERROR, METHOD_CALL, METHOD_RETURN, SIGNAL, Header, build_message, parse_header
from busd.wire.wellknown import DRIVER_NAME

# ---------------------------------------------------------------- name patterns


@pytest.mark.parametrize("text, inside, outside", [
    ("org.example.Foo", ["org.example.Foo"], ["org.example.Foo2", "org.example.Foo.Bar", "org.example"]),
    ("org.example.*", ["org.example.Foo", "org.example.Foo.Bar"], ["org.example", "org.examples.Foo", "org.Foo"]),
    ("org.*", ["org.example", "org.a.b.c"], ["com.example", "organ.x"]),
    ("*", ["org.example", "a.b"], [":1.5", "org.freedesktop.DBus"]),
])
def test_a_pattern_covers_a_name_or_every_name_under_a_prefix(text, inside, outside):
    pattern = NamePattern(text)
    assert [name for name in inside if pattern.matches(name)] == inside
    assert [name for name in outside if pattern.matches(name)] == []


@pytest.mark.parametrize("text, complaint", [
    (":1.5", "unique names cannot cross"),
    ("org", "is not a well-known bus name"),
    ("org.example.*.Foo", "is not a well-known bus name"),
    ("*.example", "is not a well-known bus name"),
    ("org.*.*", "before '.*' must come"),
    (".*", "before '.*' must come"),
    ("org.freedesktop.DBus", "belongs to each bus itself"),
])
def test_a_pattern_that_cannot_work_is_refused_with_the_reason(text, complaint):
    with pytest.raises(BridgeConfigError, match=complaint.replace("*", r"\*").replace(".", r"\.")):
        NamePattern(text)


class _NameOwnerChanged:
    """The header fields a match rule looks at, for NameOwnerChanged(name, ...) from the driver."""

    type = SIGNAL
    sender = "org.freedesktop.DBus"
    destination = None
    path = "/org/freedesktop/DBus"
    interface = "org.freedesktop.DBus"
    member = "NameOwnerChanged"
    signature = "sss"


well_known = st.from_regex(r"\A[a-z][a-z0-9_]{0,5}(\.[A-Za-z][A-Za-z0-9_]{0,5}){1,3}\Z")


@settings(max_examples=100, deadline=None)
@given(name=well_known, pattern_text=st.one_of(well_known, well_known.map(lambda n: n + ".*"), st.just("*")))
def test_the_owner_watch_rule_of_a_pattern_sees_every_name_it_covers(name, pattern_text):
    pattern = NamePattern(pattern_text)
    rule = MatchRule.parse(pattern.owner_changed_rule())
    if pattern.matches(name):
        assert rule.matches(_NameOwnerChanged, {"org.freedesktop.DBus"}, lambda: [name, "", ":1.7"])


# ---------------------------------------------------------------- settings


def test_no_bridge_unless_an_upstream_is_given():
    assert bridge_settings() is None
    with pytest.raises(BridgeConfigError, match="need --upstream"):
        bridge_settings(imports=["org.example.Foo"])


def test_command_line_settings_keep_order_and_drop_repeats():
    chosen = bridge_settings("session", ["org.a.*", "org.b.B", "org.a.*"], ["org.c.C"])
    assert chosen == BridgeSettings("session", (NamePattern("org.a.*"), NamePattern("org.b.B")),
                                    (NamePattern("org.c.C"),))


@pytest.mark.parametrize("address", ["session", "unix:path=/run/user/1000/bus", "unix:abstract=/tmp/x",
                                     "tcp:host=example.org,port=12345", "unixexec:path=/x;unix:path=/y"])
def test_upstreams_the_bridge_can_reach(address):
    assert check_upstream(address) == address


@pytest.mark.parametrize("address, complaint", [
    ("unix:tmpdir=/tmp", "no address the bridge can connect to"),
    ("launchd:env=X", "no address the bridge can connect to"),
    ("nonsense", "is not a D-Bus address"),
])
def test_upstreams_the_bridge_cannot_reach(address, complaint):
    with pytest.raises(BridgeConfigError, match=complaint):
        check_upstream(address)


def test_session_is_looked_up_in_the_environment_when_connecting():
    chosen = BridgeSettings("session")
    assert chosen.address({"DBUS_SESSION_BUS_ADDRESS": "unix:path=/a"}) == "unix:path=/a"
    with pytest.raises(AddressError, match="no session bus"):
        chosen.address({})
    assert BridgeSettings("unix:path=/b").address({}) == "unix:path=/b"


CONFIG = """<busconfig>
  <listen>unix:path=/tmp/x</listen>
  <busd:bridge xmlns:busd="https://busd.dev/config" upstream="{upstream}">
    <busd:import name="org.a.*"/>
    <busd:export name="org.c.C"/>{more}
  </busd:bridge>
</busconfig>
"""


def config_file(tmp_path, upstream="unix:path=/up", more=""):
    path = tmp_path / "bus.conf"
    path.write_text(CONFIG.replace("{upstream}", upstream).replace("{more}", more))
    return load_config(str(path))


def test_the_xml_element_and_the_command_line_add_up(tmp_path):
    config = config_file(tmp_path)
    from_xml = bridge_settings(extensions=config.extensions)
    assert from_xml == BridgeSettings("unix:path=/up", (NamePattern("org.a.*"),), (NamePattern("org.c.C"),))
    merged = bridge_settings("session", ["org.b.B"], ["org.c.C", "org.d.*"], config.extensions)
    assert merged.upstream == "session"  # --upstream wins
    assert [str(p) for p in merged.imports] == ["org.a.*", "org.b.B"]
    assert [str(p) for p in merged.exports] == ["org.c.C", "org.d.*"]


@pytest.mark.parametrize("more, complaint", [
    ('\n    <busd:imports name="org.x.Y"/>', "may contain only"),
    ('\n    <busd:import name="org.x.Y" flags="1"/>', "takes exactly one attribute"),
    ('\n    <busd:import name="org.*.Y"/>', "is not a well-known bus name"),
])
def test_a_bad_xml_element_is_refused_with_its_file_and_line(tmp_path, more, complaint):
    config = config_file(tmp_path, more=more)
    with pytest.raises(BridgeConfigError, match=complaint) as raised:
        bridge_settings(extensions=config.extensions)
    assert f"{tmp_path / 'bus.conf'}:" in str(raised.value)


def test_an_xml_element_without_upstream_is_refused(tmp_path):
    path = tmp_path / "bus.conf"
    path.write_text('<busconfig><listen>unix:path=/x</listen>\n'
                    '<busd:bridge xmlns:busd="https://busd.dev/config"/></busconfig>')
    with pytest.raises(BridgeConfigError, match=r"bus\.conf:2: <busd:bridge> needs upstream="):
        bridge_settings(extensions=load_config(str(path)).extensions)


# ---------------------------------------------------------------- re-addressing


names = st.from_regex(r"\A[a-z]{1,6}(\.[a-z]{1,6}){1,2}\Z")
unique_names = st.integers(0, 9999).map(lambda n: f":1.{n}")
text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20)
values = {"s": text, "u": st.integers(0, 2**32 - 1), "ay": st.binary(max_size=40),
          "a{sv}": st.just({}), "(yd)": st.tuples(st.integers(0, 255), st.floats(allow_nan=False))}


@st.composite
def messages(draw):
    kind = draw(st.sampled_from([METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL]))
    codes = draw(st.lists(st.sampled_from(sorted(values)), max_size=4))
    fields = {"path": "/a/b" if kind in (METHOD_CALL, SIGNAL) else None,
              "interface": draw(names) if kind == SIGNAL else draw(st.none() | names),
              "member": "Member" if kind in (METHOD_CALL, SIGNAL) else None,
              "error_name": draw(names) if kind == ERROR else None,
              "reply_serial": draw(st.integers(1, 2**32 - 1)) if kind in (METHOD_RETURN, ERROR) else None,
              "destination": draw(st.none() | names | unique_names), "sender": draw(st.none() | unique_names)}
    body = [draw(values[code]) for code in codes]
    endian = draw(st.sampled_from([LITTLE, BIG]))
    flags = draw(st.integers(0, 7))
    return build_message(kind, draw(st.integers(1, 2**32 - 1)), signature="".join(codes), body=body,
                         endian=endian, flags=flags, **fields)


@settings(max_examples=300, deadline=None)
@given(buf=messages(), serial=st.integers(1, 2**32 - 1), destination=st.none() | names | unique_names,
       reply_serial=st.none() | st.integers(1, 2**32 - 1))
def test_readdressing_changes_only_serial_and_addresses(buf, serial, destination, reply_serial):
    h = parse_header(buf)
    if h.type in (METHOD_RETURN, ERROR) and reply_serial is None:
        reply_serial = h.reply_serial  # a reply keeps needing one
    head, given_header = readdressed(h, serial, destination, reply_serial)
    moved = head + buf[h.body_start:]
    m = parse_header(moved)
    assert (m.serial, m.destination, m.reply_serial, m.sender) == (serial, destination, reply_serial, None)
    for attr in ("endian", "type", "flags", "path", "interface", "member", "error_name", "signature",
                 "unix_fds", "body_len"):
        assert getattr(m, attr) == getattr(h, attr), attr
    assert moved[m.body_start:] == buf[h.body_start:]
    # The header handed back is the one parsing gives, so the bridge need not parse again.
    for attr in Header.__slots__:
        assert getattr(given_header, attr) == getattr(m, attr), attr


# ---------------------------------------------------------------- local rules -> upstream subscriptions


@pytest.fixture
def bridge():
    loop = asyncio.new_event_loop()
    bus = Bus(loop, "0" * 32, machine_id="0" * 32, introspection=introspection_xml(DRIVER_NAME))
    yield Bridge(bus, BridgeSettings("session", (NamePattern("org.up.*"),), (NamePattern("org.down.*"),)))
    bus.close()
    loop.close()


@pytest.mark.parametrize("local, upstream", [
    ("type='signal',sender='org.up.A',member='Changed'", "type='signal',member='Changed',sender='org.up.A'"),
    ("sender='org.up.A',path_namespace='/x',arg0='y'",
     "type='signal',path_namespace='/x',sender='org.up.A',arg0='y'"),
    ("type='signal',interface='org.x.I'", "type='signal',interface='org.x.I'"),  # any sender: filtered on arrival
    ("type='signal',eavesdrop='true',member='M'", "type='signal',member='M'"),  # broadcasts only
    ("type='signal',sender='org.down.A'", None),  # not imported
    ("type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'", None),  # the local driver's
    ("type='signal',sender=':1.5'", None),  # a local peer
    ("type='method_call',member='M'", None),
    ("type='signal',destination=':1.9'", None),  # unicast
])
def test_which_local_rules_need_an_upstream_subscription(bridge, local, upstream):
    translated = bridge.subscriptions.upstream_rule(MatchRule.parse(local))
    assert (translated[0] if translated else None) == upstream
    if translated:
        assert MatchRule.parse(translated[0]) is not None  # upstream accepts what we send


def test_without_imports_nothing_is_subscribed_upstream():
    assert Subscriptions((), lambda local_name: None).upstream_rule(MatchRule.parse("type='signal'")) is None
