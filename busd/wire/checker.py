"""Validate a message body against its signature without building values (the bus's per-message check).

A checker walks the data of one complete type and returns the position after
it, raising ProtocolError on anything the specification forbids. Checkers are
compiled once per signature and byte order. Positions are absolute offsets into
the message, whose body starts 8-aligned, so alignment computed from them is
the alignment the specification means.

Speed. The walk costs a few Python calls per element, which a peer can turn
into seconds of stall with one large body of tiny elements. So:
- A variant's signature bytes seen before are a dict lookup, not a parse (a
  bounded cache, keyed on the raw bytes: length, signature, NUL).
- In an array of variants, a variant of a fixed-size type and the run of the
  same type after it are one regular expression match (their bytes are the
  signature, zero padding and any value; booleans 0 or 1).
- Arrays of booleans, fd indexes and structs made only of fixed-size fields
  are checked with strided slices: padding zero, booleans 0 or 1, and (when
  the caller gives a count) fd indexes below UNIX_FDS.
Whenever a fast path sees something wrong it leaves the decision to the walk,
so what is rejected, and the reason given, are the walk's.
"""

from __future__ import annotations

import re
import struct
import sys
from functools import lru_cache
from typing import Callable, NamedTuple

from .errors import ProtocolError, SignatureError
from .names import is_valid_object_path
from .signature import TypeNode, parse_signature, parse_single_type

MAX_ARRAY_LENGTH = 1 << 26  # bytes, per the specification
MAX_NESTING_DEPTH = 64  # containers, variants included, as libdbus counts them

LITTLE = ord("l")
BIG = ord("B")
PREFIXES = {LITTLE: "<", BIG: ">"}
FIXED_FORMATS = {"y": "B", "b": "I", "n": "h", "q": "H", "i": "i", "u": "I",
                 "x": "q", "t": "Q", "d": "d", "h": "I"}
FIXED_SIZES = {"y": 1, "b": 4, "n": 2, "q": 2, "i": 4, "u": 4, "x": 8, "t": 8, "d": 8, "h": 4}
ANY_FD_INDEX = 1 << 32  # an fd count above every possible index: fd indexes are not checked
VARIANT_CACHE_LIMIT = 256  # variant signatures remembered per byte order (peer-chosen keys of <= 257 bytes)

Checker = Callable[[bytes, int, int, int, int], int]  # (buf, pos, end, depth, nfds) -> pos


def _fail(reason: str) -> ProtocolError:
    return ProtocolError(reason)


def _check_padding(buf: bytes, pos: int, aligned: int) -> None:
    if aligned > pos and buf.count(0, pos, aligned) != aligned - pos:
        raise _fail(f"non-zero alignment padding at offset {pos}")


def check_string_bytes(buf: bytes, start: int, stop: int, what: str = "string") -> str:
    """Decode a string's bytes, rejecting embedded NUL and invalid UTF-8."""
    if buf.find(0, start, stop) != -1:
        raise _fail(f"{what} at offset {start} contains a NUL byte")
    try:
        return buf[start:stop].decode()
    except UnicodeDecodeError:
        raise _fail(f"{what} at offset {start} is not valid UTF-8") from None


# ---------------------------------------------------------------- variants

_VARIANT_KINDS: dict[str, dict[bytes, Checker]] = {"<": {}, ">": {}}  # raw signature bytes -> value checker
_BOOLEAN_VALUE = {"<": rb"[\x00\x01]\x00\x00\x00", ">": rb"\x00\x00\x00[\x00\x01]"}


def _learn_variant(buf: bytes, pos: int, end: int, prefix: str) -> Checker:
    """Check the variant signature at `pos` the slow way (raising the walk's errors) and remember it."""
    sig, after = read_signature_at(buf, pos, end)
    try:
        inner = parse_single_type(sig)
    except SignatureError as exc:
        raise _fail(f"variant signature: {exc.reason}") from None
    check = compiled_checker(inner.signature, prefix)
    kinds = _VARIANT_KINDS[prefix]
    if len(kinds) >= VARIANT_CACHE_LIMIT:
        kinds.clear()
    kinds[bytes(buf[pos:after])] = check
    return check


def _variant_checker(prefix: str) -> Checker:
    kinds = _VARIANT_KINDS[prefix]

    def check_variant(buf: bytes, pos: int, end: int, depth: int, nfds: int) -> int:
        if depth >= MAX_NESTING_DEPTH:
            raise _fail(f"values nested deeper than {MAX_NESTING_DEPTH}")
        after = pos + buf[pos] + 2 if pos < end else end + 1
        check = kinds.get(buf[pos:after]) if after <= end else None
        if check is None:
            check = _learn_variant(buf, pos, end, prefix)
        return check(buf, after, end, depth + 1, nfds)
    return check_variant


