"""Offline tests of the SDK's pure parts: type mapping, value conversion, match rules, XML and codegen, errors."""

from __future__ import annotations

import dataclasses
import enum
import os
from pathlib import Path
from typing import Any, NamedTuple, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from busd.wire.errors import SignatureError
from busd.wire.signature import is_valid_signature, parse_signature
from busd_client import (Byte, DBusError, Int16, Int64, Interface, ObjectPath, UInt16, UInt32, UInt64, UnixFD,
                         Variant, check_interface, dbus_property, method, signal, signature_of)
from busd_client._backend import BACKEND_ENV, default_backend_name, get_backend
from busd_client.codegen import generate, hint_for
from busd_client.convert import Codec, close_fds
from busd_client.dbus_types import guess_signature, return_signature
from busd_client.errors import InvalidArgs, NoReply, UnknownMethod
from busd_client.introspection import compare_interfaces, load_interface_file, parse_xml
from busd_client.matching import SignalRule

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_XML = REPO / "interfaces" / "dev.busd.Example1.xml"
BACKENDS = ["dbus_next", "dbus_fast"]


class Point(BaseModel):
    x: int
    y: float


class Shape(BaseModel):
    name: str
    corners: list[Point]
    color: Byte
    meta: dict[str, Any]


@dataclasses.dataclass
class Span:
    start: UInt64
    end: UInt64


class Pair(NamedTuple):
    left: str
    right: Int16


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


# -- Python hints -> D-Bus signatures ------------------------------------------------------

@pytest.mark.parametrize("hint, expected", [
    (int, "i"), (float, "d"), (str, "s"), (bool, "b"), (bytes, "ay"), (Any, "v"), (Variant, "v"),
    (Byte, "y"), (Int16, "n"), (UInt16, "q"), (UInt32, "u"), (Int64, "x"), (UInt64, "t"),
    (ObjectPath, "o"), (UnixFD, "h"), (list[str], "as"), (list[list[UInt32]], "aau"),
    (dict[str, Any], "a{sv}"), (dict[ObjectPath, dict[str, int]], "a{oa{si}}"),
    (tuple[int, str], "(is)"), (tuple[float, ...], "ad"), (Point, "(id)"), (Shape, "(sa(id)ya{sv})"),
    (Span, "(tt)"), (Pair, "(sn)"), (Level, "i"), (list[Shape], "a(sa(id)ya{sv})"),
])
def test_hints_map_to_signatures(hint, expected):
    assert signature_of(hint) == expected


@pytest.mark.parametrize("hint, message", [
    (Optional[int], "no optional or union"),
    (int | str, "no optional or union"),
    (dict[Point, int], "dict keys must be a basic type"),
    (set, "no D-Bus type"),
    (complex, "no D-Bus type"),
])
def test_unmappable_hints_say_what_to_use(hint, message):
    with pytest.raises(TypeError, match=message):
        signature_of(hint)


def test_return_annotations_give_out_arguments():
    assert return_signature(None) == ("", [])
    assert return_signature(tuple[int, str])[0] == "is"          # two out arguments
    assert return_signature(tuple[tuple[int, str]])[0] == "(is)"  # one struct
    assert return_signature(Point)[0] == "(id)"
    assert return_signature(tuple[int, ...])[0] == "ai"


@pytest.mark.parametrize("value, expected", [
    (True, "b"), (3, "i"), (2**40, "x"), (2**63, "t"), (1.5, "d"), ("s", "s"), (b"x", "ay"),
    ([1, 2], "ai"), ({"a": 1}, "a{sv}"), ((1, "a"), "(is)"), (Point(x=1, y=2.0), "(id)"), ([1, "a"], "av"),
])
def test_variant_contents_guess_their_signature(value, expected):
    assert guess_signature(value) == expected


# -- signatures -----------------------------------------------------------------------------

def test_signature_parsing_is_busd_wires():
    # The SDK parses signatures with busd.wire.signature, the bus's own parser.
    assert [node.signature for node in parse_signature("a{sv}(ia(ss))ay")] == ["a{sv}", "(ia(ss))", "ay"]
    node = parse_signature("a{s(id)}")[0]
    assert [child.signature for child in node.children[0].children] == ["s", "(id)"]
    for bad in ("a", "(", "()", "{ss}", "a{vs}", "a{sss}", "z", "(i", "i)"):
        with pytest.raises(SignatureError):
            parse_signature(bad)


