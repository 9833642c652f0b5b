"""Whole messages: framing, the header fast path, SENDER stamping, and one test per validity rule.

Every invalid message here breaks exactly one rule of the specification's "Valid
messages" section, and the test checks the reason we give. The same messages are
sent to a real dbus-daemon (tests/live/test_message_reference.py), which must drop the connection for each (and keep it
for each valid control), so our verdicts are checked against code we did not
write. dbus-next and jeepney marshal and parse messages for the cross-checks.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass

import dbus_next
import jeepney.low_level as jl
import pytest
from dbus_next._private.unmarshaller import Unmarshaller
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from busd.wire.errors import ProtocolError
from busd.wire.marshal import BIG, LITTLE, Variant, marshal_body
from busd.wire.message import (
    DESTINATION, ERROR, ERROR_NAME, INTERFACE, MAX_MESSAGE_SIZE, MEMBER, METHOD_CALL, METHOD_RETURN,
    NO_AUTO_START, NO_REPLY_EXPECTED, PATH, REPLY_SERIAL, SENDER, SIGNAL, SIGNATURE, UNIX_FDS, Header,
    build_message, frame_size, parse_header, read_body, sender_field, stamp_sender,
)
from busd.wire.signature import TypeNode, parse_signature, parse_single_type
from test_marshal import FD_COUNT, assert_same_body, bodies

ENDIANS = {"little": LITTLE, "big": BIG}

# ---------------------------------------------------------------- hand-made messages
# Built byte by byte (not with build_message) so that a test can break any rule.


def raw_field(code: int, sig: str, value, endian: int = LITTLE) -> bytes:
    """One header field struct: code, variant signature, value; the value is not validated."""
    u32 = "<I" if endian == LITTLE else ">I"
    if sig in ("s", "o"):
        data = value.encode() if isinstance(value, str) else value
        return bytes([code, 1, ord(sig), 0]) + struct.pack(u32, len(data)) + data + b"\0"
    if sig == "g":
        return bytes([code, 1, ord("g"), 0, len(value)]) + value.encode() + b"\0"
    if sig == "u":
        return bytes([code, 1, ord("u"), 0]) + struct.pack(u32, value)
    return marshal_body("yv", [code, Variant(sig, value)], endian)


def raw_message(fields: list[bytes], body: bytes = b"", *, mtype: int = METHOD_CALL, flags: int = 0,
                serial: int = 7, endian: int = LITTLE, version: int = 1, field_pad: int = 0,
                header_pad: int = 0) -> bytes:
    """A message from raw header fields and a raw body; the pad bytes may be made non-zero."""
    array = bytearray()
    for f in fields:
        array += bytes([field_pad]) * (-len(array) % 8)
        array += f
    u32 = "<III" if endian == LITTLE else ">III"
    head = bytes([endian, mtype, flags, version]) + struct.pack(u32, len(body), serial, len(array)) + array
    return head + bytes([header_pad]) * (-len(head) % 8) + body


STANDARD_FIELDS = {
    METHOD_CALL: {PATH: ("o", "/org/example/Object"), INTERFACE: ("s", "org.example.Iface"),
                  MEMBER: ("s", "Do"), DESTINATION: ("s", "org.example.Service")},
    SIGNAL: {PATH: ("o", "/org/example/Object"), INTERFACE: ("s", "org.example.Iface"), MEMBER: ("s", "Changed")},
    METHOD_RETURN: {REPLY_SERIAL: ("u", 3), DESTINATION: ("s", "org.example.Service")},
    ERROR: {ERROR_NAME: ("s", "org.example.Error.Failed"), REPLY_SERIAL: ("u", 3),
            DESTINATION: ("s", "org.example.Service")},
}


def message(mtype: int = METHOD_CALL, change: dict | None = None, signature: str = "s",
            body: bytes | None = None, endian: int = LITTLE, extra: list[bytes] = (), **kw) -> bytes:
    """A valid message of `mtype`, then with the fields in `change` replaced (None removes one)."""
    fields = dict(STANDARD_FIELDS[mtype]) if mtype in STANDARD_FIELDS else {}
    if signature:
        fields[SIGNATURE] = ("g", signature)
    for code, spec in (change or {}).items():
        if spec is None:
            fields.pop(code, None)
        else:
            fields[code] = spec
    if body is None:
        body = marshal_body(signature, ["hello"] * len(parse_signature(signature)), endian) if signature else b""
    raw = [raw_field(code, sig, value, endian) for code, (sig, value) in fields.items()]
    return raw_message(raw + list(extra), body, mtype=mtype, endian=endian, **kw)


def body_message(signature: str, body: bytes, unix_fds: int = 0) -> bytes:
    """A method call carrying `body` (raw bytes) under `signature`."""
    change = {UNIX_FDS: ("u", unix_fds)} if unix_fds else None
    return message(change=change, signature=signature, body=body)


def nested_variants(depth: int, inner: Variant) -> Variant:
    value = inner
    for _ in range(depth - 1):
        value = Variant("v", value)
    return value


def le(fmt: str, *values) -> bytes:
    return struct.pack("<" + fmt, *values)


def with_bytes(buf: bytes, offset: int, data: bytes) -> bytes:
    return buf[:offset] + data + buf[offset + len(data):]


# ---------------------------------------------------------------- the validity rules

@dataclass
class Case:
    id: str
    message: bytes
    reason: str  # a fragment of the ProtocolError's reason
    reference: bool = True  # dbus-daemon applies this rule too (False: it is ours alone)


_GOOD = message()
_LONG = "x" * 252

INVALID = [
    # Fixed header
    Case("bad-byte-order", b"x" + _GOOD[1:], "invalid byte-order mark 0x78"),
    Case("protocol-version-2", with_bytes(_GOOD, 3, b"\x02"), "unsupported protocol version 2"),
    Case("serial-zero", message(serial=0), "serial number is zero"),
    Case("message-type-0", message(mtype=0, signature=""), "message type 0 is invalid"),
    Case("body-length-too-long", with_bytes(_GOOD, 4, le("I", len(_GOOD) - 32)), "do not add up"),
    Case("fields-length-past-body", with_bytes(_GOOD, 12, le("I", len(_GOOD))), "do not add up"),
    # Header fields
    Case("field-code-0", message(extra=[raw_field(0, "s", "x")]), "header field code 0 is invalid"),
    Case("field-twice", message(extra=[raw_field(MEMBER, "s", "Do")]), "MEMBER: appears twice"),
    Case("path-as-string", message(change={PATH: ("s", "/a")}), "PATH: must have type 'o'"),
    Case("interface-as-path", message(change={INTERFACE: ("o", "/a")}), "INTERFACE: must have type 's'"),
    Case("member-as-uint", message(change={MEMBER: ("u", 1)}), "MEMBER: must have type 's'"),
    Case("error-name-as-signature", message(ERROR, change={ERROR_NAME: ("g", "s")}), "ERROR_NAME: must have type 's'"),
    Case("reply-serial-as-int", message(METHOD_RETURN, change={REPLY_SERIAL: ("i", 3)}), "REPLY_SERIAL: must have type 'u'"),
    Case("destination-as-path", message(change={DESTINATION: ("o", "/a")}), "DESTINATION: must have type 's'"),
    Case("sender-as-variant", message(change={SENDER: ("v", Variant("s", ":1.1"))}), "SENDER: must have type 's'"),
    Case("signature-as-string", message(change={SIGNATURE: ("s", "s")}), "SIGNATURE: must have type 'g'"),
    Case("unix-fds-as-string", message(change={UNIX_FDS: ("s", "1")}), "UNIX_FDS: must have type 'u'"),
    Case("unknown-field-bad-variant", message(extra=[bytes([42, 2]) + b"ii\0" + le("I", 1) * 2]),
         "must be exactly one complete type"),
    Case("field-padding-not-zero", message(field_pad=0xAA), "bad padding between header fields"),
    Case("header-padding-not-zero", message(header_pad=0xAA), "non-zero padding after the header"),
    Case("field-string-past-array", message(extra=[bytes([MEMBER + 40, 1]) + b"s\0" + le("I", 200) + b"x\0"]),
         "runs past the end of its container"),
    Case("string-field-not-nul-terminated", message(change={MEMBER: ("s", "Do")}).replace(b"Do\0", b"Do!"),
         "not NUL-terminated"),
    Case("reply-serial-zero", message(METHOD_RETURN, change={REPLY_SERIAL: ("u", 0)}), "REPLY_SERIAL: is zero"),
    Case("signature-field-invalid", message(change={SIGNATURE: ("g", "a{vs}")}, body=b"\0" * 8),
         "key must be a basic type"),
    # Required fields for each message type
    Case("call-without-path", message(change={PATH: None}), "method_call lacks the required PATH field"),
    Case("call-without-member", message(change={MEMBER: None}), "method_call lacks the required MEMBER field"),
    Case("signal-without-path", message(SIGNAL, change={PATH: None}), "signal lacks the required PATH field"),
    Case("signal-without-interface", message(SIGNAL, change={INTERFACE: None}), "signal lacks the required INTERFACE"),
    Case("signal-without-member", message(SIGNAL, change={MEMBER: None}), "signal lacks the required MEMBER field"),
    Case("return-without-reply-serial", message(METHOD_RETURN, change={REPLY_SERIAL: None}),
         "method_return lacks the required REPLY_SERIAL field"),
    Case("error-without-error-name", message(ERROR, change={ERROR_NAME: None}), "error lacks the required ERROR_NAME"),
    Case("error-without-reply-serial", message(ERROR, change={REPLY_SERIAL: None}),
         "error lacks the required REPLY_SERIAL field"),
    # Names
    *[Case(f"path-{i}", message(change={PATH: ("o", p)}), "invalid object path")
      for i, p in enumerate(["", "a/b", "/a/", "/a//b", "/a-b", "/é"])],
    Case("path-local", message(change={PATH: ("o", "/org/freedesktop/DBus/Local")}), "is reserved"),
    *[Case(f"interface-{i}", message(change={INTERFACE: ("s", n)}), "invalid interface name")
      for i, n in enumerate(["Iface", "org..example", "1org.example", "org.1example", "org.ex-ample", ".org.a",
                             "org.a.", "org." + _LONG])],
    Case("interface-local", message(SIGNAL, change={INTERFACE: ("s", "org.freedesktop.DBus.Local")}), "is reserved"),
    *[Case(f"member-{i}", message(change={MEMBER: ("s", n)}), "invalid member name")
      for i, n in enumerate(["", "Do.It", "1Do", "Do-It", "M" * 256])],
    *[Case(f"error-name-{i}", message(ERROR, change={ERROR_NAME: ("s", n)}), "invalid error name")
      for i, n in enumerate(["Failed", "org.example.", "org.example.Error.1"])],
    *[Case(f"destination-{i}", message(change={DESTINATION: ("s", n)}), "invalid bus name")
      for i, n in enumerate(["", "service", "1org.example", "org.1example", ":1..2", "org.example." + _LONG])],
    *[Case(f"sender-{i}", message(change={SENDER: ("s", n)}), "invalid bus name")
      for i, n in enumerate(["x", ":1.2 ", "org/example", ":1.2."])],
    # The specification wants a '.' in every bus name; libdbus lets unique names go without.
    Case("unique-destination-without-dot", message(change={DESTINATION: ("s", ":1")}), "invalid bus name",
         reference=False),
    Case("unique-sender-without-dot", message(change={SENDER: ("s", ":")}), "invalid bus name", reference=False),
    # The body against its SIGNATURE
    Case("body-without-signature", message(signature="", body=b"\0" * 8), "has a body but no SIGNATURE"),
    Case("body-too-short", body_message("su", marshal_body("s", ["hi"])), "runs past the end"),
    Case("body-left-over", body_message("s", marshal_body("s", ["hi"]) + b"\0"), "1 bytes left over"),
    Case("string-bad-utf8", body_message("s", le("I", 2) + b"\xc3\x28\0"), "not valid UTF-8"),
    Case("string-utf16-surrogate", body_message("s", le("I", 3) + b"\xed\xa0\x80\0"), "not valid UTF-8"),
    Case("string-with-nul", body_message("s", le("I", 3) + b"a\0b\0"), "contains a NUL byte"),
    Case("string-not-nul-terminated", body_message("s", le("I", 2) + b"ab!"), "not NUL-terminated"),
    Case("boolean-2", body_message("b", le("I", 2)), "neither 0 nor 1"),
    Case("boolean-in-array-2", body_message("ab", le("III", 8, 1, 2)), "neither 0 nor 1"),
    Case("array-over-64-mib", body_message("ay", le("I", (1 << 26) + 1) + b"\0" * 4), "the limit is 67108864"),
    Case("array-past-body", body_message("ay", le("I", 9) + b"\0" * 4), "runs past the end of its container"),
    Case("array-partial-element", body_message("ai", le("I", 6) + b"\0" * 6), "not a whole number of elements"),
    Case("array-cuts-a-string", body_message("asy", le("II", 6, 2) + b"ab\0" + b"\0" * 3), "runs past the end"),
    Case("padding-before-int64", body_message("yx", b"\x01" + b"\x00\x00\x07" + b"\0" * 4 + le("q", 1)),
         "non-zero alignment padding"),
    Case("padding-before-array-element", body_message("ax", le("I", 8) + b"\x01\0\0\0" + le("q", 1)),
         "non-zero alignment padding"),
    Case("padding-before-struct", body_message("y(y)", b"\x01\x09" + b"\0" * 6 + b"\x02"), "non-zero alignment padding"),
    Case("variant-empty-signature", body_message("v", b"\x00\x00"), "exactly one complete type"),
    Case("variant-two-types", body_message("v", b"\x02yy\0\x01\x02"), "exactly one complete type"),
    Case("variant-bad-signature", body_message("v", b"\x01z\0\0"), "unknown type code"),
    Case("variants-nested-65-deep", body_message("v", marshal_body("v", [nested_variants(65, Variant("y", 1))])),
         "nested deeper than 64"),
    Case("array-in-variants-65-deep", body_message("v", marshal_body("v", [nested_variants(64, Variant("as", ["a"]))])),
         "nested deeper than 64"),
    Case("object-path-in-body", body_message("o", le("I", 3) + b"a/b\0"), "invalid object path"),
    Case("signature-in-body", body_message("g", b"\x02a{\0"), "dict entry is not closed"),
]

VALID = [
    # (id, message): messages both parsers must accept, next to the rules above
    ("method-call", message()),
    ("signal", message(SIGNAL)),
    ("method-return", message(METHOD_RETURN)),
    ("error", message(ERROR)),
    ("big-endian", message(endian=BIG)),
    ("no-body", message(signature="")),
    ("root-path", message(change={PATH: ("o", "/")})),
    ("unknown-message-type", message(mtype=42, signature="")),
    ("unknown-field", message(extra=[raw_field(42, "(sx)", ("x", 1))])),
    ("unknown-field-with-fd", message(extra=[raw_field(43, "h", 9)])),
    ("unknown-flags", message(flags=0xF8)),
    ("names-of-255", message(change={INTERFACE: ("s", "org." + "x" * 251), MEMBER: ("s", "M" * 255),
                                     DESTINATION: ("s", "org." + "y" * 251)})),
    ("unique-name-destination", message(change={DESTINATION: ("s", ":1.2-3_4")})),
    ("hyphen-in-well-known-name", message(change={DESTINATION: ("s", "org.ex-ample.-x")})),
    ("sender-field", message(change={SENDER: ("s", ":1.99")})),
    ("variants-nested-64-deep", body_message("v", marshal_body("v", [nested_variants(64, Variant("i", 1))]))),
    ("byte-array-in-variants-64-deep", body_message("v", marshal_body("v", [nested_variants(64, Variant("ay", b"x"))]))),
    ("empty-array-in-variants-64-deep", body_message("v", marshal_body("v", [nested_variants(64, Variant("as", []))]))),
    ("empty-struct-array", body_message("a(ii)y", marshal_body("a(ii)y", [[], 1]))),
    ("dict-entries-beside-32-structs", body_message("a{s" + "(" * 32 + "y" + ")" * 32 + "}",
                                                    marshal_body("ay", [b""]) + b"\0" * 4)),
    ("nan-and-utf8", body_message("ds", marshal_body("ds", [float("nan"), "ünïcödé \U0001F600"]))),
    ("fd-index-without-unix-fds", body_message("h", le("I", 0))),  # recipients check fd indexes
]


@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_invalid_message_is_rejected_with_its_reason(case: Case) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_header(case.message)
    assert case.reason in info.value.reason


@pytest.mark.parametrize("name, buf", VALID, ids=[name for name, _ in VALID])
def test_valid_message_is_accepted(name: str, buf: bytes) -> None:
    h = parse_header(buf)
    assert frame_size(buf) == len(buf)
    assert h.body_start + h.body_len == len(buf)


def test_fd_index_below_unix_fds_is_accepted() -> None:
    h = parse_header(body_message("hah", le("III", 1, 4, 0), unix_fds=2))
    assert h.unix_fds == 2


def test_body_validation_can_be_left_to_later() -> None:
    buf = body_message("b", le("I", 2))
    assert parse_header(buf, validate_body=False).signature == "b"


# ---------------------------------------------------------------- the same verdicts from dbus-daemon











# ---------------------------------------------------------------- framing

@pytest.mark.parametrize("endian", ENDIANS.values(), ids=ENDIANS.keys())
def test_frame_size_from_the_first_16_bytes(endian: int) -> None:
    first = message(endian=endian)
    second = message(SIGNAL, endian=endian, signature="ay", body=marshal_body("ay", [b"z" * 100], endian))
    stream = first + second
    assert frame_size(stream) == len(first)
    assert frame_size(stream, len(first)) == len(second)
    assert frame_size(second[:16]) == len(second)


@pytest.mark.parametrize("header, reason", [
    (b"x\x01\x00\x01" + le("III", 0, 1, 0), "invalid byte-order mark"),
    (b"l\x01\x00\x02" + le("III", 0, 1, 0), "unsupported protocol version 2"),
    (b"l\x01\x00\x01" + le("III", 0, 1, (1 << 26) + 1), "header fields array of 67108865 bytes exceeds"),
    (b"l\x01\x00\x01" + le("III", MAX_MESSAGE_SIZE, 1, 8), "exceeds the maximum message size 134217728"),
    (b"B\x01\x00\x01" + struct.pack(">III", 0xFFFFFFFF, 1, 8), "exceeds the maximum message size"),
])
def test_frame_size_rejects_impossible_lengths_early(header: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        frame_size(header)


def test_frame_size_honours_a_configured_maximum() -> None:
    buf = message()
    assert frame_size(buf, max_message_size=len(buf)) == len(buf)
    with pytest.raises(ProtocolError, match="exceeds the maximum message size"):
        frame_size(buf, max_message_size=len(buf) - 1)


def test_exactly_128_mib_is_allowed_by_default() -> None:
    body_len = MAX_MESSAGE_SIZE - 16 - 8
    assert frame_size(b"l\x01\x00\x01" + le("III", body_len, 1, 8)) == MAX_MESSAGE_SIZE




# ---------------------------------------------------------------- the header fast path

@pytest.mark.parametrize("endian", ENDIANS.values(), ids=ENDIANS.keys())
def test_parse_header_reads_every_field(endian: int) -> None:
    buf = build_message(ERROR, 99, path="/p", interface="org.a.B", member="M", error_name="org.a.Error",
                        reply_serial=5, destination=":1.7", sender="org.a.Sender", signature="su",
                        body=["x", 3], flags=NO_REPLY_EXPECTED | NO_AUTO_START, unix_fds=0, endian=endian)
    h = parse_header(buf)
    assert (h.endian, h.type, h.serial, h.flags) == (endian, ERROR, 99, NO_REPLY_EXPECTED | NO_AUTO_START)
    assert (h.path, h.interface, h.member, h.error_name) == ("/p", "org.a.B", "M", "org.a.Error")
    assert (h.reply_serial, h.destination, h.sender, h.signature, h.unix_fds) == (5, ":1.7", "org.a.Sender", "su", 0)
    assert h.no_reply_expected and h.no_auto_start
    assert read_body(buf, h) == ["x", 3]
    for text in ("error", "serial=99", "sender=org.a.Sender", "error_name=org.a.Error", "signature=su"):
        assert text in h.describe()


def test_parse_header_accepts_bytearray_and_memoryview() -> None:
    buf = message()
    assert parse_header(bytearray(buf)).member == parse_header(memoryview(buf)).member == "Do"


def test_message_without_body_reads_as_empty() -> None:
    buf = message(signature="")
    assert read_body(buf, parse_header(buf)) == []


# ---------------------------------------------------------------- SENDER stamping

def forwarded(buf: bytes, name: str = ":1.42") -> bytes:
    h = parse_header(buf)
    head, body = stamp_sender(buf, h, sender_field(name, h.endian))
    if h.body_len > 4096:
        assert body.obj is buf  # a large body is forwarded without a copy
    else:
        assert body == b""  # a small one is copied into a single buffer with the header
    return head + bytes(body)


def test_a_large_body_is_forwarded_as_a_view_a_small_one_in_one_buffer() -> None:
    for size, viewed in ((4096 - 4, False), (4096 - 3, True), (1 << 20, True)):
        buf = build_message(METHOD_CALL, 1, path="/p", member="M", signature="ay", body=[b"x" * size])
        h = parse_header(buf)
        head, body = stamp_sender(buf, h, sender_field(":1.42", h.endian))
        assert (type(body) is memoryview) is viewed, size
        assert parse_header(head + bytes(body)).sender == ":1.42"
        assert (head + bytes(body))[-size:] == b"x" * size


def header_values(h: Header) -> tuple:
    return (h.endian, h.type, h.flags, h.serial, h.path, h.interface, h.member, h.error_name, h.reply_serial,
            h.destination, h.signature, h.unix_fds, h.body_len)


@pytest.mark.parametrize("endian", ENDIANS.values(), ids=ENDIANS.keys())
def test_sender_field_is_a_marshalled_header_field(endian: int) -> None:
    assert sender_field(":1.42", endian) == marshal_body("yv", [SENDER, Variant("s", ":1.42")], endian)


@pytest.mark.parametrize("endian", ENDIANS.values(), ids=ENDIANS.keys())
@pytest.mark.parametrize("where", ["none", "first", "middle", "last"])
def test_stamp_sender_sets_or_replaces_the_sender(endian: int, where: str) -> None:
    fields = [raw_field(code, sig, value, endian) for code, (sig, value) in STANDARD_FIELDS[METHOD_CALL].items()]
    fields.append(raw_field(SIGNATURE, "g", "s", endian))
    forged = raw_field(SENDER, "s", ":666.1", endian)
    position = {"none": None, "first": 0, "middle": 2, "last": len(fields)}[where]
    if position is not None:
        fields.insert(position, forged)
    buf = raw_message(fields, marshal_body("s", ["hello"], endian), endian=endian)
    original = parse_header(buf)
    out = forwarded(buf)
    stamped = parse_header(out)
    assert stamped.sender == ":1.42"
    assert header_values(stamped) == header_values(original)
    assert out[stamped.body_start:] == buf[original.body_start:]


@pytest.mark.parametrize("endian", ENDIANS.values(), ids=ENDIANS.keys())
def test_stamp_sender_drops_unknown_header_fields(endian: int) -> None:
    # dbus-daemon does the same, so that recipients can trust every field the bus relays.
    extra = [raw_field(42, "(sx)", ("x", 1), endian), raw_field(SENDER, "s", ":9.9", endian),
             raw_field(43, "ay", b"abc", endian)]
    buf = message(endian=endian, extra=extra)
    original = parse_header(buf)
    assert len(original.unknown_spans) == 2
    stamped = parse_header(forwarded(buf))
    assert stamped.unknown_spans is None and stamped.sender == ":1.42"
    assert header_values(stamped)[:-1] == header_values(original)[:-1]


_field_specs = st.sampled_from([
    (INTERFACE, "s", "org.x.Y"), (DESTINATION, "s", ":1.5"), (SENDER, "s", ":77.7"),
    (REPLY_SERIAL, "u", 9), (ERROR_NAME, "s", "org.x.Err"), (50, "t", 1 << 40), (51, "s", "unknown"),
    (52, "(yv)", (1, Variant("s", "x"))), (53, "y", 1), (54, "ay", b"x" * 5),
])


@given(specs=st.lists(_field_specs, max_size=8, unique_by=lambda spec: spec[0]), endian=st.sampled_from([LITTLE, BIG]),
       sender=st.sampled_from([":1.0", ":1.123456", ":abc.def-g_h"]))
@settings(max_examples=150, deadline=None)
def test_stamped_messages_keep_every_known_field_and_alignment(specs: list, endian: int, sender: str) -> None:
    fields = [raw_field(code, sig, value, endian) for code, sig, value in specs]
    fields += [raw_field(code, sig, value, endian) for code, sig, value in
               ((PATH, "o", "/a/b"), (MEMBER, "s", "M"), (SIGNATURE, "g", "t"))]
    buf = raw_message(fields, marshal_body("t", [7], endian), endian=endian)
    original = parse_header(buf)
    out = forwarded(buf, sender)
    stamped = parse_header(out)
    assert stamped.sender == sender and stamped.unknown_spans is None
    assert header_values(stamped)[:-1] == header_values(original)[:-1]
    assert read_body(out, stamped) == [7]




# ---------------------------------------------------------------- cross-checks with dbus-next and jeepney

_NAMES = {
    "path": st.sampled_from(["/", "/org/example/Object", "/a/b_c/D1"]),
    "interface": st.sampled_from(["org.example.Iface", "a.b", "org.x" + "y" * 200]),
    "member": st.sampled_from(["Do", "_private", "Get" + "x" * 100]),
    "error_name": st.sampled_from(["org.example.Error.Failed", "x.y"]),
    "destination": st.sampled_from(["org.example.Service", ":1.42", "org.ex-ample.x"]),
    "sender": st.sampled_from([":1.7", "org.example.Sender"]),
}


@st.composite
def message_specs(draw) -> dict:
    """Arguments for build_message: a valid message of one of the four types, with a body."""
    mtype = draw(st.sampled_from([METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL]))
    required = {METHOD_CALL: {"path", "member"}, SIGNAL: {"path", "interface", "member"},
                ERROR: {"error_name", "reply_serial"}, METHOD_RETURN: {"reply_serial"}}[mtype]
    spec: dict = {"mtype": mtype, "serial": draw(st.integers(1, 0xFFFFFFFF)), "flags": draw(st.integers(0, 7))}
    for name, values in _NAMES.items():
        if name in required or draw(st.booleans()):
            spec[name] = draw(values)
    if "reply_serial" in required or draw(st.booleans()):
        spec["reply_serial"] = draw(st.integers(1, 0xFFFFFFFF))
    if draw(st.booleans()):
        spec["signature"], spec["body"] = draw(bodies())
        if "h" in spec["signature"] or "v" in spec["signature"]:
            spec["unix_fds"] = FD_COUNT
    return spec


def to_next(node: TypeNode, value):
    """Our Python representation of a value -> dbus-next's."""
    code = node.code
    if code == "v":
        return dbus_next.Variant(value.signature, to_next(parse_single_type(value.signature), value.value))
    if code == "a":
        elem = node.children[0]
        if elem.code == "y":
            return bytes(value)
        if elem.code == "{":
            return {k: to_next(elem.children[1], v) for k, v in value.items()}
        return [to_next(elem, item) for item in value]
    if code == "(":
        return [to_next(child, item) for child, item in zip(node.children, value)]
    return value


