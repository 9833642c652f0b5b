"""busdctl's pure parts: busctl's typed-argument syntax, value printing, tree drawing, pcapng, /proc facts."""

from __future__ import annotations

import math
import struct

import pytest
from dbus_next.signature import SignatureTree, Variant
from hypothesis import given, settings
from hypothesis import strategies as st

from busdctl.cli import parse_options
from busdctl.creds import capability_names, tty_name, units_of_cgroup
from busdctl.errors import UsageError
from busdctl.formatting import c_escape, format_short, format_verbose, json_body
from busdctl.objects import tree_lines
from busdctl.pcapng import LINKTYPE_DBUS, enhanced_packet, interface_description, section_header
from busdctl.stats import ConnectionStats, _sort_key
from busdctl.typed_args import parse_arguments

# ---- parsing busctl's argument syntax ----


@pytest.mark.parametrize("signature, words, expected", [
    ("s", ["hello world"], ["hello world"]),
    ("ii", ["40", "-2"], [40, -2]),
    ("u", ["0x10"], [16]),
    ("i", ["010"], [8]),  # strtol's octal, as busctl reads it
    ("bbb", ["yes", "Off", "1"], [True, False, True]),
    ("d", ["2.5"], [2.5]),
    ("ay", ["3", "1", "2", "255"], [b"\x01\x02\xff"]),
    ("as", ["0"], [[]]),
    ("a{sv}", ["2", "name", "s", "Ada", "age", "u", "36"],
     [{"name": Variant("s", "Ada"), "age": Variant("u", 36)}]),
    ("(ias)", ["7", "2", "x", "y"], [[7, ["x", "y"]]]),
    ("v", ["v", "i", "3"], [Variant("v", Variant("i", 3))]),
    ("a(ii)", ["2", "1", "2", "3", "4"], [[[1, 2], [3, 4]]]),
    ("og", ["/org/example", "a{sv}"], ["/org/example", "a{sv}"]),
    ("", [], []),
])
def test_parse_arguments(signature, words, expected):
    assert parse_arguments(signature, words) == expected


@pytest.mark.parametrize("signature, words, complaint", [
    ("s", [], "Too few parameters for signature."),
    ("s", ["a", "b"], "Too many parameters for signature."),
    ("i", ["x"], "Failed to parse 'x' as signed 32bit integer"),
    ("y", ["256"], "out of range 0..255"),
    ("u", ["-1"], "out of range"),
    ("x", ["9223372036854775808"], "out of range"),
    ("b", ["maybe"], "Failed to parse 'maybe' as boolean"),
    ("d", ["pi"], "double precision"),
    ("o", ["not/a/path"], "not a valid object path"),
    ("g", ["a{"], "Invalid signature 'a{'"),
    ("as", ["-1"], "must not be negative"),
    ("as", ["two"], "array length"),
    ("v", ["ii", "1", "2"], "exactly one complete type"),
    ("h", ["0"], "not supported"),
    ("a{", [], "Invalid signature"),
])
def test_parse_errors_are_usage_errors(signature, words, complaint):
    with pytest.raises(UsageError) as caught:
        parse_arguments(signature, words)
    assert complaint in str(caught.value)
    assert caught.value.exit_code == 2


BASIC_VALUES = {
    "y": st.integers(0, 255), "n": st.integers(-(2**15), 2**15 - 1), "q": st.integers(0, 2**16 - 1),
    "i": st.integers(-(2**31), 2**31 - 1), "u": st.integers(0, 2**32 - 1),
    "x": st.integers(-(2**63), 2**63 - 1), "t": st.integers(0, 2**64 - 1), "b": st.booleans(),
    "d": st.floats(allow_nan=False), "s": st.text(st.characters(blacklist_categories=("Cs",),
                                                                blacklist_characters="\0")),
    "o": st.lists(st.from_regex(r"[A-Za-z0-9_]+", fullmatch=True), max_size=3).map(lambda p: "/" + "/".join(p)),
    "g": st.sampled_from(["", "s", "a{sv}", "(ii)v"]),
}
BASIC_TYPES = st.sampled_from(sorted(BASIC_VALUES))
TYPES = st.recursive(
    BASIC_TYPES | st.just("v"),
    lambda inner: st.one_of(inner.map(lambda t: "a" + t),
                            st.tuples(BASIC_TYPES, inner).map(lambda kv: "a{%s%s}" % kv),
                            st.lists(inner, min_size=1, max_size=3).map(lambda ts: "(" + "".join(ts) + ")")),
    max_leaves=4)


