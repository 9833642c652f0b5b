"""A validated body's top-level arguments, each decoded only when asked for.

Match rules with argN filters look at one or two leading string arguments of
messages that may carry megabytes after them. `BodyArguments` is a read-only
sequence over the body: `args[i]` decodes argument i alone, after skipping
arguments 0..i-1 by their sizes and alignments, building no value for them.
Skipping costs at most one step per type in the signature (an array is passed
over by its length, whatever it holds), so it never depends on the body's size.
Like the readers in marshal.py, skippers trust their input: the body was
checked against its signature when the message arrived.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Callable, overload

from .marshal import LITTLE, compiled_reader
from .signature import TypeNode, parse_signature, parse_single_type

Skipper = Callable[[bytes, int], int]  # (buf, pos) -> position after the value


def _skipper(node: TypeNode, prefix: str) -> Skipper:
    code = node.code
    size = node.fixed_size
    if size:
        mask = node.alignment - 1
        return lambda buf, pos: ((pos + mask) & ~mask) + size
    if code in "so":
        u32 = struct.Struct(prefix + "I").unpack_from

        def skip_string(buf: bytes, pos: int) -> int:
            pos = (pos + 3) & ~3
            return pos + 4 + u32(buf, pos)[0] + 1
        return skip_string
    if code == "g":
        return lambda buf, pos: pos + buf[pos] + 2
    if code == "v":
        def skip_variant(buf: bytes, pos: int) -> int:
            n = buf[pos]
            inner = buf[pos + 1:pos + 1 + n].decode("ascii")
            return compiled_skipper(inner, prefix)(buf, pos + n + 2)
        return skip_variant
    if code == "a":
        u32 = struct.Struct(prefix + "I").unpack_from
        ea = node.children[0].alignment - 1

        def skip_array(buf: bytes, pos: int) -> int:
            pos = (pos + 3) & ~3
            n = u32(buf, pos)[0]
            return ((pos + 4 + ea) & ~ea) + n
        return skip_array
    fields = [_skipper(child, prefix) for child in node.children]  # '(' or '{'

    def skip_struct(buf: bytes, pos: int) -> int:
        pos = (pos + 7) & ~7
        for skip in fields:
            pos = skip(buf, pos)
        return pos
    return skip_struct


@lru_cache(maxsize=512)
def compiled_skipper(single_type: str, prefix: str = "<") -> Skipper:
    """A function that returns the position after a value of `single_type` starting at a position."""
    return _skipper(parse_single_type(single_type), prefix)


@lru_cache(maxsize=1024)
def _top_level_types(signature: str) -> tuple[str, ...]:
    return tuple(node.signature for node in parse_signature(signature))


class BodyArguments(Sequence[Any]):
    """The top-level arguments of a body that was checked against `signature`, decoded on demand.

    `type_of(i)` is argument i's complete type; `args[i]` its value, decoded
    alone. Decoded values and the positions found on the way are kept, so asking
    again, or for a later argument, does not walk the body twice.
    """

    __slots__ = ("_buf", "_types", "_prefix", "_starts", "_values")

    def __init__(self, signature: str, buf: bytes, start: int, endian: int = LITTLE):
        self._buf = buf
        self._types = _top_level_types(signature)
        self._prefix = "<" if endian == LITTLE else ">"
        self._starts = [start]  # where arguments 0, 1, ... begin, as far as known
        self._values: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._types)

    def type_of(self, index: int) -> str:
        """The complete type (signature) of argument `index`."""
        return self._types[index]

    def _start_of(self, index: int) -> int:
        starts = self._starts
        while len(starts) <= index:
            known = len(starts) - 1
            starts.append(compiled_skipper(self._types[known], self._prefix)(self._buf, starts[known]))
        return starts[index]

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self._types)
        if not 0 <= index < len(self._types):
            raise IndexError("body argument index out of range")
        try:
            return self._values[index]
        except KeyError:
            pass
        value, _end = compiled_reader(self._types[index], self._prefix)(self._buf, self._start_of(index))
        self._values[index] = value
        return value


def body_arguments(buf: bytes, h: Any) -> BodyArguments:
    """The arguments of the message `buf` whose header is `h` (a wire.message.Header), each decoded only when
    indexed (for match rules' argN filters)."""
    return BodyArguments(h.signature, buf, h.body_start, h.endian)


__all__ = ["BodyArguments", "body_arguments", "compiled_skipper"]