def from_next(node: TypeNode, value):
    """dbus-next's Python representation of a value -> ours."""
    code = node.code
    if code == "v":
        return Variant(value.signature, from_next(parse_single_type(value.signature), value.value))
    if code == "a":
        elem = node.children[0]
        if elem.code == "y":
            return bytes(value)
        if elem.code == "{":
            return {k: from_next(elem.children[1], v) for k, v in value.items()}
        return [from_next(elem, item) for item in value]
    if code == "(":
        return tuple(from_next(child, item) for child, item in zip(node.children, value))
    return value


def to_jeepney(node: TypeNode, value):
    code = node.code
    if code == "v":
        return (value.signature, to_jeepney(parse_single_type(value.signature), value.value))
    if code == "a":
        elem = node.children[0]
        if elem.code == "y":
            return bytes(value)
        if elem.code == "{":
            return {k: to_jeepney(elem.children[1], v) for k, v in value.items()}
        return [to_jeepney(elem, item) for item in value]
    if code == "(":
        return tuple(to_jeepney(child, item) for child, item in zip(node.children, value))
    return value


def from_jeepney(node: TypeNode, value):
    code = node.code
    if code == "v":
        sig, inner = value
        return Variant(sig, from_jeepney(parse_single_type(sig), inner))
    if code == "a":
        elem = node.children[0]
        if elem.code == "y":
            return bytes(value)
        if elem.code == "{":
            return {k: from_jeepney(elem.children[1], v) for k, v in value.items()}
        return [from_jeepney(elem, item) for item in value]
    if code == "(":
        return tuple(from_jeepney(child, item) for child, item in zip(node.children, value))
    return value