def _values(signature: str) -> st.SearchStrategy:
    """Values of one complete type, as dbus-next represents them."""
    token = signature[0]
    if token in BASIC_VALUES:
        return BASIC_VALUES[token]
    if token == "v":
        return BASIC_TYPES.flatmap(lambda inner: _values(inner).map(lambda value: Variant(inner, value)))
    children = [t.signature for t in SignatureTree(signature).types[0].children]
    if token == "(":
        return st.tuples(*(_values(c) for c in children)).map(list)
    element = children[0]
    if element.startswith("{"):
        key, value = (t.signature for t in SignatureTree(element[1:-1]).types)
        return st.dictionaries(_values(key), _values(value), max_size=3)
    if element == "y":
        return st.binary(max_size=4)
    return st.lists(_values(element), max_size=3)


def _words(signature: str, value) -> list[str]:
    """The busctl command-line words for a value: what a person would type."""
    token = signature[0]
    if token == "b":
        return ["true" if value else "false"]
    if token == "d":
        return [repr(value)]
    if token in BASIC_VALUES:
        return [str(value)]
    if token == "v":
        return [value.signature] + _words(value.signature, value.value)
    children = [t.signature for t in SignatureTree(signature).types[0].children]
    if token == "(":
        return [w for child, field in zip(children, value) for w in _words(child, field)]
    element = children[0]
    if element.startswith("{"):
        key_sig, value_sig = (t.signature for t in SignatureTree(element[1:-1]).types)
        return [str(len(value))] + [w for k, v in value.items() for w in _words(key_sig, k) + _words(value_sig, v)]
    return [str(len(value))] + [w for item in value for w in _words(element, item)]


@settings(max_examples=200, deadline=None)
@given(TYPES.flatmap(lambda signature: st.tuples(st.just(signature), _values(signature))))
def test_typed_words_parse_back_to_the_value(example):
    signature, value = example
    assert parse_arguments(signature, _words(signature, value)) == [value]


@settings(max_examples=100, deadline=None)
@given(TYPES.flatmap(lambda signature: st.tuples(st.just(signature), _values(signature))))
def test_every_value_prints_in_all_three_forms(example):
    signature, value = example
    short = format_short(signature, [value])
    assert short.startswith(signature)
    verbose = format_verbose(signature, [value]).splitlines()
    assert verbose[0] == f'MESSAGE "{signature}" {{' and verbose[-1] == "};"
    openings = [line for line in verbose if line.endswith(" {")]
    assert len(openings) == len([line for line in verbose if line.strip() == "};"])
    body = json_body(signature, [value])
    assert body["type"] == signature and len(body["data"]) == 1


# ---- printing values as busctl does ----

@pytest.mark.parametrize("text, escaped", [
    ('he"l\\lo\nx ü', 'he\\"l\\\\lo\\nx \\303\\274'),
    ("it's\ttab", "it\\'s\\ttab"),
    ("a\x01b\x7fc", "a\\001b\\177c"),
    ("plain", "plain"),
])
def test_c_escape_matches_busctl(text, escaped):
    assert c_escape(text) == escaped


@pytest.mark.parametrize("signature, values, shown", [
    ("s", ["hello"], 's "hello"'),
    ("as", [["a", "b"]], 'as 2 "a" "b"'),
    ("a{is}", [{1: "one", 2: "two"}], 'a{is} 2 1 "one" 2 "two"'),
    ("(ias)", [[1, ["a"]]], '(ias) 1 1 "a"'),
    ("v", [Variant("v", Variant("i", 3))], "v v i 3"),
    ("ddd", [1e100, 0.1, 123456789.0], "ddd 1e+100 0.1 1.23457e+08"),
    ("bay", [True, b"\x01\x02"], "bay true 2 1 2"),
    ("og", ["/a", "a{sv}"], 'og "/a" "a{sv}"'),
])
def test_short_form(signature, values, shown):
    assert format_short(signature, values) == shown


def test_verbose_form():
    value = {"k": Variant("(ayd)", [b"\x01", 3.5])}
    assert format_verbose("a{sv}", [value]) == "\n".join([
        'MESSAGE "a{sv}" {',
        '        ARRAY "{sv}" {',
        '                DICT_ENTRY "sv" {',
        '                        STRING "k";',
        '                        VARIANT "(ayd)" {',
        '                                STRUCT "ayd" {',
        '                                        ARRAY "y" {',
        '                                                BYTE 1;',
        '                                        };',
        '                                        DOUBLE 3.5;',
        '                                };',
        '                        };',
        '                };',
        '        };',
        '};'])