# -- value conversion, through each backend's own marshaller ----------------------------------

@pytest.mark.parametrize("backend_name", BACKENDS)
def test_models_convert_to_structs_and_back(backend_name):
    codec = Codec(get_backend(backend_name))
    shape = Shape(name="tri", corners=[Point(x=0, y=0.0), Point(x=1, y=0.5)], color=7,
                  meta={"depth": 2, "tags": ["a"], "origin": Variant("(ii)", (0, 0))})
    signature = signature_of(Shape)
    body, fds = codec.body_encoder(signature, [Shape])([shape])
    assert fds == []
    _marshal(backend_name, signature, body)
    decoded = codec.body_decoder(signature, [Shape])(body, [])
    assert decoded[0] == Shape(name="tri", corners=[Point(x=0, y=0.0), Point(x=1, y=0.5)], color=7,
                               meta={"depth": 2, "tags": ["a"], "origin": (0, 0)})
    untyped = codec.body_decoder(signature, [])(body, [])
    assert untyped[0][:3] == ("tri", [(0, 0.0), (1, 0.5)], 7)

    span_pair = codec.body_encoder("(tt)(sn)", [Span, Pair])([Span(start=1, end=2**64 - 1), Pair("l", -3)])
    assert codec.body_decoder("(tt)(sn)", [Span, Pair])(span_pair[0], []) == [Span(1, 2**64 - 1), Pair("l", -3)]


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_file_descriptors_are_duplicated_for_sending(backend_name):
    codec = Codec(get_backend(backend_name))
    read_end, write_end = os.pipe()
    try:
        body, fds = codec.body_encoder("hh")([read_end, write_end])
        assert body == [0, 1] and len(fds) == 2 and not set(fds) & {read_end, write_end}
        assert codec.body_decoder("hh")(body, fds) == fds
        close_fds(fds)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_wrong_arity_and_struct_shape_are_reported():
    codec = Codec(get_backend("dbus_next"))
    with pytest.raises(TypeError, match="takes 2 arguments"):
        codec.body_encoder("is")([1])
    with pytest.raises(TypeError, match="has 2 fields"):
        codec.body_encoder("(is)")([(1, "a", 3)])
    with pytest.raises(TypeError, match="Point has 2 fields but the D-Bus struct"):
        codec.body_decoder("(ids)", [Point])


def _marshal(backend_name: str, signature: str, body: list[Any]) -> bytes:
    """Marshal a body with the backend itself, which checks it against the signature."""
    backend = get_backend(backend_name)
    message = backend.Message(destination="dev.busd.Test", path="/t", interface="dev.busd.Test",
                              member="M", signature=signature, body=body)
    return bytes(message._marshall(False))


_BASIC_VALUES: dict[Any, st.SearchStrategy[Any]] = {
    int: st.integers(-2**31, 2**31 - 1),
    UInt32: st.integers(0, 2**32 - 1),
    Byte: st.integers(0, 255),
    Int64: st.integers(-2**63, 2**63 - 1),
    float: st.floats(allow_nan=False),
    bool: st.booleans(),
    str: st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8),
    bytes: st.binary(max_size=8),
}


def _typed_values(depth: int = 2) -> st.SearchStrategy[tuple[Any, Any, Any]]:
    """(hint, value, the value as it comes back when decoded with that hint)."""
    basic = st.sampled_from(list(_BASIC_VALUES)).flatmap(
        lambda hint: _BASIC_VALUES[hint].map(lambda value: (hint, value, value)))
    if depth == 0:
        return basic
    inner = _typed_values(depth - 1)
    lists = inner.flatmap(lambda item: st.lists(_same_type(item, depth - 1), max_size=3).map(
        lambda items: (list[item[0]], [v for _, v, _ in items], [d for _, _, d in items])))
    dicts = inner.flatmap(lambda item: st.dictionaries(_BASIC_VALUES[str], _same_type(item, depth - 1), max_size=3)
                          .map(lambda entries: (dict[str, item[0]], {k: v for k, (_, v, _) in entries.items()},
                                                {k: d for k, (_, _, d) in entries.items()})))
    structs = st.tuples(inner, inner).map(
        lambda pair: (tuple[pair[0][0], pair[1][0]], (pair[0][1], pair[1][1]), (pair[0][2], pair[1][2])))
    points = st.builds(Point, x=_BASIC_VALUES[int], y=_BASIC_VALUES[float]).map(lambda p: (Point, p, p))
    return st.one_of(basic, lists, dicts, structs, points)