def resolve_fds(node: TypeNode, value, fds: list[int]):
    """Our representation of a value with every fd index replaced by fds[index]."""
    code = node.code
    if code == "h":
        return fds[value]
    if code == "v":
        return Variant(value.signature, resolve_fds(parse_single_type(value.signature), value.value, fds))
    if code == "a":
        elem = node.children[0]
        if elem.code == "{":
            return {resolve_fds(elem.children[0], k, fds): resolve_fds(elem.children[1], v, fds)
                    for k, v in value.items()}
        if elem.code == "y":
            return value
        return [resolve_fds(elem, item, fds) for item in value]
    if code == "(":
        return tuple(resolve_fds(child, item, fds) for child, item in zip(node.children, value))
    return value


def convert_body(signature: str, values, convert) -> list:
    return [convert(node, v) for node, v in zip(parse_signature(signature), values)]


def assert_header_matches_spec(h: Header, spec: dict) -> None:
    assert (h.type, h.serial, h.flags) == (spec["mtype"], spec["serial"], spec["flags"])
    for name in ("path", "interface", "member", "error_name", "destination", "reply_serial"):
        assert getattr(h, name) == spec.get(name), name
    assert h.signature == spec.get("signature", "")


_CROSS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@given(spec=message_specs())
@_CROSS
def test_messages_from_dbus_next_parse_identically_here(spec: dict) -> None:
    signature, body = spec.get("signature", ""), spec.get("body", [])
    theirs = dbus_next.Message(
        message_type=dbus_next.MessageType(spec["mtype"]), serial=spec["serial"],
        flags=dbus_next.MessageFlag(spec["flags"]),
        path=spec.get("path"), interface=spec.get("interface"), member=spec.get("member"),
        error_name=spec.get("error_name"), reply_serial=spec.get("reply_serial"),
        destination=spec.get("destination"), signature=signature,
        body=convert_body(signature, body, to_next), unix_fds=list(range(spec.get("unix_fds", 0))),
    )._marshall(negotiate_unix_fd=True)
    h = parse_header(bytes(theirs))
    assert_header_matches_spec(h, spec)
    assert h.unix_fds == spec.get("unix_fds", 0)
    assert_same_body(signature, body, read_body(bytes(theirs), h))


