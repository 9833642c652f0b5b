"""The compiled per-message path and its pure-Python twin agree on every input, errors included.

busd's hot modules (busd._extensions.COMPILED) run compiled when built and as
Python otherwise; the two must never differ in what they accept, what they read
from it and how they refuse it (aiohttp's CVE-2025-53643 was such a difference
between its C and Python HTTP parsers). Hypothesis feeds the same valid, mutated
and random byte streams to the compiled modules and to their twins (tests/unit/
twins.py: the same .py files loaded again from source) and demands identical
outcomes: header fields, frame sizes, forwarded bytes, and the framing of a stream
cut at random points, or the same exception type with the same reason.

Run long with BUSD_FUZZ_EXAMPLES=100000 python3 -m pytest -q tests/unit/test_twins_agree.py
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import busd.transport.served as compiled_served
import busd.transport.stream as compiled_stream
import busd.wire.message as compiled_message
from busd.wire.marshal import BIG, LITTLE
from test_message import message_specs
from test_wire_fuzz import SEEDS, mutated_messages
from twins import compiled_modules, twin

EXAMPLES = int(os.environ.get("BUSD_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

pytestmark = pytest.mark.skipif(
    not compiled_modules(),
    reason="nothing is compiled here (BUSD_NO_EXTENSIONS=1, or no C compiler at install): one twin only")

pure_message = twin("busd.wire.message")
pure_stream = twin("busd.transport.stream")
pure_served = twin("busd.transport.served")

HEADER_ATTRS = ("endian", "type", "flags", "body_len", "serial", "fields_len", "body_start", "path", "interface",
                "member", "error_name", "reply_serial", "destination", "sender", "signature", "unix_fds",
                "sender_span", "unknown_spans")


def outcome(step: Callable[[], Any]) -> Any:
    """What `step` returns, or the type name and text of what it raises (the twins' classes differ)."""
    try:
        return ("ok", step())
    except Exception as exc:  # noqa: BLE001 - any difference is the finding
        return ("raised", type(exc).__name__, str(exc))


def header_tuple(h: Any) -> tuple:
    return tuple(getattr(h, attr) for attr in HEADER_ATTRS)


def wire_outcomes(module: Any, buf: bytes) -> list:
    """frame_size, parse_header cold and warm (a cache hit the second time), with and without the body
    check, and the forwarded bytes of an accepted message."""
    results = []
    if len(buf) >= 16:
        results.append(outcome(lambda: module.frame_size(buf)))
        results.append(outcome(lambda: module.frame_size(buf, 0, 4096)))
    for validate in (True, True, False):
        results.append(outcome(lambda: header_tuple(module.parse_header(buf, validate))))
    accepted = results[-1]
    if accepted[0] == "ok":
        h = module.parse_header(buf, False)
        for name in (":1.7", ":1.123456"):
            field = module.sender_field(name, h.endian)
            results.append(outcome(lambda: tuple(bytes(part) for part in module.stamp_sender(buf, h, field))))
    return results


@FUZZ
@given(mutated_messages())
def test_the_twins_read_mutated_messages_alike(buf: bytes) -> None:
    assert wire_outcomes(compiled_message, buf) == wire_outcomes(pure_message, buf)


@FUZZ
@given(message_specs(), st.sampled_from([LITTLE, BIG]), st.data())
def test_the_twins_read_replies_alike(spec: dict, endian: int, data: st.DataObject) -> None:
    """The same header again with another REPLY_SERIAL (the reply cache's key leaves its value out)."""
    first = compiled_message.build_message(**spec, endian=endian)
    spec["reply_serial"] = data.draw(st.integers(0, 0xFFFFFFFF))
    second = compiled_message.build_message(**spec, endian=endian)
    for buf in (first, second, first):
        assert wire_outcomes(compiled_message, buf) == wire_outcomes(pure_message, buf)


@FUZZ
@given(message_specs(), st.sampled_from([LITTLE, BIG]), st.sampled_from(["", "bad path", "M\0", "(", 7]))
def test_the_twins_build_messages_alike(spec: dict, endian: int, spoiler: object) -> None:
    """Building (the driver's replies and signals), valid or spoiled by a bad path, member, signature or body."""
    if spoiler == "bad path":
        spec["path"] = "org/no/slash"
    elif spoiler == "M\0":
        spec["member"] = "M\0"
    elif spoiler == "(":
        spec["signature"] = "("
    elif spoiler == 7:
        spec["signature"], spec["body"] = "s", [7]
    for _ in range(2):  # the second time from the built-field cache
        assert (outcome(lambda: compiled_message.build_message(**spec, endian=endian))
                == outcome(lambda: pure_message.build_message(**spec, endian=endian)))


def framing_events(module: Any, message_module: Any, chunks: list[bytes], large: int) -> list:
    """What a Stream of `module` (framing with `message_module`) makes of `chunks` fed one by one: each message with its header, drops, the rest."""
    events: list = []

    class Recorder(module.Stream):
        large_message_size = large

        def message_received(self, message: bytes, h: Any, fds: list[int] | None) -> None:
            events.append(("message", bytes(message), header_tuple(h), fds))

        def check_body_later(self, message: bytes, h: Any) -> None:
            events.append(("check later", bytes(message), header_tuple(h)))
            error = None
            try:  # here, not in a thread as the server side does: the order of events is what is compared
                message_module.check_message_body(message, h)
            except Exception as exc:  # noqa: BLE001 - ProtocolError of the twin's own class
                error = exc
            self.body_checked(error)

        def drop(self, reason: str, level: int = 0) -> None:
            events.append(("drop", reason))
            self.shut()

    stream = Recorder(None, lambda link: None)
    for chunk in chunks:
        if stream.closed:
            break
        stream.feed(chunk)
        events.append(("buffered", stream.in_bytes))
    return events


@st.composite
def byte_streams(draw) -> list[bytes]:
    """A few messages (valid seeds, generated, mutated) back to back, cut into chunks at random points."""
    parts = draw(st.lists(st.one_of(st.sampled_from(SEEDS), mutated_messages()), min_size=1, max_size=6))
    data = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@st.composite
def streams_with_a_large_message(draw) -> list[bytes]:
    """Small messages around one larger than a read (framed into a buffer of its size), possibly corrupted
    in its header or body, cut at random points."""
    size = draw(st.sampled_from([(256 << 10) - 64, (256 << 10) + 1, 300_000, 1 << 20]))
    large = bytearray(compiled_message.build_message(
        compiled_message.METHOD_CALL, 3, path="/big", member="Put", destination=":1.5", signature="ay",
        body=[b"\x7f" * size], endian=draw(st.sampled_from([LITTLE, BIG]))))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(large) - 1))
        large[at] ^= 1 << draw(st.integers(0, 7))
    parts = [draw(st.sampled_from(SEEDS)), bytes(large), draw(st.sampled_from(SEEDS))]
    data = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=5)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(FUZZ, max_examples=max(20, EXAMPLES // 10))
@given(streams_with_a_large_message(), st.sampled_from([1 << 62, 1 << 20]))
def test_the_twins_frame_large_messages_alike(chunks: list[bytes], large: int) -> None:
    assert (framing_events(compiled_stream, compiled_message, chunks, large)
            == framing_events(pure_stream, pure_message, chunks, large))


@FUZZ
@given(byte_streams(), st.sampled_from([1 << 62, 64]))
def test_the_twins_frame_byte_streams_alike(chunks: list[bytes], large: int) -> None:
    assert (framing_events(compiled_stream, compiled_message, chunks, large)
            == framing_events(pure_stream, pure_message, chunks, large))


def test_the_twins_read_peer_credentials_alike() -> None:
    """The C getsockopt() calls and the socket module's say the same of a peer: this process, as the kernel
    knows it; and the same of a socket with no peer (the kernel answers uid and gid -1 there)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        compiled = compiled_served.peer_credentials(ours)
        pure = pure_served.peer_credentials(ours)
    assert compiled == pure
    pid, uid, gid, groups = compiled
    assert (pid, uid, gid) == (os.getpid(), os.getuid(), os.getgid())
    assert sorted(groups) == sorted(os.getgroups())
    unconnected = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with unconnected:
        outcomes = []
        for served in (compiled_served, pure_served):
            try:
                outcomes.append(served.peer_credentials(unconnected))
            except OSError as exc:
                outcomes.append(("OSError", exc.errno))
    assert outcomes[0] == outcomes[1]


def test_the_twins_are_different_modules() -> None:
    """The comparison above means something: one side is an extension module, the other Python source."""
    assert not compiled_message.__file__.endswith(".py")
    assert pure_message.__file__.endswith("message.py")
    assert pure_stream.Stream.__module__ == "busd_twin.transport.stream"
    assert compiled_stream.parse_header is compiled_message.parse_header
    assert pure_stream.parse_header is pure_message.parse_header