Matcher = Callable[[bytes, int, int], "re.Match[bytes] | None"]


@lru_cache(maxsize=2)
def _fixed_variant_matchers(prefix: str) -> tuple[Matcher, ...]:
    """For each position modulo 8: a matcher of one variant of a fixed-size type (fd indexes aside,
    they are checked against the count) and the run of variants of the same type after it.

    A variant of a fixed-size type is its signature (1, code, NUL), zero padding up to the
    value's alignment, which depends on where it starts, and the value. After one, the position
    is aligned for the next, so a run of the same type repeats one pattern: it is possessive
    (*+), never backtracks, and goes at the speed of the regular expression engine.
    """
    matchers = []
    for phase in range(8):
        alternatives = []
        for code in "ynqiuxtdb":
            size = FIXED_SIZES[code]
            key = b"\x01" + code.encode() + b"\0"
            value = _BOOLEAN_VALUE[prefix] if code == "b" else b".{%d}" % size
            first_pad = -(phase + len(key)) % size
            run = b"(?:" + re.escape(key) + b"\0" * (-len(key) % size) + value + b")*+"
            alternatives.append(re.escape(key) + b"\0" * first_pad + value + run)
        matchers.append(re.compile(b"|".join(alternatives), re.DOTALL).match)
    return tuple(matchers)


def _variant_items_checker(prefix: str) -> Checker:
    """The elements of an array of variants, `depth` being theirs; runs of one fixed type in one match."""
    kinds = _VARIANT_KINDS[prefix]
    fixed = _fixed_variant_matchers(prefix)

    def check_variants(buf: bytes, p: int, stop: int, depth: int, nfds: int) -> int:
        if p < stop and depth >= MAX_NESTING_DEPTH:
            raise _fail(f"values nested deeper than {MAX_NESTING_DEPTH}")
        while p < stop:
            run = fixed[p & 7](buf, p, stop)
            if run is not None:
                p = run.end()
                continue
            after = p + buf[p] + 2
            check = kinds.get(buf[p:after]) if after <= stop else None
            if check is None:
                check = _learn_variant(buf, p, stop, prefix)
            p = check(buf, after, stop, depth + 1, nfds)
        return p
    return check_variants


# ---------------------------------------------------------------- arrays of fixed-layout elements

class _Layout(NamedTuple):
    """Where the bytes of an element made only of fixed-size values are, from its (aligned) start."""

    span: int  # bytes from the start to the end of the last value
    stride: int  # from one element's start to the next's
    zeros: tuple[int, ...]  # padding offsets, trailing padding included
    booleans: tuple[int, ...]
    fds: tuple[int, ...]
    structs: int  # struct levels, for the nesting limit


def _layout(node: TypeNode) -> _Layout | None:
    zeros: list[int] = []
    booleans: list[int] = []
    fds: list[int] = []

    def place(n: TypeNode, offset: int) -> tuple[int, int] | None:  # (end, struct levels)
        size = FIXED_SIZES.get(n.code)
        if size is not None:
            aligned = (offset + size - 1) & ~(size - 1)
            zeros.extend(range(offset, aligned))
            if n.code == "b":
                booleans.append(aligned)
            elif n.code == "h":
                fds.append(aligned)
            return aligned + size, 0
        if n.code not in "({":
            return None  # a string, array or variant: elements differ in size
        aligned = (offset + 7) & ~7
        zeros.extend(range(offset, aligned))
        offset, levels = aligned, 0
        for child in n.children:
            placed = place(child, offset)
            if placed is None:
                return None
            offset, levels = placed[0], max(levels, placed[1])
        return offset, levels + 1

    placed = place(node, 0)
    if placed is None:
        return None
    span, structs = placed
    stride = (span + node.alignment - 1) & ~(node.alignment - 1)
    zeros.extend(range(span, stride))
    return _Layout(span, stride, tuple(zeros), tuple(booleans), tuple(fds), structs)


_NATIVE = "<" if sys.byteorder == "little" else ">"


def _layout_checks(layout: _Layout, prefix: str) -> Callable[[bytes, int, int, int], bool]:
    """Whether buf[start:stop] is well-formed elements of `layout` (False: let the walk decide)."""
    value_byte = 0 if prefix == "<" else 3  # the byte of a boolean that may be 1
    boolean_zeros = tuple(b + i for b in layout.booleans for i in range(4) if i != value_byte)
    zeros = layout.zeros + boolean_zeros
    boolean_values = tuple(b + value_byte for b in layout.booleans)
    span, stride, fds = layout.span, layout.stride, layout.fds
    native = prefix == _NATIVE

    def well_formed(buf: bytes, start: int, stop: int, nfds: int) -> bool:
        if (stop - start - span) % stride:
            return False
        for offset in zeros:
            column = buf[start + offset:stop:stride]
            if column.count(0) != len(column):
                return False
        for offset in boolean_values:
            if buf[start + offset:stop:stride].translate(None, b"\0\1"):
                return False
        if fds and nfds < ANY_FD_INDEX:
            if stride != 4 or not native:
                return False  # rare: the walk checks each index
            return max(memoryview(buf[start:stop]).cast("I")) < nfds
        return True
    return well_formed


