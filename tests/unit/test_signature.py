"""Type signatures: every type code, the length and nesting limits, dict entry rules, error positions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from busd.wire.errors import ProtocolError, SignatureError
from busd.wire.signature import (
    MAX_ARRAY_DEPTH, MAX_SIGNATURE_LENGTH, MAX_STRUCT_DEPTH, is_valid_signature, parse_signature,
    parse_single_type,
)
from test_marshal import signatures, single_types

ALIGNMENT_AND_SIZE = {
    "y": (1, 1), "b": (4, 4), "n": (2, 2), "q": (2, 2), "i": (4, 4), "u": (4, 4), "x": (8, 8), "t": (8, 8),
    "d": (8, 8), "h": (4, 4), "s": (4, 0), "o": (4, 0), "g": (1, 0), "v": (1, 0),
    "ai": (4, 0), "(y)": (8, 0), "a{sv}": (4, 0),
}


@pytest.mark.parametrize("sig", ALIGNMENT_AND_SIZE)
def test_every_type_code_parses_with_its_alignment_and_size(sig: str) -> None:
    (node,) = parse_signature(sig)
    assert node.signature == sig and node.code == sig[0]
    assert (node.alignment, node.fixed_size) == ALIGNMENT_AND_SIZE[sig]


def test_signature_splits_into_complete_types() -> None:
    types = parse_signature("a{sv}i(ia(yh))vaay")
    assert [t.signature for t in types] == ["a{sv}", "i", "(ia(yh))", "v", "aay"]
    dict_entry = types[0].children[0]
    assert dict_entry.code == "{" and [c.signature for c in dict_entry.children] == ["s", "v"]
    assert [c.signature for c in types[2].children] == ["i", "a(yh)"]


def test_empty_signature_has_no_types() -> None:
    assert parse_signature("") == ()


def test_parse_single_type_wants_exactly_one() -> None:
    assert parse_single_type("a(ss)").signature == "a(ss)"
    for sig in ("", "ii", "a{sv}s"):
        with pytest.raises(SignatureError, match="exactly one complete type"):
            parse_single_type(sig)


def test_length_limit_is_255() -> None:
    assert len(parse_signature("i" * MAX_SIGNATURE_LENGTH)) == 255
    with pytest.raises(SignatureError, match="256 characters long, the limit is 255"):
        parse_signature("i" * (MAX_SIGNATURE_LENGTH + 1))


def test_array_nesting_limit_is_32() -> None:
    assert is_valid_signature("a" * MAX_ARRAY_DEPTH + "i")
    with pytest.raises(SignatureError, match="arrays nested deeper than 32"):
        parse_signature("a" * (MAX_ARRAY_DEPTH + 1) + "i")


def test_struct_nesting_limit_is_32() -> None:
    assert is_valid_signature("(" * MAX_STRUCT_DEPTH + "i" + ")" * MAX_STRUCT_DEPTH)
    with pytest.raises(SignatureError, match="structs nested deeper than 32"):
        parse_signature("(" * (MAX_STRUCT_DEPTH + 1) + "i" + ")" * (MAX_STRUCT_DEPTH + 1))


def test_limits_are_separate_so_32_arrays_and_32_structs_nest() -> None:
    sig = "a(" * 32 + "i" + ")" * 32
    assert is_valid_signature(sig)


def test_arrays_count_through_structs() -> None:
    # The specification counts array nesting, not runs of 'a': libdbus only counts
    # consecutive 'a' codes and would accept this, we follow the specification.
    with pytest.raises(SignatureError, match="arrays nested deeper than 32"):
        parse_signature("a(" * 32 + "ai" + ")" * 32)


def test_dict_entries_do_not_count_as_structs() -> None:
    # libdbus (and so dbus-daemon) counts dict entries apart from structs.
    assert is_valid_signature("a{s" + "(" * 32 + "i" + ")" * 32 + "}")
    assert is_valid_signature("a{sa{sa{sa{sv}}}}")


@pytest.mark.parametrize("sig", ["a{yv}", "a{bv}", "a{nv}", "a{qv}", "a{iv}", "a{uv}", "a{xv}", "a{tv}",
                                 "a{dv}", "a{hv}", "a{sv}", "a{ov}", "a{gv}", "a{s(ii)}", "a{sa{sv}}"])
def test_dict_entry_with_basic_key_inside_array_is_valid(sig: str) -> None:
    (node,) = parse_signature(sig)
    assert node.children[0].code == "{"


INVALID = [
    # (signature, position named in the error, what the error says)
    ("z", 0, "unknown type code 'z'"),
    ("ii*", 2, "unknown type code '*'"),
    ("r", 0, "unknown type code 'r'"),           # STRUCT's type code is not allowed in signatures
    ("e", 0, "unknown type code 'e'"),           # nor is DICT_ENTRY's
    ("m", 0, "unknown type code 'm'"),           # reserved for 'maybe' types
    ("a", 1, "signature ended"),
    ("aa", 2, "signature ended"),
    ("()", 1, "at least one field"),
    ("(i", 2, "not closed"),
    ("i)", 1, "unexpected ')'"),
    ("}", 0, "unexpected '}'"),
    ("(a)", 2, "unexpected ')'"),
    ("{sv}", 0, "only appear directly inside an array"),
    ("a({sv})", 2, "only appear directly inside an array"),
    ("({sv})", 1, "only appear directly inside an array"),
    ("a{vs}", 2, "key must be a basic type"),
    ("a{(i)s}", 2, "key must be a basic type"),
    ("a{ays}", 2, "key must be a basic type"),
    ("a{s}", 3, "needs a key and a value"),
    ("a{}", 2, "key must be a basic type"),
    ("a{sss}", 4, "exactly two fields"),
    ("a{s", 3, "needs a key and a value"),
    ("a{sv", 4, "exactly two fields"),
]


@pytest.mark.parametrize("sig, position, reason", INVALID, ids=[s for s, _, _ in INVALID])
def test_invalid_signature_error_names_the_position(sig: str, position: int, reason: str) -> None:
    with pytest.raises(SignatureError) as info:
        parse_signature(sig)
    assert f"at position {position}:" in info.value.reason
    assert reason in info.value.reason
    assert not is_valid_signature(sig)


def test_signature_error_is_a_protocol_error_and_a_value_error() -> None:
    with pytest.raises(ProtocolError):
        parse_signature("a{vs}")
    with pytest.raises(ValueError):
        parse_signature("a{vs}")


@given(sig=signatures)
@settings(max_examples=200, deadline=None)
def test_generated_signatures_split_back_into_themselves(sig: str) -> None:
    types = parse_signature(sig)
    assert "".join(t.signature for t in types) == sig
    for t in types:
        assert parse_single_type(t.signature) == t
        if t.children:
            inner = "".join(c.signature for c in t.children)
            assert inner in t.signature


@given(sig=single_types)
@settings(max_examples=200, deadline=None)
def test_every_strict_prefix_of_a_complete_type_is_invalid(sig: str) -> None:
    # A complete type cannot end early, so the parser must reject every cut of it.
    for cut in range(1, len(sig)):
        assert not is_valid_signature(sig[:cut]), sig[:cut]
