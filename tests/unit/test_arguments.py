"""BodyArguments: a body's top-level arguments decoded one at a time, the others skipped by size (issue 13, #7)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

import busd.wire.arguments as arguments
from busd.bus.match import MatchRule
from busd.wire.marshal import BIG, LITTLE, Variant
from busd.wire.message import SIGNAL, body_arguments, build_message, parse_header, read_body
from busd.wire.signature import parse_signature
from test_marshal import FD_COUNT, assert_same_value, bodies

ENDIANS = {"little": LITTLE, "big": BIG}


def message(signature: str, body: list, endian: int = LITTLE) -> tuple[bytes, object]:
    buf = build_message(SIGNAL, 1, path="/a", interface="com.example.I", member="M", signature=signature,
                        body=body, endian=endian, unix_fds=FD_COUNT)
    return buf, parse_header(buf)


@pytest.mark.parametrize("endian", ENDIANS.values(), ids=ENDIANS.keys())
@given(body=bodies())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_each_argument_alone_equals_the_whole_body_read(endian: int, body: tuple[str, list]) -> None:
    signature, values = body
    buf, h = message(signature, values, endian)
    whole = read_body(buf, h)
    nodes = parse_signature(signature)
    # Last first: reaching it skips every earlier argument; then each one again from the known positions.
    lazy = body_arguments(buf, h)
    assert len(lazy) == len(whole)
    for index in reversed(range(len(whole))):
        assert_same_value(nodes[index], whole[index], lazy[index])
        assert lazy.type_of(index) == nodes[index].signature
    fresh = body_arguments(buf, h)
    assert list(fresh) == whole and fresh[-1] == whole[-1] and fresh[:] == whole


def test_skipping_builds_no_values_of_earlier_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    signature = "ai(sav)a{sv}vs"
    values = [list(range(100_000)), ("x", [Variant("s", "y")] * 50), {"k": Variant("ai", [1, 2])},
              Variant("(ii)", (1, 2)), "wanted"]
    buf, h = message(signature, values)
    decoded: list[str] = []
    real = arguments.compiled_reader

    def recording_reader(single_type: str, prefix: str = "<"):
        decoded.append(single_type)
        return real(single_type, prefix)

    monkeypatch.setattr(arguments, "compiled_reader", recording_reader)
    args = body_arguments(buf, h)
    assert args[4] == "wanted"
    assert decoded == ["s"]
    assert args[4] == "wanted"  # kept: not decoded twice
    assert decoded == ["s"]


def test_index_out_of_range() -> None:
    buf, h = message("s", ["x"])
    args = body_arguments(buf, h)
    with pytest.raises(IndexError):
        args[1]
    assert args[-1] == "x"
    buf, h = message("", [])
    assert len(body_arguments(buf, h)) == 0


# -- what match rules decode ------------------------------------------------------------------


class CountingArguments:
    """Wraps body_arguments and records which arguments a rule asked for."""

    def __init__(self, buf: bytes, h: object):
        self.args = body_arguments(buf, h)
        self.fetched = 0
        self.indexed: list[int] = []

    def __call__(self) -> "CountingArguments":
        self.fetched += 1
        return self

    def __len__(self) -> int:
        return len(self.args)

    def __getitem__(self, index: int):
        self.indexed.append(index)
        return self.args[index]


@pytest.mark.parametrize("rule, signature, body, matched, indexed", [
    # argN tests strings only: an array, an integer or a variant fails from the signature alone.
    ("arg0='x'", "ai", [[1] * 1000], False, None),
    ("arg0='x'", "as", [["x"]], False, None),
    ("arg0='x'", "v", [Variant("s", "x")], False, None),
    ("arg0='x'", "o", ["/x"], False, None),
    ("arg0path='/x'", "o", ["/x"], True, [0]),
    ("arg0namespace='x'", "o", ["/x"], False, None),
    ("arg1='x'", "s", ["x"], False, None),  # no argument 1
    # Only the arguments tested are decoded; arg0 of an 'ai' first message is skipped by size.
    ("arg1='x'", "ais", [[1] * 1000, "x"], True, [1]),
    ("arg0='y',arg2='x'", "sais", ["y", [1] * 1000, "x"], True, [0, 2]),
    ("arg0='n',arg2='x'", "sais", ["y", [1] * 1000, "x"], False, [0]),
])
def test_rules_decode_only_string_arguments_they_test(rule: str, signature: str, body: list, matched: bool,
                                                       indexed: list[int] | None) -> None:
    buf, h = message(signature, body)
    counting = CountingArguments(buf, h)
    assert MatchRule.parse(rule).matches(h, (), counting) is matched
    assert counting.fetched == (0 if indexed is None else 1)
    assert counting.indexed == (indexed or [])