# ---------------------------------------------------------------- compiling checkers

def _checker(node: TypeNode, prefix: str) -> Checker:
    code = node.code
    if code in FIXED_FORMATS:
        size = FIXED_SIZES[code]
        mask = size - 1
        unpack_from = struct.Struct(prefix + FIXED_FORMATS[code]).unpack_from
        if code == "b":
            def check_bool(buf: bytes, pos: int, end: int, depth: int, nfds: int) -> int:
                aligned = (pos + 3) & ~3
                if aligned + 4 > end:
                    raise _fail("boolean runs past the end of its container")
                _check_padding(buf, pos, aligned)
                if unpack_from(buf, aligned)[0] > 1:
                    raise _fail(f"boolean at offset {aligned} is neither 0 nor 1")
                return aligned + 4
            return check_bool
        if code == "h":
            def check_fd(buf: bytes, pos: int, end: int, depth: int, nfds: int) -> int:
                aligned = (pos + 3) & ~3
                if aligned + 4 > end:
                    raise _fail("fd index runs past the end of its container")
                _check_padding(buf, pos, aligned)
                if unpack_from(buf, aligned)[0] >= nfds:
                    raise _fail(f"fd index at offset {aligned} is not below UNIX_FDS ({nfds})")
                return aligned + 4
            return check_fd

        def check_fixed(buf: bytes, pos: int, end: int, depth: int, nfds: int) -> int:
            aligned = (pos + mask) & ~mask
            if aligned + size > end:
                raise _fail(f"value of type {code!r} runs past the end of its container")
            if aligned != pos:
                _check_padding(buf, pos, aligned)
            return aligned + size
        return check_fixed
    if code in "so":
        u32 = struct.Struct(prefix + "I").unpack_from
        is_path = code == "o"

        def check_string(buf: bytes, pos: int, end: int, depth: int, nfds: int) -> int:
            aligned = (pos + 3) & ~3
            if aligned + 4 > end:
                raise _fail("string length runs past the end of its container")
            if aligned != pos:
                _check_padding(buf, pos, aligned)
            n = u32(buf, aligned)[0]
            start = aligned + 4
            stop = start + n
            if stop >= end:
                raise _fail(f"string at offset {aligned} runs past the end of its container")
            if buf[stop] != 0:
                raise _fail(f"string at offset {aligned} is not NUL-terminated")
            text = check_string_bytes(buf, start, stop)
            if is_path and not is_valid_object_path(text):
                raise _fail(f"invalid object path {text!r}")
            return stop + 1
        return check_string
    if code == "g":
        def check_sig(buf: bytes, pos: int, end: int, depth: int, nfds: int) -> int:
            read_signature_at(buf, pos, end)
            return pos + buf[pos] + 2
        return check_sig
    if code == "v":
        return _variant_checker(prefix)
    if code == "a":
        return _array_checker(node, prefix)
    if code in "({":
        field_checkers = [_checker(child, prefix) for child in node.children]

        def check_struct(buf: bytes, pos: int, end: int, depth: int, nfds: int) -> int:
            if depth >= MAX_NESTING_DEPTH:
                raise _fail(f"values nested deeper than {MAX_NESTING_DEPTH}")
            aligned = (pos + 7) & ~7
            if aligned > end:
                raise _fail("struct padding runs past the end of its container")
            _check_padding(buf, pos, aligned)
            pos = aligned
            for c in field_checkers:
                pos = c(buf, pos, end, depth + 1, nfds)
            return pos
        return check_struct
    raise SignatureError(f"cannot check type {node.signature!r}")