@given(spec=message_specs())
@_CROSS
def test_our_messages_parse_identically_in_dbus_next(spec: dict) -> None:
    buf = build_message(**spec)
    theirs = Unmarshaller(io.BytesIO(buf)).unmarshall()
    assert (theirs.message_type.value, theirs.serial, theirs.flags.value) == (spec["mtype"], spec["serial"], spec["flags"])
    for name in ("path", "interface", "member", "error_name", "destination", "reply_serial", "sender"):
        assert getattr(theirs, name) == spec.get(name), name
    signature = spec.get("signature", "")
    assert theirs.signature == signature
    assert_same_body(signature, spec.get("body", []), convert_body(signature, theirs.body, from_next))


_JEEPNEY_FIELDS = {"path": jl.HeaderFields.path, "interface": jl.HeaderFields.interface,
                   "member": jl.HeaderFields.member, "error_name": jl.HeaderFields.error_name,
                   "reply_serial": jl.HeaderFields.reply_serial, "destination": jl.HeaderFields.destination,
                   "sender": jl.HeaderFields.sender, "signature": jl.HeaderFields.signature}


@pytest.mark.parametrize("endian", ENDIANS.values(), ids=ENDIANS.keys())
@given(spec=message_specs())
@_CROSS
def test_messages_from_jeepney_parse_identically_here(endian: int, spec: dict) -> None:
    signature, body = spec.get("signature", ""), spec.get("body", [])
    fields = {_JEEPNEY_FIELDS[name]: spec[name] for name in _JEEPNEY_FIELDS if spec.get(name)}
    header = jl.Header(jl.Endianness.little if endian == LITTLE else jl.Endianness.big, spec["mtype"],
                       spec["flags"], 1, 0, spec["serial"], fields)
    fds: list[int] = []  # jeepney numbers fds in the order it meets them and lists them here
    theirs = jl.Message(header, tuple(convert_body(signature, body, to_jeepney))).serialise(fds=fds)
    h = parse_header(theirs)
    assert h.endian == endian
    assert_header_matches_spec(h, spec)
    assert (h.sender, h.unix_fds) == (spec.get("sender"), len(fds))
    ours = read_body(theirs, h)
    assert_same_body(signature, body, [resolve_fds(node, v, fds) for node, v in zip(parse_signature(signature), ours)])


