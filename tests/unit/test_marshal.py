"""Marshalling and unmarshalling of D-Bus values: layout, round trips in both byte orders, errors.

The hypothesis strategies at the top (signatures and values of every type) are
also used by test_message.py and test_wire_fuzz.py.
"""

from __future__ import annotations

import struct
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from busd.wire.errors import MarshalError, ProtocolError
from busd.wire.marshal import (
    BIG, LITTLE, MAX_ARRAY_LENGTH, Variant, check_body, compiled_checker, compiled_reader,
    compiled_writer, marshal_body, unmarshal_body,
)
from busd.wire.signature import TypeNode, is_valid_signature, parse_signature, parse_single_type

ENDIANS = {"little": LITTLE, "big": BIG}
FD_COUNT = 4  # generated 'h' values are indices below this; messages declare UNIX_FDS = FD_COUNT

# ---------------------------------------------------------------- strategies

BASIC_CODES = "ybnqiuxtdhsog"
_INTEGER_RANGES = {
    "y": (0, 0xFF), "n": (-(1 << 15), (1 << 15) - 1), "q": (0, 0xFFFF), "i": (-(1 << 31), (1 << 31) - 1),
    "u": (0, 0xFFFFFFFF), "x": (-(1 << 63), (1 << 63) - 1), "t": (0, (1 << 64) - 1), "h": (0, FD_COUNT - 1),
}

# D-Bus strings are UTF-8 without NUL: any code point but surrogates and U+0000.
dbus_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)
object_paths = st.lists(st.from_regex(r"[A-Za-z0-9_]{1,6}", fullmatch=True), max_size=4).map(
    lambda elements: "/" + "/".join(elements))


def _containers(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        children.map(lambda c: "a" + c),
        st.lists(children, min_size=1, max_size=4).map(lambda cs: "(" + "".join(cs) + ")"),
        st.tuples(st.sampled_from(BASIC_CODES), children).map(lambda kv: "a{" + kv[0] + kv[1] + "}"),
    )


single_types: st.SearchStrategy[str] = st.recursive(
    st.sampled_from(list(BASIC_CODES + "v")), _containers, max_leaves=6,
).filter(is_valid_signature)
"""One complete type of any kind, every type code included."""

signatures: st.SearchStrategy[str] = st.lists(single_types, max_size=4).map("".join).filter(is_valid_signature)
"""A whole signature: zero or more complete types."""


@lru_cache(maxsize=None)
def values_for(single_type: str, variant_depth: int = 2) -> st.SearchStrategy:
    """Values of one complete type, in the documented Python representation."""
    return _values(parse_single_type(single_type), variant_depth)


def _values(node: TypeNode, variant_depth: int) -> st.SearchStrategy:
    code = node.code
    if code in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[code]
        return st.integers(low, high)
    simple = {
        "b": st.booleans(),
        "d": st.floats(allow_nan=False),
        "s": dbus_text,
        "o": object_paths,
        "g": signatures,
    }
    if code in simple:
        return simple[code]
    if code == "v":
        # Bound variant nesting so generation terminates; deeper nesting has its own tests.
        inner = single_types if variant_depth else st.sampled_from(list(BASIC_CODES))
        return inner.flatmap(lambda sig: values_for(sig, max(variant_depth - 1, 0)).map(
            lambda value: Variant(sig, value)))
    if code == "a":
        elem = node.children[0]
        if elem.code == "y":
            return st.binary(max_size=16)
        if elem.code == "{":
            key, value = elem.children
            return st.dictionaries(_values(key, variant_depth), _values(value, variant_depth), max_size=3)
        return st.lists(_values(elem, variant_depth), max_size=3)
    return st.tuples(*(_values(child, variant_depth) for child in node.children))


@st.composite
def bodies(draw) -> tuple[str, list]:
    """A signature and one value per complete type in it."""
    types = draw(st.lists(single_types, min_size=1, max_size=4))
    signature = "".join(types)
    assume(is_valid_signature(signature))
    return signature, [draw(values_for(t)) for t in types]


# ---------------------------------------------------------------- strict comparison

_PYTHON_TYPES = {"b": bool, "d": float, "s": str, "o": str, "g": str}


def assert_same_value(node: TypeNode, expected, actual) -> None:
    """`actual` equals `expected` and has exactly the documented Python type for `node`."""
    code = node.code
    if code in _INTEGER_RANGES:
        assert type(actual) is int and actual == expected, (node.signature, expected, actual)
    elif code in _PYTHON_TYPES:
        assert type(actual) is _PYTHON_TYPES[code] and actual == expected, (node.signature, expected, actual)
    elif code == "v":
        assert type(actual) is Variant and actual.signature == expected.signature, (expected, actual)
        assert_same_value(parse_single_type(actual.signature), expected.value, actual.value)
    elif code == "a":
        elem = node.children[0]
        if elem.code == "y":
            assert type(actual) is bytes and actual == bytes(expected)
        elif elem.code == "{":
            assert type(actual) is dict and list(actual) == list(expected), (expected, actual)
            for k in expected:
                assert_same_value(elem.children[1], expected[k], actual[k])
        else:
            assert type(actual) is list and len(actual) == len(expected), (expected, actual)
            for e, a in zip(expected, actual):
                assert_same_value(elem, e, a)
    else:
        assert type(actual) is tuple and len(actual) == len(node.children), (expected, actual)
        for child, e, a in zip(node.children, expected, actual):
            assert_same_value(child, e, a)