def _same_type(example: tuple[Any, Any, Any], depth: int) -> st.SearchStrategy[tuple[Any, Any, Any]]:
    hint = example[0]
    return _typed_values(depth).filter(lambda item: item[0] == hint) | st.just(example)


@settings(max_examples=150, deadline=None)
@given(typed=_typed_values(), backend_name=st.sampled_from(BACKENDS))
def test_any_typed_value_survives_encoding_marshalling_and_decoding(typed, backend_name):
    hint, value, expected = typed
    codec = Codec(get_backend(backend_name))
    signature = signature_of(hint)
    body, _ = codec.body_encoder(signature, [hint])([value])
    _marshal(backend_name, signature, body)
    decode = codec.body_decoder(signature, [hint])
    assert (decode(body, []) if decode else body) == [expected]


# -- match rules -----------------------------------------------------------------------------

def test_match_rule_strings_hold_exactly_what_was_asked():
    rule = SignalRule.for_signal("dev.busd.X", "/a", "dev.busd.X", "Changed", arg0="it's", arg2path="/p/")
    assert rule.to_string() == ("type='signal',sender='dev.busd.X',interface='dev.busd.X',member='Changed',"
                                "path='/a',arg0='it'\\''s',arg2path='/p/'")
    assert SignalRule.for_signal(None, None, None, None).to_string() == "type='signal'"
    with pytest.raises(TypeError, match="unknown signal filter"):
        SignalRule.for_signal(None, None, None, None, arg64="x")
    with pytest.raises(TypeError, match="only arg0namespace"):
        SignalRule.for_signal(None, None, None, None, arg1namespace="x")
    with pytest.raises(ValueError, match="either path or path_namespace"):
        SignalRule.for_signal(None, "/a", None, None, path_namespace="/a")


class _Message:
    def __init__(self, sender="", path="/", interface="i.f", member="M", destination=None, body=()):
        self.sender, self.path, self.interface, self.member = sender, path, interface, member
        self.destination, self.body = destination, list(body)


def test_match_rules_apply_locally_as_the_bus_applies_them():
    class Owner:
        owner = ":1.7"

    named = SignalRule.for_signal("dev.busd.Named", None, None, None).compile(Owner())
    assert named(_Message(sender=":1.7")) and not named(_Message(sender=":1.8"))
    assert named(_Message(sender="dev.busd.Named"))
    headers = SignalRule.for_signal(":1.7", "/p", "i.f", "M").compile()
    assert headers(_Message(sender=":1.7", path="/p")) and not headers(_Message(sender=":1.7", path="/q"))
    with pytest.raises(ValueError, match="needs the owner"):
        SignalRule.for_signal("dev.busd.Named", None, None, None).compile()
    path_arg = SignalRule.for_signal(None, None, None, None, arg0path="/aa/bb/").compile()
    assert [path_arg(_Message(body=[arg])) for arg in ("/aa/bb/", "/aa/bb/cc", "/aa/", "/aa/b", "/aa")] == \
        [True, True, True, False, False]
    namespace = SignalRule.for_signal(None, None, None, None, arg0namespace="com.example").compile()
    assert [namespace(_Message(body=[arg])) for arg in ("com.example", "com.example.A", "com.examples")] == \
        [True, True, False]
    subtree = SignalRule.for_signal(None, None, None, None, path_namespace="/a/b").compile()
    assert [subtree(_Message(path=p)) for p in ("/a/b", "/a/b/c", "/a/bc", "/a")] == [True, True, False, False]
    string_arg = SignalRule.for_signal(None, None, None, None, arg1="x").compile()
    assert [string_arg(_Message(body=body)) for body in (["a", "x"], ["x"], ["a", 5])] == [True, False, False]


# -- interface classes, XML and codegen ---------------------------------------------------------

class Gadget(Interface, name="dev.busd.Gadget1"):
    @method(out_names=("total",))
    def Add(self, a: int, b: int) -> Int64:
        return a + b

    @method()
    async def Describe(self) -> tuple[str, list[Point]]:
        return "g", []

    @signal()
    def Moved(self, where: Point, level: Level) -> None: ...

    @dbus_property(emits_changed="invalidates")
    def Size(self) -> UInt32:
        return 1

    @Size.setter
    def Size(self, value: int) -> None:
        pass