@pytest.mark.parametrize("endian", ENDIANS.values(), ids=ENDIANS.keys())
@given(spec=message_specs())
@_CROSS
def test_our_messages_parse_identically_in_jeepney(endian: int, spec: dict) -> None:
    buf = build_message(**spec, endian=endian)
    theirs = jl.Message.from_buffer(buf, fds=list(range(FD_COUNT)))
    assert theirs.header.endianness == (jl.Endianness.little if endian == LITTLE else jl.Endianness.big)
    assert (theirs.header.message_type.value, theirs.header.serial) == (spec["mtype"], spec["serial"])
    for name, code in _JEEPNEY_FIELDS.items():
        assert theirs.header.fields.get(code) == (spec.get(name) or None), name
    signature = spec.get("signature", "")
    assert_same_body(signature, spec.get("body", []), convert_body(signature, theirs.body, from_jeepney))


# ---------------------------------------------------------------- the header cache

def test_cached_header_fields_are_revalidated_for_another_message_type() -> None:
    # Fields valid for a method call (no INTERFACE) are not valid for a signal.
    call = message(change={INTERFACE: None})
    assert parse_header(call).interface is None
    assert parse_header(call).member == "Do"  # the second parse is served from the cache
    as_signal = with_bytes(call, 1, bytes([SIGNAL]))
    with pytest.raises(ProtocolError, match="signal lacks the required INTERFACE field"):
        parse_header(as_signal)