def assert_same_body(signature: str, expected: list, actual: list) -> None:
    nodes = parse_signature(signature)
    assert len(actual) == len(nodes)
    for node, e, a in zip(nodes, expected, actual):
        assert_same_value(node, e, a)


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("endian", ENDIANS.values(), ids=ENDIANS.keys())
@given(body=bodies())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_of_generated_bodies(endian: int, body: tuple[str, list]) -> None:
    signature, values = body
    data = marshal_body(signature, values, endian)
    check_body(signature, data, 0, len(data), endian, nfds=FD_COUNT)
    assert_same_body(signature, values, unmarshal_body(signature, data, 0, endian))


@pytest.mark.parametrize("endian", ENDIANS.values(), ids=ENDIANS.keys())
@given(body=bodies())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_body_reads_the_same_at_any_8_aligned_offset(endian: int, body: tuple[str, list]) -> None:
    # Alignment is relative to the start of the message, and a body starts 8-aligned.
    signature, values = body
    data = marshal_body(signature, values, endian)
    framed = b"\xff" * 24 + data
    check_body(signature, framed, 24, len(framed), endian, nfds=FD_COUNT)
    assert_same_body(signature, values, unmarshal_body(signature, framed, 24, endian))


@given(body=bodies())
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_byte_orders_give_bodies_of_equal_length(body: tuple[str, list]) -> None:
    # Padding does not depend on the byte order, only the bytes of numbers do.
    signature, values = body
    assert len(marshal_body(signature, values, LITTLE)) == len(marshal_body(signature, values, BIG))


@pytest.mark.parametrize("code", list("ybnqiuxtdhsogv"))
@pytest.mark.parametrize("endian", ENDIANS.values(), ids=ENDIANS.keys())
def test_every_type_code_round_trips(code: str, endian: int) -> None:
    samples = {"y": 0xAB, "b": True, "n": -2, "q": 0xBEEF, "i": -70000, "u": 0xDEADBEEF, "x": -(1 << 40),
               "t": 1 << 63, "d": -1.5, "h": 2, "s": "grüße", "o": "/org/example/x", "g": "a{sv}(ih)",
               "v": Variant("(sa{sv})", ("x", {"k": Variant("h", 1)}))}
    data = marshal_body(code, [samples[code]], endian)
    check_body(code, data, 0, len(data), endian, nfds=FD_COUNT)
    assert_same_body(code, [samples[code]], unmarshal_body(code, data, 0, endian))


# ---------------------------------------------------------------- layout, from the specification

def _le(fmt: str, *values) -> bytes:
    return struct.pack("<" + fmt, *values)


LAYOUTS = [
    # (signature, values, little-endian bytes built from the specification's rules)
    ("y", [0x12], b"\x12"),
    ("b", [True], _le("I", 1)),
    ("yn", [1, -2], b"\x01\0" + _le("h", -2)),
    ("yi", [1, 2], b"\x01\0\0\0" + _le("i", 2)),
    ("yx", [1, 2], b"\x01" + b"\0" * 7 + _le("q", 2)),
    ("yd", [1, 0.5], b"\x01" + b"\0" * 7 + _le("d", 0.5)),
    ("yh", [1, 3], b"\x01\0\0\0" + _le("I", 3)),
    ("s", ["abc"], _le("I", 3) + b"abc\0"),
    ("ys", [1, ""], b"\x01\0\0\0" + _le("I", 0) + b"\0"),
    ("o", ["/a/b"], _le("I", 4) + b"/a/b\0"),
    ("g", ["a{sv}"], b"\x05a{sv}\0"),
    ("ay", [b""], _le("I", 0)),
    ("ay", [b"\x01\x02"], _le("I", 2) + b"\x01\x02"),
    # The array length counts the elements, not the padding between it and the first one.
    ("ax", [[5]], _le("I", 8) + b"\0" * 4 + _le("q", 5)),
    ("ax", [[]], _le("I", 0) + b"\0" * 4),
    ("a(yy)", [[(1, 2), (3, 4)]], _le("I", 10) + b"\0" * 4 + b"\x01\x02" + b"\0" * 6 + b"\x03\x04"),
    ("a{yu}", [{1: 2}], _le("I", 8) + b"\0" * 4 + b"\x01\0\0\0" + _le("I", 2)),
    ("(yy)y", [(1, 2), 3], b"\x01\x02\x03"),
    ("y(y)", [1, (2,)], b"\x01" + b"\0" * 7 + b"\x02"),
    # A variant is its signature then its value, aligned for the value's own type.
    ("v", [Variant("u", 7)], b"\x01u\0" + b"\0" + _le("I", 7)),
    ("v", [Variant("y", 7)], b"\x01y\0\x07"),
    ("yv", [1, Variant("(y)", (2,))], b"\x01\x03(y)\0" + b"\0" * 2 + b"\x02"),
]


