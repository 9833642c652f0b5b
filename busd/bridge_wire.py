"""Re-addressing a message for the other side of the bridge: new serial, destination and reply serial, same body.

The body of a D-Bus message starts 8-aligned after the header, in the byte order
of the fixed header, and does not depend on any header field but SIGNATURE and
UNIX_FDS. So crossing the bridge rewrites only the header: the body bytes travel
unchanged (as a memoryview of the received buffer), whatever their size.
"""

from __future__ import annotations

import struct

from .wire.marshal import LITTLE
from .wire.message import PROTOCOL_VERSION, Header

_PAD = b"\0" * 8
_FIXED_LE = struct.Struct("<BBBBIII")
_FIXED_BE = struct.Struct(">BBBBIII")
_U32_LE = struct.Struct("<I").pack
_U32_BE = struct.Struct(">I").pack
# Header field code, type and the attribute of Header holding its value (D-Bus specification, "Header Fields").
_STRING_FIELDS = ((b"\x01\x01o\x00", "path"), (b"\x02\x01s\x00", "interface"),
                  (b"\x03\x01s\x00", "member"), (b"\x04\x01s\x00", "error_name"))


def _string(out: bytearray, prefix: bytes, value: str, u32) -> None:
    out += _PAD[:-len(out) & 7]
    data = value.encode()
    out += prefix
    out += u32(len(data))
    out += data
    out.append(0)


def _u32_field(out: bytearray, prefix: bytes, value: int, u32) -> None:
    out += _PAD[:-len(out) & 7]
    out += prefix
    out += u32(value)


def readdressed_header(h: Header, serial: int, destination: str | None, reply_serial: int | None,
                       sender: str | None = None) -> bytes:
    """The header (fixed part, fields, padding) of `h`'s message with a new serial and addresses.

    Keeps type, flags, byte order, PATH, INTERFACE, MEMBER, ERROR_NAME, SIGNATURE and
    UNIX_FDS; sets DESTINATION, REPLY_SERIAL and SENDER as given (None: absent).
    Append the original body (`buf[h.body_start:]`) to get the whole message.
    """
    little = h.endian == LITTLE
    u32 = _U32_LE if little else _U32_BE
    out = bytearray()
    for prefix, attr in _STRING_FIELDS:
        value = getattr(h, attr)
        if value is not None:
            _string(out, prefix, value, u32)
    if reply_serial is not None:
        _u32_field(out, b"\x05\x01u\x00", reply_serial, u32)
    if destination is not None:
        _string(out, b"\x06\x01s\x00", destination, u32)
    if sender is not None:
        _string(out, b"\x07\x01s\x00", sender, u32)
    if h.signature:
        out += _PAD[:-len(out) & 7]
        data = h.signature.encode("ascii")
        out += b"\x08\x01g\x00"
        out.append(len(data))
        out += data
        out.append(0)
    if h.unix_fds:
        _u32_field(out, b"\x09\x01u\x00", h.unix_fds, u32)
    fixed = (_FIXED_LE if little else _FIXED_BE).pack(
        h.endian, h.type, h.flags, PROTOCOL_VERSION, h.body_len, serial, len(out))
    return b"".join((fixed, out, _PAD[:-len(out) & 7]))


__all__ = ["readdressed_header"]