def test_cached_headers_keep_their_own_serial_flags_and_body() -> None:
    first = message(serial=1, body=marshal_body("s", ["one"]))
    second = message(serial=2, flags=NO_REPLY_EXPECTED, body=marshal_body("s", ["second"]))
    h1, h2 = parse_header(first), parse_header(second)
    assert (h1.serial, h1.flags, read_body(first, h1)) == (1, 0, ["one"])
    assert (h2.serial, h2.flags, read_body(second, h2)) == (2, NO_REPLY_EXPECTED, ["second"])


def test_huge_headers_are_not_cached() -> None:
    from busd.wire import message as wire_message

    buf = message(extra=[raw_field(60, "ay", os.urandom(64 << 10))])
    h = parse_header(buf)
    assert h.fields_len > 64 << 10
    assert buf[16:16 + h.fields_len] not in wire_message._FIELDS_CACHE


def _clear_header_caches() -> None:
    from busd.wire import message as wire_message

    wire_message._forget_all()


def _header_or_error(buf: bytes) -> tuple:
    try:
        h = parse_header(buf)
    except ProtocolError as exc:
        return ("error", str(exc))
    return tuple(getattr(h, attr) for attr in Header.__slots__)


def test_replies_hit_the_cache_whatever_their_reply_serial() -> None:
    from busd.wire import message as wire_message

    _clear_header_caches()
    for mtype in (METHOD_RETURN, ERROR):
        for reply_serial in (3, 4, 0xFFFFFFFF):
            serial = (reply_serial + 9) & 0xFFFFFFFF
            h = parse_header(message(mtype, change={REPLY_SERIAL: ("u", reply_serial)}, serial=serial))
            assert (h.type, h.reply_serial, h.serial) == (mtype, reply_serial, serial)
    assert len(wire_message._REPLY_FIELDS_CACHE) == 2  # one per type: the serial is not part of the key
    with pytest.raises(ProtocolError, match="REPLY_SERIAL: is zero"):
        parse_header(message(METHOD_RETURN, change={REPLY_SERIAL: ("u", 0)}))  # the cached path checks it too


