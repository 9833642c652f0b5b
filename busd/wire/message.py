"""D-Bus messages: framing, the header fast path, validation, sender stamping, building.

Theory of the router fast path. A bus forwards messages it does not need to
understand. For each one it must (1) know its length from the first 16 bytes,
(2) read the header fields (PATH, INTERFACE, MEMBER, DESTINATION, ...) without
building the body, (3) validate the message once, and (4) forward the same bytes
with the SENDER field set to the sender's unique name and, as dbus-daemon does,
without header fields it does not know. Step 4 never re-marshals:
header fields are 8-aligned structs, so removing one field and appending another
moves the following bytes by multiples of 8 and leaves their alignment intact.
The body is passed on as a memoryview of the received buffer.
"""

from __future__ import annotations

import struct
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any

from . import names
from .arguments import body_arguments
from .errors import ProtocolError
from .marshal import (
    BIG, LITTLE, Variant, check_body, check_string_bytes,
    compiled_checker, read_body, read_signature_at,
)
from .protocol import (  # the format's numbers: re-exported, every reader of messages imports them from here
    ALLOW_INTERACTIVE_AUTHORIZATION, DESTINATION, ERROR, ERROR_NAME, FIELD_NAMES, FIELD_TYPES, FIXED_HEADER_SIZE,
    INTERFACE, MAX_HEADER_FIELDS_LENGTH, MAX_MESSAGE_SIZE, MAX_MESSAGE_UNIX_FDS, MEMBER, METHOD_CALL, METHOD_RETURN,
    NO_AUTO_START, NO_REPLY_EXPECTED, PATH, PROTOCOL_VERSION, REPLY_SERIAL, REQUIRED_FIELDS, SENDER, SIGNAL,
    SIGNATURE, TYPE_NAMES, UNIX_FDS,
)
from .signature import SignatureError
from .wellknown import LOCAL_INTERFACE, LOCAL_PATH

# Building is plain Python even when this module is compiled: untyped, as compiled code it ran slower than
# under CPython 3.11 (a Hello reply 7.7 us against 4.7). Re-exported: the bus builds with message.build_message.
from .build import build_message

_FIELD_TYPE_BYTES = {code: ord(t) for code, t in FIELD_TYPES.items()}
# The constants parse_header() and stamp_sender() compare with, again: C integers in the compiled twin
# (message.pxd), where comparing a C integer with a module global boxed it first.
_FIXED_SIZE, _MAX_FIELDS, _VERSION = FIXED_HEADER_SIZE, MAX_HEADER_FIELDS_LENGTH, PROTOCOL_VERSION
_LITTLE, _BIG, _RETURN, _ERROR = LITTLE, BIG, METHOD_RETURN, ERROR

# The pure twin (from .py or .pyc) rather than the compiled build, which reads integers and scans bytes
# through C helpers declared in message.pxd (the names marked F821 below).
_PURE = not __file__.endswith(tuple(EXTENSION_SUFFIXES))
_LE3 = struct.Struct("<III")
_BE3 = struct.Struct(">III")
_LE1 = struct.Struct("<I")
_BE1 = struct.Struct(">I")
_PAD = b"\0" * 8
_ANY_FD_INDEX = 1 << 32  # an fd count above every possible index


def frame_size(buf: bytes | bytearray | memoryview, offset: int = 0,
               max_message_size: int = MAX_MESSAGE_SIZE) -> int:
    """Total size of the message starting at `offset`, from its first 16 bytes.

    The caller guarantees 16 bytes are available. Rejects impossible lengths before
    anything is buffered for them.
    """
    if not _PURE:
        size = c_frame_size(buf, offset, max_message_size, _MAX_FIELDS)  # noqa: F821
        if size >= 0:
            return size
    endian = buf[offset]
    if endian == LITTLE:
        body_len, _serial, fields_len = _LE3.unpack_from(buf, offset + 4)
    elif endian == BIG:
        body_len, _serial, fields_len = _BE3.unpack_from(buf, offset + 4)
    else:
        raise ProtocolError(f"invalid byte-order mark {endian:#04x}")
    if buf[offset + 3] != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {buf[offset + 3]}")
    if fields_len > MAX_HEADER_FIELDS_LENGTH:
        raise ProtocolError(f"header fields array of {fields_len} bytes exceeds {MAX_HEADER_FIELDS_LENGTH}")
    total = FIXED_HEADER_SIZE + ((fields_len + 7) & ~7) + body_len
    if total > max_message_size:
        raise ProtocolError(f"message of {total} bytes exceeds the maximum message size {max_message_size}")
    return total


