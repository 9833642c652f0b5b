"""Fuzzing of the wire decoder: mutated valid messages may be refused, but only with ProtocolError.

The targets are frame_size, parse_header, check_body and unmarshal_body, fed valid
messages after bit flips, truncation, length-field corruption and random bytes.
Whatever a peer sends, the only exception that may escape is ProtocolError
(SignatureError is one), so the daemon can drop the peer and log why. Messages
that are accepted must also be readable and forwardable.

CI runs a few hundred examples; run it long with

    BUSD_FUZZ_EXAMPLES=200000 python3 -m pytest -q tests/unit/test_wire_fuzz.py

Inputs that once found a bug live in tests/corpus/ and are replayed by a test.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from busd.wire.errors import ProtocolError
from busd.wire.marshal import BIG, LITTLE, Variant, check_body, marshal_body, unmarshal_body
from busd.wire.message import (
    METHOD_CALL, METHOD_RETURN, SIGNAL, build_message, frame_size, parse_header, read_body, sender_field,
    stamp_sender,
)
from test_marshal import FD_COUNT, signatures
from test_message import header_values, message_specs, raw_field, raw_message

EXAMPLES = int(os.environ.get("BUSD_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def _seed_messages() -> list[bytes]:
    """Valid messages of every kind to mutate."""
    seeds = []
    for endian in (LITTLE, BIG):
        call = dict(path="/org/example/Object", interface="org.example.Iface", member="Do",
                    destination="org.example.Service", endian=endian)
        for signature, body in [
            ("s", ["hello"]), ("a{sv}", [{"a": Variant("i", 1), "b": Variant("as", ["x", "y"])}]),
            ("(ia(yv))", [(1, [(2, Variant("d", 1.5)), (3, Variant("g", "a{sv}"))])]), ("ay", [b"\x00\xff" * 20]),
            ("aai", [[[1, 2], [], [3]]]), ("bxndqt", [True, -1, -2, 0.25, 7, 1 << 60]), ("ohg", ["/a", 1, "s"]),
            ("v", [Variant("v", Variant("(sv)", ("k", Variant("ab", [True, False]))))]),
            ("a(ss)a{oa{sv}}", [[("a", "b")], {"/x": {"p": Variant("u", 5)}}]),
        ]:
            seeds.append(build_message(METHOD_CALL, 5, signature=signature, body=body, unix_fds=2, **call))
        seeds.append(build_message(SIGNAL, 9, path="/p", interface="a.b", member="C", sender=":1.5",
                                   signature="s", body=["x"], endian=endian))
        seeds.append(build_message(METHOD_RETURN, 2, reply_serial=1, destination=":1.9", endian=endian))
        seeds.append(raw_message([raw_field(1, "o", "/a", endian), raw_field(3, "s", "M", endian),
                                  raw_field(42, "(sx)", ("u", 1), endian), raw_field(7, "s", ":1.2", endian),
                                  raw_field(8, "g", "u", endian)], marshal_body("u", [3], endian), endian=endian))
    return seeds


SEEDS = _seed_messages()

_U32_VALUES = [0, 1, 2, 3, 4, 7, 8, 255, 256, 0xFFFF, (1 << 26) - 1, 1 << 26, (1 << 26) + 1, 1 << 27,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]


@st.composite
def mutated_messages(draw) -> bytes:
    """A valid message (a seed or a generated one) after one to four mutations, or plain random bytes."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.binary(max_size=200))
    if draw(st.booleans()):
        buf = bytearray(draw(st.sampled_from(SEEDS)))
    else:
        spec = draw(message_specs())
        buf = bytearray(build_message(**spec, endian=draw(st.sampled_from([LITTLE, BIG]))))
    for _ in range(draw(st.integers(1, 4))):
        if not buf:
            break
        kind = draw(st.sampled_from(["flip", "byte", "u32", "truncate", "cut", "insert", "append"]))
        at = draw(st.integers(0, len(buf) - 1))
        if kind == "flip":
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            buf[at] = draw(st.integers(0, 255))
        elif kind == "u32":
            # Lengths are u32s at 4-aligned offsets: the header's at 4 and 12, arrays' and strings' anywhere.
            at = draw(st.sampled_from([4, 12, at & ~3]))
            if at + 4 <= len(buf):
                fmt = "<I" if draw(st.booleans()) else ">I"
                value = draw(st.sampled_from(_U32_VALUES) | st.integers(0, 0xFFFFFFFF))
                buf[at:at + 4] = struct.pack(fmt, value)
        elif kind == "truncate":
            del buf[at:]
        elif kind == "cut":
            del buf[at:at + draw(st.integers(1, 16))]
        elif kind == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            buf += draw(st.binary(min_size=1, max_size=16))
    return bytes(buf)


