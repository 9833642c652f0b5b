"""Re-addressing a message for the other side of the bridge: new serial, destination and reply serial, same body.

The body of a D-Bus message starts 8-aligned after the header, in the byte order
of the fixed header, and depends on no header field but SIGNATURE and UNIX_FDS.
So crossing the bridge rewrites only the header: the body bytes travel unchanged
(as a memoryview of the received buffer), whatever their size.

The new header fields are three blocks, each starting 8-aligned so that every
field in them stays 8-aligned: PATH, INTERFACE, MEMBER and ERROR_NAME; then
REPLY_SERIAL (exactly 8 bytes) if any; then DESTINATION, SIGNATURE and
UNIX_FDS. A bridge sees the same few blocks again and again, so the first
and last are cached.
"""

from __future__ import annotations

import struct

from ..wire.marshal import LITTLE
from ..wire.message import PROTOCOL_VERSION, Header

_PAD = b"\0" * 8
_FIXED_LE = struct.Struct("<BBBBIII")
_FIXED_BE = struct.Struct(">BBBBIII")
_U32_LE = struct.Struct("<I").pack
_U32_BE = struct.Struct(">I").pack
_CACHE_LIMIT = 4096
_heads: dict[tuple, bytes] = {}
_tails: dict[tuple, bytes] = {}


def _string(out: bytearray, prefix: bytes, value: str, u32) -> None:
    out += _PAD[:-len(out) & 7]
    data = value.encode()
    out += prefix
    out += u32(len(data))
    out += data
    out.append(0)


def _head_block(key: tuple) -> bytes:
    """PATH, INTERFACE, MEMBER, ERROR_NAME (unpadded: a header's fields may not end in padding)."""
    endian, path, interface, member, error_name = key
    u32 = _U32_LE if endian == LITTLE else _U32_BE
    out = bytearray()
    for prefix, value in ((b"\x01\x01o\x00", path), (b"\x02\x01s\x00", interface), (b"\x03\x01s\x00", member),
                          (b"\x04\x01s\x00", error_name)):
        if value is not None:
            _string(out, prefix, value, u32)
    return bytes(out)


def _tail_block(key: tuple) -> bytes:
    """DESTINATION, SIGNATURE, UNIX_FDS (not padded at the end: the header's padding follows)."""
    endian, destination, signature, unix_fds = key
    u32 = _U32_LE if endian == LITTLE else _U32_BE
    out = bytearray()
    if destination is not None:
        _string(out, b"\x06\x01s\x00", destination, u32)
    if signature:
        out += _PAD[:-len(out) & 7]
        data = signature.encode("ascii")
        out += b"\x08\x01g\x00"
        out.append(len(data))
        out += data
        out.append(0)
    if unix_fds:
        out += _PAD[:-len(out) & 7]
        out += b"\x09\x01u\x00"
        out += u32(unix_fds)
    return bytes(out)


def _cached(cache: dict[tuple, bytes], key: tuple, make) -> bytes:
    block = cache.get(key)
    if block is None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        block = cache[key] = make(key)
    return block


def readdressed(h: Header, serial: int, destination: str | None, reply_serial: int | None) -> tuple[bytes, Header]:
    """The header bytes (fixed part, fields, padding) of `h`'s message with a new serial and addresses, and
    the parsed Header of the result (no need to parse it again).

    Keeps type, flags, byte order, PATH, INTERFACE, MEMBER, ERROR_NAME, SIGNATURE and
    UNIX_FDS; sets DESTINATION and REPLY_SERIAL as given (None: absent). There is no
    SENDER: the bus the message goes to stamps its own. Append the original body (`buf[h.body_start:]`) to get the whole message.
    """
    endian = h.endian
    little = endian == LITTLE
    head = _cached(_heads, (endian, h.path, h.interface, h.member, h.error_name), _head_block)
    tail = _cached(_tails, (endian, destination, h.signature, h.unix_fds), _tail_block)
    gap = _PAD[:-len(head) & 7]
    if reply_serial is not None:
        fields = b"".join((head, gap, b"\x05\x01u\x00", (_U32_LE if little else _U32_BE)(reply_serial), tail))
    elif tail:
        fields = b"".join((head, gap, tail))
    else:
        fields = head
    fields_len = len(fields)
    fixed = (_FIXED_LE if little else _FIXED_BE).pack(endian, h.type, h.flags, PROTOCOL_VERSION, h.body_len,
                                                      serial, fields_len)
    data = b"".join((fixed, fields, _PAD[:-fields_len & 7]))
    new = Header()
    new.endian, new.type, new.flags, new.body_len = endian, h.type, h.flags, h.body_len
    new.path, new.interface, new.member, new.error_name = h.path, h.interface, h.member, h.error_name
    new.signature, new.unix_fds = h.signature, h.unix_fds
    new.serial, new.destination, new.reply_serial = serial, destination, reply_serial
    new.fields_len, new.body_start = fields_len, len(data)
    return data, new


__all__ = ["readdressed"]