@pytest.mark.parametrize("signature, values, expected", LAYOUTS, ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(LAYOUTS)])
def test_layout_matches_the_specification(signature: str, values: list, expected: bytes) -> None:
    assert marshal_body(signature, values, LITTLE) == expected
    assert_same_body(signature, values, unmarshal_body(signature, expected, 0, LITTLE))


@pytest.mark.parametrize("code, fmt, value", [
    ("n", "h", -2), ("q", "H", 0x1234), ("i", "i", -5), ("u", "I", 0x01020304), ("x", "q", -(1 << 40)),
    ("t", "Q", 0x0102030405060708), ("d", "d", 3.25), ("h", "I", 1), ("b", "I", 1),
])
def test_big_endian_numbers(code: str, fmt: str, value) -> None:
    assert marshal_body(code, [value], BIG) == struct.pack(">" + fmt, value)
    assert marshal_body("s", ["ab"], BIG) == struct.pack(">I", 2) + b"ab\0"
    assert unmarshal_body(code, struct.pack(">" + fmt, value), 0, BIG) == [value]


def test_compiled_functions_are_cached_per_signature_and_byte_order() -> None:
    assert compiled_writer("a{sv}", "<") is compiled_writer("a{sv}", "<")
    assert compiled_writer("a{sv}", "<") is not compiled_writer("a{sv}", ">")
    assert compiled_reader("(ii)", ">") is compiled_reader("(ii)", ">")
    assert compiled_checker("as", "<") is compiled_checker("as", "<")


def test_writers_accept_the_documented_alternatives() -> None:
    # Structs from lists, byte arrays from bytearray / memoryview / lists of ints, any iterable as array.
    assert marshal_body("(ii)", [[1, 2]]) == marshal_body("(ii)", [(1, 2)])
    for raw in (bytearray(b"ab"), memoryview(b"ab"), [97, 98], (97, 98)):
        assert marshal_body("ay", [raw]) == marshal_body("ay", [b"ab"])
    assert marshal_body("ai", [range(3)]) == marshal_body("ai", [[0, 1, 2]])
    assert marshal_body("b", [0]) == marshal_body("b", [False])


# ---------------------------------------------------------------- caller mistakes

MARSHAL_ERRORS = [
    ("y", 256), ("y", -1), ("n", 1 << 15), ("q", -1), ("i", 1 << 31), ("u", -1), ("x", 1 << 63), ("t", -1),
    ("i", 1.5), ("d", "1.0"), ("h", -1),
    ("s", 5), ("s", "a\0b"), ("s", "\ud800"), ("s", b"bytes"),
    ("o", "relative/path"), ("o", "/trailing/"), ("o", "//"), ("o", "/with-dash"), ("o", 7),
    ("g", "a{vs}"), ("g", "(("), ("g", 5),
    ("v", 5), ("v", ("i", 5)), ("v", Variant("ii", (1, 2))), ("v", Variant("", None)), ("v", Variant("i", "x")),
    ("(ii)", (1,)), ("(ii)", 5), ("a{sv}", [("a", Variant("i", 1))]), ("a{sv}", {"a": 1}),
    ("as", "abc"), ("ai", 5), ("ay", [256]), ("ay", ["x"]), ("ay", "text"),
]


@pytest.mark.parametrize("signature, value", MARSHAL_ERRORS, ids=[f"{s}-{v!r}" for s, v in MARSHAL_ERRORS])
def test_values_that_do_not_fit_raise_marshal_error(signature: str, value) -> None:
    with pytest.raises(MarshalError):
        marshal_body(signature, [value])


def test_wrong_number_of_values_raises_marshal_error() -> None:
    with pytest.raises(MarshalError, match="needs 2 values, got 1"):
        marshal_body("ii", [1])
    with pytest.raises(MarshalError):
        compiled_writer("ii")(bytearray(), [1, 2, 3])


def test_array_over_64_mib_is_refused() -> None:
    with pytest.raises(MarshalError, match="limit"):
        marshal_body("ay", [bytes(MAX_ARRAY_LENGTH + 1)])


# ---------------------------------------------------------------- unmarshalling untrusted bytes

# unmarshal_body trusts bodies that check_body accepted; on anything else it may
# return nonsense, but its only exception must be ProtocolError.
@pytest.mark.parametrize("signature, data", [
    ("s", _le("I", 2) + b"\xff\xfe\0"),     # not UTF-8
    ("i", b"\x01\x02"),                     # truncated
    ("v", b"\x02ii\0" + _le("i", 1) * 2),   # variant with two types
    ("v", b"\x01\xff\0\0"),                 # variant signature not ASCII
    ("v", b"\x01v\0" * 3000 + b"\x01y\0\x01"),  # variants nested far beyond any limit
])
def test_unmarshal_body_of_bad_bytes_raises_protocol_error(signature: str, data: bytes) -> None:
    with pytest.raises(ProtocolError):
        unmarshal_body(signature, data, 0)