def test_bytes_that_look_like_reply_serial_inside_another_field_are_not_taken_for_it() -> None:
    from busd.wire import message as wire_message

    # An unknown field (ignored, any bytes) that holds REPLY_SERIAL's code and type at an aligned offset,
    # before the real one: the guess lands in it, and the header must not be cached under that guess.
    decoy = raw_field(60, "ay", b"\0\0\0\0" + bytes([REPLY_SERIAL, 1, ord("u"), 0]) + b"\x07\0\0\0")
    _clear_header_caches()
    for decoy_value, reply_serial in ((7, 3), (7, 4), (8, 3)):
        fields = [decoy.replace(b"\x07\0\0\0", bytes([decoy_value, 0, 0, 0])),
                  raw_field(REPLY_SERIAL, "u", reply_serial), raw_field(DESTINATION, "s", ":1.5")]
        buf = raw_message(fields, mtype=METHOD_RETURN)
        assert buf.find(wire_message._REPLY_SERIAL_MARK, 16) == 32  # the guess lands in the decoy
        assert parse_header(buf).reply_serial == reply_serial
    assert not wire_message._REPLY_FIELDS_CACHE


@st.composite
def replies_with_look_alikes(draw) -> bytes:
    """A reply or error whose unknown fields may hold REPLY_SERIAL's first bytes anywhere."""
    mtype = draw(st.sampled_from([METHOD_RETURN, ERROR]))
    endian = draw(st.sampled_from([LITTLE, BIG]))
    junk = []
    for _ in range(draw(st.integers(0, 2))):
        data = bytearray(draw(st.binary(max_size=24)))
        cut = draw(st.integers(0, len(data)))
        data[cut:cut] = bytes([REPLY_SERIAL, 1, ord("u"), 0]) + draw(st.binary(min_size=4, max_size=4))
        junk.append(raw_field(draw(st.integers(10, 200)), "ay", bytes(data), endian))
    fields = {REPLY_SERIAL: ("u", draw(st.integers(0, 3)))}
    if draw(st.booleans()):
        fields[DESTINATION] = ("s", ":1.5")
    place = draw(st.integers(0, len(junk)))
    return message(mtype, change=fields, signature="", endian=endian, extra=junk[:place]) if not junk[place:] \
        else raw_message(junk[:place] + [raw_field(c, *v, endian) for c, v in
                                         {**STANDARD_FIELDS[mtype], **fields}.items()] + junk[place:],
                         mtype=mtype, endian=endian)


