"""D-Bus type signatures: validation and splitting into complete types.

A signature is parsed into a tree of `TypeNode`s. Parsing is cached, because a
bus sees the same few dozen signatures over and over.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .errors import SignatureError

MAX_SIGNATURE_LENGTH = 255
MAX_ARRAY_DEPTH = 32
MAX_STRUCT_DEPTH = 32

# Basic type codes with (alignment, fixed size or 0 for strings).
BASIC_TYPES: dict[str, tuple[int, int]] = {
    "y": (1, 1), "b": (4, 4), "n": (2, 2), "q": (2, 2), "i": (4, 4), "u": (4, 4),
    "x": (8, 8), "t": (8, 8), "d": (8, 8), "h": (4, 4),
    "s": (4, 0), "o": (4, 0), "g": (1, 0),
}
FIXED_TYPES = frozenset(c for c, (_, size) in BASIC_TYPES.items() if size)
CONTAINER_ALIGNMENT = {"a": 4, "(": 8, "{": 8, "v": 1}


@dataclass(frozen=True, slots=True)
class TypeNode:
    """One complete type: `code` is its first character; containers have `children`."""

    code: str
    signature: str
    children: tuple["TypeNode", ...] = ()

    @property
    def alignment(self) -> int:
        basic = BASIC_TYPES.get(self.code)
        return basic[0] if basic else CONTAINER_ALIGNMENT[self.code]

    @property
    def fixed_size(self) -> int:
        """Size in bytes when every value of this type has the same size, else 0."""
        basic = BASIC_TYPES.get(self.code)
        return basic[1] if basic else 0


class _Parser:
    __slots__ = ("sig", "pos")

    def __init__(self, sig: str):
        self.sig = sig
        self.pos = 0

    def fail(self, what: str) -> SignatureError:
        return SignatureError(f"invalid signature {self.sig!r} at position {self.pos}: {what}")

    def parse_one(self, array_depth: int, struct_depth: int, in_array: bool) -> TypeNode:
        sig = self.sig
        if self.pos >= len(sig):
            raise self.fail("a complete type was expected but the signature ended")
        start = self.pos
        code = sig[start]
        if code in BASIC_TYPES or code == "v":
            self.pos += 1
            return TypeNode(code, code)
        if code == "a":
            if array_depth >= MAX_ARRAY_DEPTH:
                raise self.fail(f"arrays nested deeper than {MAX_ARRAY_DEPTH}")
            self.pos += 1
            elem = self.parse_one(array_depth + 1, struct_depth, True)
            return TypeNode("a", sig[start:self.pos], (elem,))
        if code == "(":
            if struct_depth >= MAX_STRUCT_DEPTH:
                raise self.fail(f"structs nested deeper than {MAX_STRUCT_DEPTH}")
            self.pos += 1
            fields = []
            while True:
                if self.pos >= len(sig):
                    raise self.fail("struct is not closed with ')'")
                if sig[self.pos] == ")":
                    break
                fields.append(self.parse_one(array_depth, struct_depth + 1, False))
            if not fields:
                raise self.fail("a struct must have at least one field")
            self.pos += 1
            return TypeNode("(", sig[start:self.pos], tuple(fields))
        if code == "{":
            if not in_array:
                raise self.fail("a dict entry may only appear directly inside an array")
            # Dict entries do not count as structs (libdbus counts them apart); each
            # follows an 'a', so the array limit already bounds their nesting.
            self.pos += 1
            if self.pos >= len(sig):
                raise self.fail("dict entry is not closed with '}'")
            if sig[self.pos] not in BASIC_TYPES:
                raise self.fail("a dict entry key must be a basic type")
            key = self.parse_one(array_depth, struct_depth, False)
            if self.pos >= len(sig) or sig[self.pos] == "}":
                raise self.fail("a dict entry needs a key and a value")
            value = self.parse_one(array_depth, struct_depth, False)
            if self.pos >= len(sig) or sig[self.pos] != "}":
                raise self.fail("a dict entry has exactly two fields and ends with '}'")
            self.pos += 1
            return TypeNode("{", sig[start:self.pos], (key, value))
        if code in ")}":
            raise self.fail(f"unexpected {code!r}")
        raise self.fail(f"unknown type code {code!r}")


@lru_cache(maxsize=1024)
def parse_signature(sig: str) -> tuple[TypeNode, ...]:
    """Split a signature into complete types, validating it; raises SignatureError."""
    if len(sig) > MAX_SIGNATURE_LENGTH:
        raise SignatureError(f"signature is {len(sig)} characters long, the limit is {MAX_SIGNATURE_LENGTH}")
    parser = _Parser(sig)
    types = []
    while parser.pos < len(sig):
        types.append(parser.parse_one(0, 0, False))
    return tuple(types)


def parse_single_type(sig: str) -> TypeNode:
    """Parse a signature that must hold exactly one complete type (a variant's)."""
    types = parse_signature(sig)
    if len(types) != 1:
        raise SignatureError(f"signature {sig!r} must be exactly one complete type, it has {len(types)}")
    return types[0]


def is_valid_signature(sig: str) -> bool:
    try:
        parse_signature(sig)
    except SignatureError:
        return False
    return True