# ---------------------------------------------------------------- the fuzz targets

def exercise_message(buf: bytes) -> None:
    """frame_size and parse_header on one buffer; accepted messages must also read and forward."""
    if len(buf) >= 16:  # frame_size's contract: the caller has the 16 bytes of the fixed header
        try:
            frame_size(buf)
        except ProtocolError:
            pass
    try:
        h = parse_header(buf)
    except ProtocolError:
        return
    assert frame_size(buf) == len(buf)
    read_body(buf, h)  # a checked body reads without any error
    head, body = stamp_sender(buf, h, sender_field(":1.77", h.endian))
    forwarded = head + bytes(body)
    again = parse_header(forwarded)
    assert again.sender == ":1.77" and again.unknown_spans is None
    assert header_values(again)[:-1] == header_values(h)[:-1]
    assert read_body(forwarded, again) == read_body(buf, h)


def exercise_body(signature: str, buf: bytes, start: int, endian: int, nfds: int) -> None:
    """check_body and unmarshal_body on untrusted bytes; checked bodies must read and re-marshal."""
    try:
        check_body(signature, buf, start, len(buf), endian, nfds)
        checked = True
    except ProtocolError:
        checked = False
    try:
        values = unmarshal_body(signature, buf, start, endian)
    except ProtocolError:
        assert not checked, "unmarshal_body refused a body that check_body accepted"
        return
    if checked:
        marshal_body(signature, values, endian)  # what we accept, we can write back


@given(buf=mutated_messages())
@FUZZ
def test_mutated_messages_raise_only_protocol_error(buf: bytes) -> None:
    exercise_message(buf)


@given(buf=mutated_messages(), data=st.data())
@FUZZ
def test_mutated_bodies_raise_only_protocol_error(buf: bytes, data: st.DataObject) -> None:
    try:
        h = parse_header(buf, validate_body=False)
        signature, start, endian = h.signature, h.body_start, h.endian
    except ProtocolError:
        signature, start, endian = "", 16, LITTLE
    if data.draw(st.booleans()) or not signature:
        signature = data.draw(signatures)
        start = data.draw(st.integers(0, len(buf)))
        endian = data.draw(st.sampled_from([LITTLE, BIG]))
    exercise_body(signature, buf, start, endian, data.draw(st.integers(0, FD_COUNT)))


# ---------------------------------------------------------------- regression inputs

@dataclass
class CorpusEntry:
    """One saved input: a whole message, or a body with the signature, start and fd count to check it with."""

    name: str
    data: bytes
    signature: str | None = None
    start: int = 0
    endian: int = LITTLE
    nfds: int = 0


def load_corpus_entry(path: Path) -> CorpusEntry:
    """Read a corpus file: '# comment' lines, 'key: value' lines, and the input as 'hex: ...'."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(":")
            values[key.strip()] = values.get(key.strip(), "") + value.strip()
    return CorpusEntry(
        name=path.name, data=bytes.fromhex(values["hex"]), signature=values.get("signature"),
        start=int(values.get("start", "0")), endian=BIG if values.get("endian") == "B" else LITTLE,
        nfds=int(values.get("nfds", "0")),
    )


CORPUS_FILES = sorted(CORPUS.glob("*.txt"))


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.name for p in CORPUS_FILES])
def test_corpus_input_raises_only_protocol_error(path: Path) -> None:
    entry = load_corpus_entry(path)
    if entry.signature is None:
        exercise_message(entry.data)
    else:
        exercise_body(entry.signature, entry.data, entry.start, entry.endian, entry.nfds)