@given(first=replies_with_look_alikes(), changes=st.lists(st.tuples(st.integers(16, 200), st.integers(0, 255)),
                                                         max_size=6))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_a_cached_reply_header_parses_as_a_fresh_parse_would(first: bytes, changes: list) -> None:
    # Parse a reply, then variants of it (a byte changed here and there: in the serial, in a look-alike,
    # anywhere) with the cache warm; each must read exactly as it does with the cache empty.
    variants = [first]
    for offset, value in changes:
        if offset < len(first):
            variants.append(with_bytes(variants[-1], offset, bytes([value])))
    _clear_header_caches()
    warm = [_header_or_error(buf) for buf in variants]
    cold = []
    for buf in variants:
        _clear_header_caches()
        cold.append(_header_or_error(buf))
    assert warm == cold


def test_fd_indexes_are_not_checked_against_unix_fds() -> None:
    # The daemon compares UNIX_FDS with the fds received; like dbus-daemon it checks no index
    # (dbus-next's own test suite sends an 'h' with no fds and expects the bus to pass it on).
    assert parse_header(body_message("h", le("I", 0))).unix_fds == 0
    assert parse_header(body_message("h", le("I", 2), unix_fds=2)).unix_fds == 2


def test_one_off_headers_and_names_never_enter_the_caches() -> None:
    # Under churn every new peer sends paths nobody repeats; cached on first sight they filled the
    # caches for minutes (the 10-minute soak's slope). Only what is seen twice is kept.
    from busd.wire import message as wire_message
    from busd.wire import names as wire_names

    _clear_header_caches()
    paths_before = len(wire_names.PATHS._valid)
    for n in range(3000):
        assert parse_header(message(change={PATH: ("o", f"/one/off/n{n}")})).path == f"/one/off/n{n}"
    assert not wire_message._FIELDS_CACHE and len(wire_names.PATHS._valid) == paths_before
    assert len(wire_message._DOORKEEPER._seen) <= 1024  # what one-off keys cost stays bounded
    repeated = message(change={PATH: ("o", "/again")})
    parse_header(repeated), parse_header(repeated)
    assert len(wire_message._FIELDS_CACHE) == 1 and "/again" in wire_names.PATHS._valid.values()


_DESTINATIONS = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["reply", "NameAcquired", "NameLost", "error"]), serial=st.integers(1, 0xFFFFFFFF),
       reply_serial=st.integers(1, 0xFFFFFFFF), destination=_DESTINATIONS, text=st.text(max_size=300))
def test_prepared_string_messages_are_build_messages_own(kind: str, serial: int, reply_serial: int,
                                                         destination: str, text: str) -> None:
    """build_string_to() (Hello's reply and NameAcquired, from prepared runs) makes build_message's bytes."""
    from busd.wire.build import build_message, build_string_to, string_runs
    from busd.wire.errors import MarshalError
    from busd.wire.message import ERROR, METHOD_RETURN, SIGNAL

    fields: dict = {"sender": "org.freedesktop.DBus"}
    mtype = METHOD_RETURN
    if kind == "error":
        mtype, fields["error_name"] = ERROR, "org.freedesktop.DBus.Error.Failed"
    elif kind != "reply":
        mtype = SIGNAL
        fields.update(path="/org/freedesktop/DBus", interface="org.freedesktop.DBus", member=kind)
    head, tail = string_runs(fields.get("path"), fields.get("interface"), fields.get("member"),
                             fields.get("error_name"), fields["sender"])
    replying = None if mtype == SIGNAL else reply_serial
    try:
        expected: object = build_message(mtype, serial, reply_serial=replying, destination=destination,
                                         signature="s", body=[text], **fields)
    except MarshalError:
        expected = MarshalError
    try:
        made: object = build_string_to(mtype, serial, head, replying, destination, tail, text)
    except MarshalError:
        made = MarshalError
    assert made == expected