class Header:
    """The fixed header and header fields of one message; the body is not read."""

    __slots__ = ("endian", "type", "flags", "body_len", "serial", "fields_len", "body_start",
                 "path", "interface", "member", "error_name", "reply_serial", "destination",
                 "sender", "signature", "unix_fds", "sender_span", "unknown_spans")

    def __init__(self) -> None:
        self.path = self.interface = self.member = self.error_name = None
        self.destination = self.sender = None
        self.signature = ""
        self.reply_serial = None
        self.unix_fds = 0
        self.sender_span = None
        self.unknown_spans = None

    @property
    def no_reply_expected(self) -> bool:
        return bool(self.flags & NO_REPLY_EXPECTED)

    @property
    def no_auto_start(self) -> bool:
        return bool(self.flags & NO_AUTO_START)

    def describe(self) -> str:
        """A one-line summary for logs."""
        parts = [TYPE_NAMES.get(self.type, f"type {self.type}"), f"serial={self.serial}"]
        for attr in ("sender", "destination", "path", "interface", "member", "error_name", "reply_serial"):
            value = getattr(self, attr)
            if value is not None:
                parts.append(f"{attr}={value}")
        if self.signature:
            parts.append(f"signature={self.signature}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"<Header {self.describe()}>"


# Validated header fields by their raw bytes: a bus sees the same few headers again and
# again (only serials differ), so a repeat costs a dict lookup instead of a parse.
_FIELDS_CACHE: dict[bytes, Header] = {}
_FIELDS_CACHE_LIMIT = 1024  # per cache: room for the headers that repeat; one-off ones (a new path each) go at a clear
# Replies and errors, whose REPLY_SERIAL differs every time: keyed on their fields without the
# serial's four value bytes, with where those bytes are (see _reply_serial_at).
_REPLY_FIELDS_CACHE: dict[bytes, tuple[Header, int]] = {}
# The cached keys whose DESTINATION is a unique name, by that name: forgotten when its peer leaves.
_KEYS_BY_UNIQUE_DESTINATION: dict[str, list[bytes]] = {}
# Headers are cached from their second sighting: one-off ones (a new path each time) never are.
_DOORKEEPER = names.Doorkeeper()
# A REPLY_SERIAL field's first four bytes: code 5, signature "u". A field starts 8-aligned.
_REPLY_SERIAL_MARK = bytes((REPLY_SERIAL, 1, ord("u"), 0))
# Only ordinary headers are cached: a peer must not pin a thousand huge ones in memory.
_CACHEABLE_FIELDS_LENGTH = 1024


def _copy_fields(template: Header) -> Header:
    h = Header.__new__(Header)
    h.endian = template.endian
    h.type = template.type
    h.path = template.path
    h.interface = template.interface
    h.member = template.member
    h.error_name = template.error_name
    h.reply_serial = template.reply_serial
    h.destination = template.destination
    h.sender = template.sender
    h.signature = template.signature
    h.unix_fds = template.unix_fds
    h.sender_span = template.sender_span
    h.unknown_spans = template.unknown_spans
    return h


def _bad_field(code: int, what: str) -> ProtocolError:
    return ProtocolError(f"header field {FIELD_NAMES.get(code, code)}: {what}")


def parse_header(buf: bytes, validate_body: bool = True) -> Header:
    """Parse and validate the header of the complete message `buf` (exactly one message).

    Checks everything the specification's "Valid messages" section demands of the
    header and, with `validate_body`, checks the body against SIGNATURE without
    building values. Raises ProtocolError with a precise reason.
    """
    data = buf if type(buf) is bytes else bytes(buf)
    size = len(data)
    if size < _FIXED_SIZE:
        raise ProtocolError("message shorter than the fixed header")
    endian = data[0]
    if endian != _LITTLE and endian != _BIG:
        raise ProtocolError(f"invalid byte-order mark {endian:#04x}")
    if _PURE:
        body_len, serial, fields_len = (_LE3 if endian == _LITTLE else _BE3).unpack_from(data, 4)
    else:
        body_len = u32_at(data, 4, endian)  # noqa: F821
        serial = u32_at(data, 8, endian)  # noqa: F821
        fields_len = u32_at(data, 12, endian)  # noqa: F821
    if data[3] != _VERSION:
        raise ProtocolError(f"unsupported protocol version {data[3]}")
    fields_end = _FIXED_SIZE + fields_len
    body_start = (fields_end + 7) & ~7
    if fields_len > _MAX_FIELDS or body_start + body_len != size:
        raise ProtocolError("header lengths do not add up to the message size")
    if serial == 0:
        raise ProtocolError("serial number is zero")
    mtype = data[1]

    reply_at = 0
    if fields_len > _CACHEABLE_FIELDS_LENGTH:
        fields_key = template = None
    elif mtype == _RETURN or mtype == _ERROR:
        # Replies name a different serial each time: their cache key leaves out the four
        # bytes of REPLY_SERIAL's value (issue 14: before, every reply took the full parse).
        if _PURE:
            reply_at = data.find(_REPLY_SERIAL_MARK, _FIXED_SIZE, fields_end)
        else:
            reply_at = find_reply_mark(data, _FIXED_SIZE, fields_end)  # noqa: F821
        if reply_at & 7:
            reply_at = _reply_serial_at(data, reply_at, fields_end)
        reply_at = reply_at + 4 if reply_at > 0 and reply_at + 8 <= fields_end else 0
        if reply_at:
            fields_key = data[_FIXED_SIZE:reply_at] + data[reply_at + 4:fields_end]
            replies_cache = _REPLY_FIELDS_CACHE  # (typed dict locals: C lookups in the compiled twin)
            cached = replies_cache.get(fields_key)
            template = cached[0] if cached is not None and cached[1] == reply_at else None
        else:
            fields_key = template = None
    else:
        fields_key = data[_FIXED_SIZE:fields_end]
        cache = _FIELDS_CACHE
        template = cache.get(fields_key)
    if template is not None and template.type == mtype and template.endian == endian:
        # Same header fields as an earlier message: already validated, copy them.
        h = _copy_fields(template)
        if reply_at:  # the same bytes but the serial's value: only that can be wrong
            if _PURE:
                reply_serial = (_LE1 if endian == _LITTLE else _BE1).unpack_from(data, reply_at)[0]
            else:
                reply_serial = u32_at(data, reply_at, endian)  # noqa: F821
            if reply_serial == 0:
                raise _bad_field(REPLY_SERIAL, "is zero")
            h.reply_serial = reply_serial
    else:
        u32 = _LE1.unpack_from if endian == _LITTLE else _BE1.unpack_from
        h = _parse_fields(data, endian, mtype, u32, fields_end)
        if fields_key is not None and _DOORKEEPER.admits(fields_key):
            if not reply_at:
                if len(_FIELDS_CACHE) >= _FIELDS_CACHE_LIMIT:
                    _forget_all()
                _FIELDS_CACHE[fields_key] = _copy_fields(h)
                _remember_destination(h.destination, fields_key)
            elif _is_reply_serial_at(data, endian, mtype, u32, fields_end, reply_at, h.reply_serial):
                if len(_REPLY_FIELDS_CACHE) >= _FIELDS_CACHE_LIMIT:
                    _forget_all()
                _REPLY_FIELDS_CACHE[fields_key] = (_copy_fields(h), reply_at)
                _remember_destination(h.destination, fields_key)
    h.flags = data[2]
    h.body_len = body_len
    h.serial = serial
    h.fields_len = fields_len
    h.body_start = body_start
    if fields_end != body_start and (
            data.count(0, fields_end, body_start) != body_start - fields_end if _PURE
            else not zeros(data, fields_end, body_start)):  # noqa: F821
        raise ProtocolError("non-zero padding after the header")
    if body_len and not h.signature:
        raise ProtocolError("message has a body but no SIGNATURE")
    if validate_body:
        check_message_body(data, h)
    return h


def _reply_serial_at(buf: bytes, pos: int, fields_end: int) -> int:
    """From a look-alike found at an unaligned `pos`, the next one that starts 8-aligned (-1: none).

    REPLY_SERIAL's place is only guessed from the bytes (code 5, signature "u"): a value
    can hold the same bytes. The cache keeps a header only when REPLY_SERIAL is really
    there (_is_reply_serial_at), and two headers equal but for the four bytes after the
    guess also agree on the guess, so a hit is always the real field.
    """
    while pos >= 0 and pos & 7:
        pos = buf.find(_REPLY_SERIAL_MARK, pos + 1, fields_end)
    return pos


def _is_reply_serial_at(buf: bytes, endian: int, mtype: int, u32, fields_end: int, at: int,
                        reply_serial: int) -> bool:
    """Are the four bytes at `at` REPLY_SERIAL's value? Parse again with them changed and see
    (once per header cached: a cache must never answer for a string that looked like a field)."""
    if u32(buf, at)[0] != reply_serial:
        return False
    other = reply_serial ^ 0xFFFFFFFF or 1
    probe = bytearray(buf[:fields_end])
    probe[at:at + 4] = other.to_bytes(4, "little" if endian == LITTLE else "big")
    try:
        return _parse_fields(bytes(probe), endian, mtype, u32, fields_end).reply_serial == other
    except ProtocolError:
        return False


def _remember_destination(destination: str | None, fields_key: bytes) -> None:
    if destination is not None and destination[0] == ":":
        _KEYS_BY_UNIQUE_DESTINATION.setdefault(destination, []).append(fields_key)


def _forget_all() -> None:
    _FIELDS_CACHE.clear()
    _REPLY_FIELDS_CACHE.clear()
    _KEYS_BY_UNIQUE_DESTINATION.clear()


def forget_unique_name(name: str) -> None:
    """The peer that had unique name `name` left: the parsing caches keep nothing keyed on it.

    Unique names are never reused, so entries for a departed peer's name would only
    wait for the caches to start over; under connection churn that is megabytes.
    """
    for key in _KEYS_BY_UNIQUE_DESTINATION.pop(name, ()):
        _FIELDS_CACHE.pop(key, None)
        _REPLY_FIELDS_CACHE.pop(key, None)
    names.BUS_NAMES.forget(name)


def check_message_body(buf: bytes, h: Header) -> None:
    """Check the body of the message `buf` against its SIGNATURE; raises ProtocolError.

    What parse_header() does unless told `validate_body=False`. It touches no
    state but bounded caches, so a transport may run it off its event loop: a
    large body of tiny elements takes seconds to walk (bench_bodies.py), and in
    a thread it leaves the loop free (issue 13, #11).
    """
    if h.signature:
        # Like dbus-daemon, fd indexes are not checked against UNIX_FDS: recipients do that.
        check_body(h.signature, buf, h.body_start, len(buf), h.endian, _ANY_FD_INDEX)


def _parse_fields(buf: bytes, endian: int, mtype: int, u32, fields_end: int) -> Header:
    """Read and validate the header fields array (the slow path, once per distinct header)."""
    h = Header()
    h.endian = endian
    h.type = mtype
    seen = 0
    pos = FIXED_HEADER_SIZE
    while pos < fields_end:
        aligned = (pos + 7) & ~7
        if aligned != pos:
            if aligned >= fields_end or buf.count(0, pos, aligned) != aligned - pos:
                raise ProtocolError("bad padding between header fields")
            pos = aligned
        if pos + 4 > fields_end:
            raise ProtocolError("truncated header field")
        code = buf[pos]
        if code == 0:
            raise ProtocolError("header field code 0 is invalid")
        expected = _FIELD_TYPE_BYTES.get(code)
        if expected is None:
            # Unknown fields are accepted and ignored (stamp_sender drops them), but
            # must still be well formed; like libdbus, no fd index is checked in them.
            start = pos
            try:
                pos = compiled_checker("v", "<" if endian == LITTLE else ">")(
                    buf, pos + 1, fields_end, 0, _ANY_FD_INDEX)
            except SignatureError as exc:
                raise ProtocolError(exc.reason) from None
            if h.unknown_spans is None:
                h.unknown_spans = [(start, pos)]
            else:
                h.unknown_spans.append((start, pos))
            continue
        bit = 1 << code
        if seen & bit:
            raise _bad_field(code, "appears twice")
        seen |= bit
        if buf[pos + 1] != 1 or buf[pos + 2] != expected or buf[pos + 3] != 0:
            raise _bad_field(code, f"must have type {chr(expected)!r}")
        vpos = pos + 4
        if expected == 0x75:  # 'u'
            if vpos + 4 > fields_end:
                raise _bad_field(code, "truncated")
            value = u32(buf, vpos)[0]
            pos = vpos + 4
            if code == REPLY_SERIAL:
                if value == 0:
                    raise _bad_field(code, "is zero")
                h.reply_serial = value
            else:
                h.unix_fds = value
        elif expected == 0x67:  # 'g'
            h.signature, pos = read_signature_at(buf, vpos, fields_end)
        else:
            if vpos + 4 > fields_end:
                raise _bad_field(code, "truncated")
            n = u32(buf, vpos)[0]
            start = vpos + 4
            stop = start + n
            if stop >= fields_end or buf[stop] != 0:
                raise _bad_field(code, "string runs past the header or is not NUL-terminated")
            raw = buf[start:stop]
            pos = stop + 1
            if code == PATH:
                value = names.PATHS.lookup(raw)
                if value is None:
                    raise _bad_field(code, f"invalid object path {raw!r}")
                if value == LOCAL_PATH:
                    raise _bad_field(code, f"{LOCAL_PATH} is reserved")
                h.path = value
            elif code == INTERFACE:
                value = names.INTERFACES.lookup(raw)
                if value is None:
                    raise _bad_field(code, f"invalid interface name {raw!r}")
                if value == LOCAL_INTERFACE:
                    raise _bad_field(code, f"{LOCAL_INTERFACE} is reserved")
                h.interface = value
            elif code == MEMBER:
                value = names.MEMBERS.lookup(raw)
                if value is None:
                    raise _bad_field(code, f"invalid member name {raw!r}")
                h.member = value
            elif code == ERROR_NAME:
                value = names.INTERFACES.lookup(raw)
                if value is None:
                    raise _bad_field(code, f"invalid error name {raw!r}")
                h.error_name = value
            else:
                value = names.BUS_NAMES.lookup(raw)
                if value is None:
                    raise _bad_field(code, f"invalid bus name {raw!r}")
                if code == DESTINATION:
                    h.destination = value
                else:
                    h.sender = value
                    h.sender_span = (vpos - 4, pos)
    if pos != fields_end:
        raise ProtocolError("header fields overrun the header array")

    required = REQUIRED_FIELDS.get(mtype)
    if required is not None:
        for code, attr in required:
            if getattr(h, attr) is None:
                raise ProtocolError(f"{TYPE_NAMES[mtype]} lacks the required {FIELD_NAMES[code]} field")
    elif mtype == 0:
        raise ProtocolError("message type 0 is invalid")
    return h


# ---------------------------------------------------------------- sender stamping

def sender_field(unique_name: str, endian: int = LITTLE) -> bytes:
    """The marshalled SENDER header field for `unique_name`; compute once per connection."""
    data = unique_name.encode()
    length = (_LE1 if endian == LITTLE else _BE1).pack(len(data))
    field = b"\x07\x01s\x00" + length + data + b"\0"
    return field


def _without_fields(buf: bytes, fields_end: int, spans: list[tuple[int, int]]) -> bytes:
    """The header fields of `buf` minus the fields at `spans` (sorted), keeping 8-alignment."""
    pieces = []
    keep_from = FIXED_HEADER_SIZE
    for start, stop in spans:
        pieces.append(buf[keep_from:start])
        keep_from = (stop + 7) & ~7
    if keep_from < fields_end:
        pieces.append(buf[keep_from:fields_end])
    return b"".join(pieces)


_COPY_BODY_UP_TO = 4096


def stamp_sender(buf: bytes, h: Header, field: bytes) -> tuple[bytes, Any]:
    """The bytes to forward: header with SENDER replaced by `field`, and the untouched body.

    `field` comes from sender_field() in the message's byte order. Header fields
    unknown to us are dropped, as dbus-daemon does, so recipients can trust every
    field the bus passes on. Returns the new header (fixed part, fields, padding)
    and a zero-copy view of the body; for a body of up to _COPY_BODY_UP_TO bytes, the whole
    message as one buffer and b"".
    """
    fields_end = FIXED_HEADER_SIZE + h.fields_len
    span = h.sender_span
    if not _PURE and h.unknown_spans is None and type(buf) is bytes:
        fields_end = _FIXED_SIZE + h.fields_len
        # One allocation, the pieces copied in: what the join below builds from seven.
        if span is None:
            start = next_field = fields_end
        else:
            start, stop = span
            next_field = min((stop + 7) & ~7, fields_end)
        if h.body_len <= _COPY_BODY_UP_TO:
            return stamped(buf, h.endian, _FIXED_SIZE, start, next_field, fields_end, field,  # noqa: F821
                           h.body_start), b""
        return (stamped(buf, h.endian, _FIXED_SIZE, start, next_field, fields_end, field, -1),  # noqa: F821
                memoryview(buf)[h.body_start:])
    if h.unknown_spans is not None:
        spans = h.unknown_spans if span is None else sorted(h.unknown_spans + [span])
        kept = _without_fields(buf, fields_end, spans)
    elif span is None:
        kept = buf[FIXED_HEADER_SIZE:fields_end]
    else:
        start, stop = span
        next_field = (stop + 7) & ~7
        if next_field >= fields_end:
            kept = buf[FIXED_HEADER_SIZE:start]
        else:
            kept = buf[FIXED_HEADER_SIZE:start] + buf[next_field:fields_end]
    gap = -len(kept) & 7
    new_fields_len = len(kept) + gap + len(field)
    tail_pad = -new_fields_len & 7
    pack = _LE1.pack if h.endian == LITTLE else _BE1.pack
    if h.body_len <= _COPY_BODY_UP_TO:
        # A small body is cheaper copied than viewed (a memoryview costs more to make and free than a short
        # copy), and the message then queues and sends as one buffer.
        return b"".join((buf[:12], pack(new_fields_len), kept, _PAD[:gap], field, _PAD[:tail_pad],
                         buf[h.body_start:])), b""
    head = b"".join((buf[:12], pack(new_fields_len), kept, _PAD[:gap], field, _PAD[:tail_pad]))
    return head, memoryview(buf)[h.body_start:]


__all__ = [
    "Header", "frame_size", "parse_header", "sender_field", "stamp_sender", "build_message",
    "read_body", "body_arguments", "check_message_body", "check_string_bytes",
]