def test_json_form():
    body = json_body("a{sv}a{ib}ay", [{"a": Variant("as", ["x"])}, {7: True}, b"\x05"])
    assert body == {"type": "a{sv}a{ib}ay",
                    "data": [{"a": {"type": "as", "data": ["x"]}}, {"7": True}, [5]]}


# ---- tree drawing ----

def test_tree_lines_draw_each_path_under_its_nearest_listed_ancestor():
    paths = ["/", "/org", "/org/example", "/org/example/Demo", "/org/example/Demo/Child", "/org/example/Other",
             "/com/x/y"]
    assert tree_lines(paths) == [
        "├─/com/x/y",
        "└─/org",
        "  └─/org/example",
        "    ├─/org/example/Demo",
        "    │ └─/org/example/Demo/Child",
        "    └─/org/example/Other",
    ]
    assert tree_lines([]) == ["No objects discovered."]
    assert tree_lines(["/"]) == ["Only root object discovered."]


# ---- pcapng ----

def test_pcapng_blocks():
    header = section_header("busdctl test", "Linux")
    block_type, length, magic, major, minor = struct.unpack_from("<IIIHH", header)
    assert (block_type, magic, major, minor) == (0x0A0D0D0A, 0x1A2B3C4D, 1, 0)
    assert length == len(header) and struct.unpack_from("<I", header, length - 4)[0] == length and length % 4 == 0
    interface = interface_description(4096)
    assert struct.unpack_from("<IIHHI", interface) == (1, len(interface), LINKTYPE_DBUS, 0, 4096)
    message = bytes(range(10))
    packet = enhanced_packet(message, 1_700_000_000.25, snaplen=8)
    block_type, length, interface_id, high, low, captured, original = struct.unpack_from("<IIIIIII", packet)
    assert (block_type, interface_id, captured, original) == (6, 0, 8, 10)
    assert ((high << 32) | low) == 1_700_000_000_250_000
    assert packet[28:36] == message[:8] and length == len(packet) and length % 4 == 0


# ---- /proc facts ----

@pytest.mark.parametrize("path, unit, slice_, user_unit, user_slice, session", [
    ("/", None, "-.slice", None, None, None),
    ("/system.slice/dbus.service", "dbus.service", "system.slice", None, None, None),
    ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope", "user-1000.slice", None, None, "3"),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service", "user@1000.service",
     "user-1000.slice", "foo.service", "app.slice", None),
])
def test_units_of_cgroup(path, unit, slice_, user_unit, user_slice, session):
    units = units_of_cgroup(path)
    assert (units.unit, units.slice, units.user_unit, units.user_slice, units.session) == \
        (unit, slice_, user_unit, user_slice, session)


def test_tty_and_capability_names():
    assert tty_name(0) is None
    assert tty_name((136 << 8) | 3) == "pts/3"
    assert tty_name((4 << 8) | 1) == "tty1"
    assert capability_names(0b101) == ["cap_chown", "cap_dac_read_search"]


# ---- options and stats ordering ----

def test_options_as_busctl_spells_them():
    options = parse_options(["--json", "call", "--timeout=500ms", "--expect-reply=no", "s", "/o", "i.f", "m",
                             "i", "-5"])
    assert options.json == "auto" and options.timeout == 0.5 and options.expect_reply is False
    assert options.words == ["call", "s", "/o", "i.f", "m", "i", "-5"]
    assert parse_options(["-j", "list"]).json == "auto"
    assert parse_options(["--size=64K", "capture"]).size == 65536
    assert parse_options(["--timeout=infinity", "wait", "x.y"]).timeout is None
    assert parse_options(["--user", "list"]).scope == "user" and parse_options(["list"]).scope == "system"
    assert parse_options(["call", "--", "s", "/o", "i.f", "m", "s", "--not-an-option"]).words[-1] == "--not-an-option"
    for wrong in (["--auto-start=perhaps", "list"], ["--timeout=soon", "list"], ["--json=loud", "list"]):
        with pytest.raises(UsageError):
            parse_options(wrong)


def test_stats_order_puts_the_largest_share_of_a_limit_first():
    def entry(name: str, **stats: int) -> ConnectionStats:
        return ConnectionStats(name, stats, None, None, [])

    entries = [entry(":1.9", MatchRules=10), entry(":1.10", IncomingBytes=100 * 1024 * 1024),
               entry(":1.2", BusNames=1), entry(":1.3", BusNames=1)]
    ordered = [e.connection for e in sorted(entries, key=_sort_key)]
    assert ordered == [":1.10", ":1.9", ":1.2", ":1.3"]
    assert entries[1].quota[0] == "IncomingBytes" and math.isclose(entries[1].quota[1], 100 / 127)