def test_interface_classes_yield_introspection_xml():
    interfaces, _ = parse_xml(Gadget.introspection_xml())
    gadget = interfaces["dev.busd.Gadget1"]
    assert gadget.methods["Add"].in_signature == "ii" and gadget.methods["Add"].out_signature == "x"
    assert gadget.methods["Add"].out_args[0].name == "total"
    assert gadget.methods["Describe"].out_signature == "sa(id)"
    assert gadget.signals["Moved"].signature == "(id)i"
    assert (gadget.properties["Size"].access, gadget.properties["Size"].emits_changed) == ("readwrite", "invalidates")
    assert compare_interfaces(Gadget.__dbus_interface__, gadget) == []


def test_interface_class_errors_name_the_culprit():
    with pytest.raises(TypeError, match="Bad.Take, parameter 'value'.*no optional"):
        class Bad(Interface, name="dev.busd.Bad1"):
            @method()
            def Take(self, value: Optional[int]) -> None: ...
    with pytest.raises(TypeError, match="parameter 'value' needs a type annotation"):
        class Untyped(Interface, name="dev.busd.Untyped1"):
            @method()
            def Take(self, value) -> None: ...


def test_example_xml_generates_a_matching_class_and_catches_mismatches(tmp_path):
    spec = load_interface_file(EXAMPLE_XML)
    source = generate(spec, source=EXAMPLE_XML.name)
    namespace: dict[str, Any] = {"__name__": "generated_example"}
    path = tmp_path / "generated_example.py"
    path.write_text(source)
    exec(compile(source, str(path), "exec"), namespace)
    generated = namespace["Example1"]
    assert compare_interfaces(generated.__dbus_interface__, spec) == []
    check_interface(generated, EXAMPLE_XML)

    class Drifted(Interface, name="dev.busd.Example1"):
        @method()
        def Greet(self, who: str) -> UInt32:
            return 0

    with pytest.raises(TypeError) as mismatch:
        check_interface(Drifted, EXAMPLE_XML)
    assert "method Greet out-signature is 'u', expected 's'" in str(mismatch.value)
    assert "missing signal Tick" in str(mismatch.value)


_signatures = st.deferred(lambda: st.one_of(
    st.sampled_from(list("ybnqiuxtdsoghv")),
    _signatures.map(lambda s: "a" + s),
    st.tuples(st.sampled_from(list("ybnqiuxtdsog")), _signatures).map(lambda kv: "a{" + kv[0] + kv[1] + "}"),
    st.lists(_signatures, min_size=1, max_size=3).map(lambda items: "(" + "".join(items) + ")"),
))


# valid ones only: the generator can nest arrays deeper than the specification's 32
@given(_signatures.filter(lambda s: len(s) < 200 and is_valid_signature(s)))
def test_codegen_hints_map_back_to_their_signature(signature):
    import busd_client
    hint = eval(hint_for(parse_signature(signature)[0]), {"Any": Any, **vars(busd_client)})
    assert signature_of(hint) == signature


# -- errors and backends ----------------------------------------------------------------------------

def test_error_replies_become_the_registered_exception():
    class Busy(DBusError, name="dev.busd.Test.Error.Busy"):
        pass

    assert type(DBusError.from_reply("dev.busd.Test.Error.Busy", "later")) is Busy
    assert isinstance(DBusError.from_reply("org.freedesktop.DBus.Error.UnknownMethod", ""), UnknownMethod)
    assert isinstance(DBusError.from_reply("org.freedesktop.DBus.Error.NoReply", ""), TimeoutError)
    unknown = DBusError.from_reply("com.example.Whatever", "text")
    assert (type(unknown), unknown.name, str(unknown)) == (DBusError, "com.example.Whatever",
                                                           "com.example.Whatever: text")
    assert InvalidArgs("bad").name == "org.freedesktop.DBus.Error.InvalidArgs"
    assert isinstance(NoReply(), TimeoutError)
    with pytest.raises(ValueError, match="not a valid D-Bus error name"):
        DBusError("x", name="nodots")


def test_backend_follows_the_environment(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "dbus_next")
    assert default_backend_name() == "dbus_next"
    monkeypatch.delenv(BACKEND_ENV)
    assert default_backend_name() == "dbus_fast"   # installed here, so preferred
    monkeypatch.setenv(BACKEND_ENV, "libdbus")
    with pytest.raises(ValueError, match="not a known backend"):
        default_backend_name()