def _array_checker(node: TypeNode, prefix: str) -> Checker:
    elem = node.children[0]
    u32 = struct.Struct(prefix + "I").unpack_from
    ea = elem.alignment - 1
    fixed = elem.fixed_size if elem.code not in "bh" else 0
    item_checker = None if fixed else _checker(elem, prefix)
    items_checker = _variant_items_checker(prefix) if elem.code == "v" else None
    layout = None if fixed else _layout(elem)
    well_formed = _layout_checks(layout, prefix) if layout is not None else None
    structs = layout.structs if layout is not None else 0
    # Like libdbus, only elements of variable size count as one level deeper.
    nests = not elem.fixed_size

    def check_array(buf: bytes, pos: int, end: int, depth: int, nfds: int) -> int:
        aligned = (pos + 3) & ~3
        if aligned + 4 > end:
            raise _fail("array length runs past the end of its container")
        if aligned != pos:
            _check_padding(buf, pos, aligned)
        n = u32(buf, aligned)[0]
        if n > MAX_ARRAY_LENGTH:
            raise _fail(f"array at offset {aligned} is {n} bytes, the limit is {MAX_ARRAY_LENGTH}")
        start = (aligned + 4 + ea) & ~ea
        if start > end:
            raise _fail("array padding runs past the end of its container")
        _check_padding(buf, aligned + 4, start)
        stop = start + n
        if stop > end:
            raise _fail(f"array at offset {aligned} runs past the end of its container")
        if fixed:
            if n % fixed:
                raise _fail(f"array at offset {aligned} is not a whole number of elements")
            return stop
        if nests and n and depth >= MAX_NESTING_DEPTH:
            raise _fail(f"values nested deeper than {MAX_NESTING_DEPTH}")
        if not n:
            return stop
        if well_formed is not None and depth + structs < MAX_NESTING_DEPTH and well_formed(buf, start, stop, nfds):
            return stop
        if items_checker is not None:
            p = items_checker(buf, start, stop, depth + 1, nfds)
        else:
            p = start
            while p < stop:
                p = item_checker(buf, p, stop, depth + 1, nfds)  # type: ignore[misc]
        if p != stop:
            raise _fail(f"array at offset {aligned} ends inside an element")
        return stop
    return check_array


def read_signature_at(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    """Read a marshalled signature (type 'g'), validating it; returns it and the next position."""
    if pos >= end:
        raise _fail("signature runs past the end of its container")
    n = buf[pos]
    stop = pos + 1 + n
    if stop >= end:
        raise _fail(f"signature at offset {pos} runs past the end of its container")
    if buf[stop] != 0:
        raise _fail(f"signature at offset {pos} is not NUL-terminated")
    try:
        sig = buf[pos + 1:stop].decode("ascii")
    except UnicodeDecodeError:
        raise _fail(f"signature at offset {pos} is not ASCII") from None
    try:
        parse_signature(sig)
    except SignatureError as exc:
        raise _fail(exc.reason) from None
    return sig, stop + 1


@lru_cache(maxsize=512)
def compiled_checker(single_type: str, prefix: str = "<") -> Checker:
    """The checker of one complete type; its callers pass the message as bytes."""
    return _checker(parse_single_type(single_type), prefix)


@lru_cache(maxsize=512)
def _body_checkers(signature: str, prefix: str) -> tuple[Checker, ...]:
    return tuple(compiled_checker(node.signature, prefix) for node in parse_signature(signature))


@lru_cache(maxsize=512)
def checked_in_constant_steps(signature: str) -> bool:
    """Whether checking a body of `signature` takes the same few Python steps at any size.

    True when it holds only fixed-size values and arrays of them (structs of those
    included): an array of fixed-size elements is one length check and, for booleans
    and fds, strided slices. Strings, variants and arrays of anything else are walked
    element by element, which a transport may rather do off its loop for a large body.
    """
    try:
        nodes = parse_signature(signature)
    except SignatureError:
        return False  # the check itself reports it, wherever it runs
    return all(_constant_steps(node) for node in nodes)


def _constant_steps(node: TypeNode) -> bool:
    if node.fixed_size:
        return True
    if node.code == "a":
        return bool(node.children[0].fixed_size)
    if node.code == "(":
        return all(_constant_steps(child) for child in node.children)
    return False


def check_body(signature: str, buf: bytes, start: int, end: int, endian: int = LITTLE, nfds: int = 0) -> None:
    """Validate that buf[start:end] is exactly one value per complete type of `signature`."""
    try:
        checkers = _body_checkers(signature, PREFIXES[endian])
    except SignatureError as exc:
        raise ProtocolError(f"invalid body signature: {exc.reason}") from None
    if type(buf) is not bytes:
        buf = bytes(buf)  # the fast paths slice and hash
    pos = start
    for check in checkers:
        pos = check(buf, pos, end, 0, nfds)
    if pos != end:
        raise ProtocolError(f"body has {end - pos} bytes left over after signature {signature!r}")


__all__ = [
    "ANY_FD_INDEX", "BIG", "Checker", "LITTLE", "MAX_ARRAY_LENGTH", "MAX_NESTING_DEPTH", "check_body",
    "check_string_bytes", "checked_in_constant_steps", "compiled_checker", "read_signature_at",
]
