"""The body checker's fast paths (issue 13, #11) decide exactly as the element-by-element walk does.

The walk is checker.py with its fast paths switched off (no run patterns for
variants, no strided layouts for arrays); hypothesis builds bodies rich in what
the fast paths take (runs of fixed-type variants, arrays of booleans, fd indexes
and fixed-layout structs), mutates a few bytes, and both must accept the same
bodies and reject the others with the same reason.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import busd.wire.checker as checker
from busd.wire.checker import checked_in_constant_steps
from busd.wire.errors import ProtocolError
from busd.wire.marshal import BIG, LITTLE, Variant, check_body, marshal_body

FIXED_VALUES = {
    "y": st.integers(0, 255), "b": st.booleans(), "n": st.integers(-2, 2), "q": st.integers(0, 3),
    "i": st.integers(-2, 2), "u": st.integers(0, 3), "x": st.integers(-2, 2), "t": st.integers(0, 3),
    "d": st.floats(allow_nan=False), "h": st.integers(0, 3),
}


def _clear_caches() -> None:
    checker.compiled_checker.cache_clear()
    checker._body_checkers.cache_clear()
    for kinds in checker._VARIANT_KINDS.values():
        kinds.clear()


@contextmanager
def walk_only() -> Iterator[None]:
    """checker.py without its fast paths: every element checked one by one."""
    real_layout, real_matchers = checker._layout, checker._fixed_variant_matchers
    checker._layout = lambda node: None
    checker._fixed_variant_matchers = lambda prefix: (lambda buf, pos, end: None,) * 8
    _clear_caches()
    try:
        yield
    finally:
        checker._layout, checker._fixed_variant_matchers = real_layout, real_matchers
        _clear_caches()


def verdict(signature: str, body: bytes, endian: int, nfds: int) -> str:
    buf = bytes(8) + body  # the body starts 8-aligned, as in a message
    try:
        check_body(signature, buf, 8, len(buf), endian, nfds)
    except ProtocolError as exc:
        return exc.reason
    return "ok"


@st.composite
def variant_runs(draw) -> list[Variant]:
    runs = draw(st.lists(st.tuples(st.sampled_from(sorted(FIXED_VALUES)), st.integers(1, 6)), max_size=6))
    return [Variant(code, draw(FIXED_VALUES[code])) for code, length in runs for _ in range(length)]


@st.composite
def bodies(draw) -> tuple[str, list]:
    shape = draw(st.sampled_from(["ab", "ah", "a(yb)", "a(ynb)", "a{yb}", "a(y(bq))", "a(hy)", "av", "aav",
                                  "a(yv)", "(yav)"]))
    if shape == "ab":
        return shape, [draw(st.lists(st.booleans(), max_size=9))]
    if shape == "ah":
        return shape, [draw(st.lists(st.integers(0, 3), max_size=9))]
    if shape == "a(yb)":
        return shape, [draw(st.lists(st.tuples(st.integers(0, 255), st.booleans()), max_size=5))]
    if shape == "a(ynb)":
        return shape, [draw(st.lists(st.tuples(st.integers(0, 255), st.integers(-2, 2), st.booleans()),
                                     max_size=5))]
    if shape == "a{yb}":
        return shape, [draw(st.dictionaries(st.integers(0, 255), st.booleans(), max_size=5))]
    if shape == "a(y(bq))":
        return shape, [draw(st.lists(st.tuples(st.integers(0, 255), st.tuples(st.booleans(), st.integers(0, 3))),
                                     max_size=5))]
    if shape == "a(hy)":
        return shape, [draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 255)), max_size=5))]
    if shape == "av":
        return shape, [draw(variant_runs())]
    if shape == "aav":
        return shape, [draw(st.lists(variant_runs(), max_size=3))]
    if shape == "a(yv)":
        return shape, [[(1, v) for v in draw(variant_runs())]]
    return shape, [(7, draw(variant_runs()))]


@given(body=bodies(), endian=st.sampled_from([LITTLE, BIG]), nfds=st.sampled_from([0, 2, 4, checker.ANY_FD_INDEX]),
       mutations=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=3))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fast_paths_decide_as_the_walk(body: tuple[str, list], endian: int, nfds: int,
                                       mutations: list[tuple[int, int]]) -> None:
    signature, values = body
    data = bytearray(marshal_body(signature, values, endian))
    for where, value in mutations:
        if data:
            data[where % len(data)] = value
    fast = verdict(signature, bytes(data), endian, nfds)
    with walk_only():
        slow = verdict(signature, bytes(data), endian, nfds)
    assert fast == slow


@pytest.mark.parametrize("endian", [LITTLE, BIG])
def test_a_long_run_of_byte_variants_is_one_match(endian: int) -> None:
    body = marshal_body("av", [[Variant("y", 1)] * 1000 + [Variant("b", True)] * 1000 + [Variant("x", 5)] * 10],
                        endian)
    assert verdict("av", body, endian, 0) == "ok"
    broken = bytearray(body)
    broken[4 + 4 * 500 + 1] = ord("n")  # element 500 claims type 'n' and its value is then cut short
    with walk_only():
        expected = verdict("av", bytes(broken), endian, 0)
    assert verdict("av", bytes(broken), endian, 0) == expected != "ok"


def test_the_variant_cache_is_bounded() -> None:
    many = [Variant("(" + "y" * (i % 200 + 1) + ")", tuple([0] * (i % 200 + 1))) for i in range(600)]
    assert verdict("av", marshal_body("av", [many]), LITTLE, 0) == "ok"
    assert len(checker._VARIANT_KINDS["<"]) <= checker.VARIANT_CACHE_LIMIT


def test_the_body_can_be_checked_apart_from_the_header_and_in_a_thread() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from busd.wire.message import SIGNAL, build_message, check_message_body, parse_header

    good = build_message(SIGNAL, 1, path="/", interface="a.b", member="C", signature="av",
                         body=[[Variant("y", 1), Variant("n", 2)] * 100])
    bad = bytearray(good)
    bad[-5] = ord("?")  # the last variant's signature, 'n', becomes '?'
    with ThreadPoolExecutor(2) as pool:
        assert pool.submit(check_message_body, good, parse_header(good, validate_body=False)).result() is None
        with pytest.raises(ProtocolError) as apart:
            pool.submit(check_message_body, bytes(bad), parse_header(bytes(bad), validate_body=False)).result()
    with pytest.raises(ProtocolError) as whole:
        parse_header(bytes(bad))
    assert apart.value.reason == whole.value.reason


@pytest.mark.parametrize(("signature", "constant"), [
    ("ay", True), ("ai", True), ("ab", True), ("yyat", True), ("(ii)", True), ("(ayi)", True), ("", True),
    ("s", False), ("o", False), ("g", False), ("v", False), ("av", False), ("aay", False), ("as", False),
    ("a(ii)", False), ("a{yy}", False), ("a{ss}", False), ("(is)", False), ("a", False),
])
def test_which_bodies_are_checked_in_constant_steps(signature, constant):
    """Only these may be checked on the loop at any size: nothing in them is walked element by element."""
    assert checked_in_constant_steps(signature) is constant
