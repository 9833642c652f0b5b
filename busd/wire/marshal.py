"""Marshal and unmarshal D-Bus values (validating bodies without building values is checker.py's).

Python representation of D-Bus types:

    y n q i u x t h   int            (h is an index into the message's fd list)
    b                 bool
    d                 float
    s o g             str
    ay                bytes (bytes, bytearray, memoryview or a list of ints when marshalling)
    a<T>              list
    a{KV}             dict
    (...)             tuple
    v                 Variant(signature, value)

Every signature is compiled once into closures (a writer and a reader; checker.py
compiles the checker) and cached per byte order, so the per-message cost is the walk over the data only.
Positions are absolute offsets into the message, whose body starts 8-aligned, so
alignment computed from them is the alignment the specification means.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any, Callable, NamedTuple

from .checker import (
    BIG, FIXED_FORMATS as _FIXED_FORMATS, FIXED_SIZES as _FIXED_SIZES, LITTLE, MAX_ARRAY_LENGTH,
    MAX_NESTING_DEPTH, PREFIXES as _PREFIX, check_body, check_string_bytes, compiled_checker, read_signature_at,
)
from .errors import MarshalError, ProtocolError, SignatureError
from .names import is_valid_object_path
from .signature import TypeNode, parse_signature, parse_single_type

_PAD = b"\0" * 8

class Variant(NamedTuple):
    """A value together with its D-Bus type signature (one complete type)."""

    signature: str
    value: Any


# ---------------------------------------------------------------- writers

Writer = Callable[[bytearray, Any], None]


def _pad(out: bytearray, alignment: int) -> None:
    gap = -len(out) % alignment
    if gap:
        out += _PAD[:gap]


def _writer(node: TypeNode, prefix: str) -> Writer:
    code = node.code
    if code in _FIXED_FORMATS:
        st = struct.Struct(prefix + _FIXED_FORMATS[code])
        size = _FIXED_SIZES[code]
        pack = st.pack

        def write_fixed(out: bytearray, value: Any) -> None:
            gap = -len(out) % size
            if gap:
                out += _PAD[:gap]
            try:
                out += pack(value)
            except struct.error as exc:
                raise MarshalError(f"{value!r} does not fit D-Bus type {code!r}: {exc}") from None
        if code == "b":
            def write_bool(out: bytearray, value: Any) -> None:
                write_fixed(out, 1 if value else 0)
            return write_bool
        return write_fixed
    if code in "so":
        u32 = struct.Struct(prefix + "I").pack
        is_path = code == "o"

        def write_string(out: bytearray, value: Any) -> None:
            if not isinstance(value, str):
                raise MarshalError(f"{value!r} is not a string (D-Bus type {code!r})")
            if is_path and not is_valid_object_path(value):
                raise MarshalError(f"{value!r} is not a valid object path")
            try:
                data = value.encode()
            except UnicodeEncodeError as exc:
                raise MarshalError(f"{value!r} cannot be encoded as UTF-8: {exc.reason}") from None
            if b"\0" in data:
                raise MarshalError("D-Bus strings may not contain NUL")
            _pad(out, 4)
            out += u32(len(data))
            out += data
            out.append(0)
        return write_string
    if code == "g":
        def write_signature(out: bytearray, value: Any) -> None:
            try:
                parse_signature(value)
            except (SignatureError, TypeError) as exc:
                raise MarshalError(str(exc)) from None
            data = value.encode()
            out.append(len(data))
            out += data
            out.append(0)
        return write_signature
    if code == "v":
        sig_writer = _writer(TypeNode("g", "g"), prefix)

        def write_variant(out: bytearray, value: Any) -> None:
            if not isinstance(value, Variant):
                raise MarshalError(f"{value!r} is not a Variant")
            try:
                inner = parse_single_type(value.signature)
            except SignatureError as exc:
                raise MarshalError(str(exc)) from None
            sig_writer(out, value.signature)
            compiled_writer(inner.signature, prefix)(out, value.value)
        return write_variant
    if code == "a":
        elem = node.children[0]
        u32_into = struct.Struct(prefix + "I").pack_into
        elem_align = elem.alignment
        if elem.code == "{":
            key_writer = _writer(elem.children[0], prefix)
            value_writer = _writer(elem.children[1], prefix)

            def write_items(out: bytearray, value: Any) -> None:
                if not isinstance(value, dict):
                    raise MarshalError(f"{value!r} is not a dict (D-Bus type {node.signature!r})")
                for k, v in value.items():
                    _pad(out, 8)
                    key_writer(out, k)
                    value_writer(out, v)
            fill = write_items
        elif elem.code == "y":
            def write_bytes(out: bytearray, value: Any) -> None:
                if not isinstance(value, (bytes, bytearray, memoryview, list, tuple)):
                    raise MarshalError(f"{value!r} is not a byte array")
                try:
                    out += bytes(value)
                except (TypeError, ValueError) as exc:
                    raise MarshalError(f"{value!r} is not a byte array: {exc}") from None
            fill = write_bytes
        else:
            item_writer = _writer(elem, prefix)

            def write_list(out: bytearray, value: Any) -> None:
                if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
                    raise MarshalError(f"{value!r} is not a list (D-Bus type {node.signature!r})")
                for item in value:
                    item_writer(out, item)
            fill = write_list

        def write_array(out: bytearray, value: Any) -> None:
            _pad(out, 4)
            length_at = len(out)
            out += b"\0\0\0\0"
            _pad(out, elem_align)
            start = len(out)
            fill(out, value)
            length = len(out) - start
            if length > MAX_ARRAY_LENGTH:
                raise MarshalError(f"array of {length} bytes exceeds the {MAX_ARRAY_LENGTH}-byte limit")
            u32_into(out, length_at, length)
        return write_array
    if code == "(":
        field_writers = [_writer(child, prefix) for child in node.children]
        count = len(field_writers)

        def write_struct(out: bytearray, value: Any) -> None:
            if not isinstance(value, (tuple, list)) or len(value) != count:
                raise MarshalError(f"{value!r} is not a {count}-tuple (D-Bus type {node.signature!r})")
            _pad(out, 8)
            for w, v in zip(field_writers, value):
                w(out, v)
        return write_struct
    raise MarshalError(f"cannot marshal type {node.signature!r}")


@lru_cache(maxsize=512)
def compiled_writer(signature: str, prefix: str = "<") -> Writer:
    """A function that appends values of a whole signature (a sequence) to a bytearray."""
    writers = [_writer(node, prefix) for node in parse_signature(signature)]
    if len(writers) == 1:
        return writers[0]

    def write_sequence(out: bytearray, values: Any) -> None:
        if len(values) != len(writers):
            raise MarshalError(f"signature {signature!r} needs {len(writers)} values, got {len(values)}")
        for w, v in zip(writers, values):
            w(out, v)
    return write_sequence


@lru_cache(maxsize=512)
def _body_writers(signature: str, prefix: str) -> tuple[Writer, ...]:
    return tuple(compiled_writer(node.signature, prefix) for node in parse_signature(signature))


_U32 = {LITTLE: struct.Struct("<I").pack, BIG: struct.Struct(">I").pack}


def _marshal_strings(values: list | tuple, u32: Callable[[int], bytes]) -> bytes | None:
    """A body of strings only (most of the bus's own signals and replies), or None for anything the general
    writers must look at (a value that is no str, holds NUL or cannot be encoded: they say what is wrong)."""
    parts: list[bytes] = []
    pos = 0
    for value in values:
        if type(value) is not str:
            return None
        try:
            data = value.encode()
        except UnicodeEncodeError:
            return None
        if b"\0" in data:
            return None
        gap = -pos & 3
        parts += (_PAD[:gap], u32(len(data)), data, b"\0")
        pos += gap + len(data) + 5
    return b"".join(parts)


def marshal_body(signature: str, values: list | tuple, endian: int = LITTLE) -> bytes:
    """Marshal `values` (one per complete type in `signature`) into a message body."""
    if not signature.strip("s") and len(values) == len(signature):
        body = _marshal_strings(values, _U32[endian])
        if body is not None:
            return body
    writers = _body_writers(signature, _PREFIX[endian])  # one lookup per body, not a parse and one per value
    if len(values) != len(writers):
        raise MarshalError(f"signature {signature!r} needs {len(writers)} values, got {len(values)}")
    out = bytearray()
    for write, value in zip(writers, values):
        write(out, value)
    return bytes(out)


# ---------------------------------------------------------------- readers
# Readers trust their input: they run on bodies the checker accepted.

Reader = Callable[[bytes, int], tuple[Any, int]]


def _reader(node: TypeNode, prefix: str) -> Reader:
    code = node.code
    if code in _FIXED_FORMATS:
        size = _FIXED_SIZES[code]
        unpack_from = struct.Struct(prefix + _FIXED_FORMATS[code]).unpack_from
        mask = size - 1
        if code == "b":
            def read_bool(buf: bytes, pos: int) -> tuple[Any, int]:
                pos = (pos + 3) & ~3
                return unpack_from(buf, pos)[0] != 0, pos + 4
            return read_bool

        def read_fixed(buf: bytes, pos: int) -> tuple[Any, int]:
            pos = (pos + mask) & ~mask
            return unpack_from(buf, pos)[0], pos + size
        return read_fixed
    if code in "so":
        u32 = struct.Struct(prefix + "I").unpack_from

        def read_string(buf: bytes, pos: int) -> tuple[Any, int]:
            pos = (pos + 3) & ~3
            n = u32(buf, pos)[0]
            start = pos + 4
            return buf[start:start + n].decode(), start + n + 1
        return read_string
    if code == "g":
        def read_signature(buf: bytes, pos: int) -> tuple[Any, int]:
            n = buf[pos]
            return buf[pos + 1:pos + 1 + n].decode("ascii"), pos + n + 2
        return read_signature
    if code == "v":
        def read_variant(buf: bytes, pos: int) -> tuple[Any, int]:
            n = buf[pos]
            sig = buf[pos + 1:pos + 1 + n].decode("ascii")
            value, pos = compiled_reader(sig, prefix)(buf, pos + n + 2)
            return Variant(sig, value), pos
        return read_variant
    if code == "a":
        elem = node.children[0]
        u32 = struct.Struct(prefix + "I").unpack_from
        ea = elem.alignment - 1
        if elem.code == "y":
            def read_bytes(buf: bytes, pos: int) -> tuple[Any, int]:
                pos = (pos + 3) & ~3
                n = u32(buf, pos)[0]
                return bytes(buf[pos + 4:pos + 4 + n]), pos + 4 + n
            return read_bytes
        if elem.code == "{":
            key_reader = _reader(elem.children[0], prefix)
            value_reader = _reader(elem.children[1], prefix)

            def read_dict(buf: bytes, pos: int) -> tuple[Any, int]:
                pos = (pos + 3) & ~3
                n = u32(buf, pos)[0]
                pos = (pos + 4 + 7) & ~7
                end = pos + n
                result = {}
                while pos < end:
                    pos = (pos + 7) & ~7
                    k, pos = key_reader(buf, pos)
                    v, pos = value_reader(buf, pos)
                    result[k] = v
                return result, end
            return read_dict
        item_reader = _reader(elem, prefix)

        def read_list(buf: bytes, pos: int) -> tuple[Any, int]:
            pos = (pos + 3) & ~3
            n = u32(buf, pos)[0]
            pos = (pos + 4 + ea) & ~ea
            end = pos + n
            result = []
            while pos < end:
                item, pos = item_reader(buf, pos)
                result.append(item)
            return result, end
        return read_list
    if code in "({":
        field_readers = [_reader(child, prefix) for child in node.children]

        def read_struct(buf: bytes, pos: int) -> tuple[Any, int]:
            pos = (pos + 7) & ~7
            values = []
            for r in field_readers:
                v, pos = r(buf, pos)
                values.append(v)
            return tuple(values), pos
        return read_struct
    raise MarshalError(f"cannot unmarshal type {node.signature!r}")


@lru_cache(maxsize=512)
def compiled_reader(single_type: str, prefix: str = "<") -> Reader:
    return _reader(parse_single_type(single_type), prefix)


def unmarshal_body(signature: str, buf: bytes, start: int, endian: int = LITTLE) -> list[Any]:
    """Read every value of a body that starts at `start` in `buf` (a validated message)."""
    prefix = _PREFIX[endian]
    values = []
    pos = start
    try:
        for node in parse_signature(signature):
            value, pos = compiled_reader(node.signature, prefix)(buf, pos)
            values.append(value)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"body does not match signature {signature!r}: {exc}") from None
    except RecursionError:
        # Only an unchecked body can nest variants this deep; check_body stops at 64.
        raise ProtocolError(f"body of signature {signature!r} nests variants too deeply") from None
    return values


def read_body(buf: bytes, h: Any) -> list[Any]:
    """The body's values of the message `buf` whose header is `h` (a wire.message.Header): only for messages
    the bus itself must understand."""
    if not h.signature:
        return []
    return unmarshal_body(h.signature, buf, h.body_start, h.endian)


__all__ = [
    "BIG", "LITTLE", "MAX_ARRAY_LENGTH", "MAX_NESTING_DEPTH", "Variant", "check_body", "check_string_bytes",
    "compiled_checker", "compiled_reader", "compiled_writer", "marshal_body", "read_body", "read_signature_at",
    "unmarshal_body",
]
