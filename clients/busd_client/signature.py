"""Parse D-Bus type signatures into trees of complete types (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

BASIC_CODES = frozenset("ybnqiuxtdsogh")
_ALL_CODES = BASIC_CODES | frozenset("av(){}")
MAX_SIGNATURE_LENGTH = 255
MAX_DEPTH = 32  # per container kind, as the specification allows


@dataclass(frozen=True, slots=True)
class SignatureNode:
    """One complete type: its type code ('a', '(', '{', 'v' or a basic code), its text and its element types."""

    code: str
    text: str
    children: tuple[SignatureNode, ...] = ()


class SignatureError(ValueError):
    """A string is not a valid D-Bus signature."""


def _parse_one(signature: str, start: int, depth: int) -> tuple[SignatureNode, int]:
    if start >= len(signature):
        raise SignatureError(f"signature {signature!r} ends in the middle of a type")
    if depth > 2 * MAX_DEPTH:
        raise SignatureError(f"signature {signature!r} nests containers too deeply")
    code = signature[start]
    if code in BASIC_CODES or code == "v":
        return SignatureNode(code, code), start + 1
    if code == "a":
        element, end = _parse_one(signature, start + 1, depth + 1)
        return SignatureNode("a", signature[start:end], (element,)), end
    if code == "(":
        children = []
        position = start + 1
        while position < len(signature) and signature[position] != ")":
            child, position = _parse_one(signature, position, depth + 1)
            children.append(child)
        if position >= len(signature):
            raise SignatureError(f"signature {signature!r} has an unclosed struct")
        if not children:
            raise SignatureError(f"signature {signature!r} has an empty struct")
        return SignatureNode("(", signature[start:position + 1], tuple(children)), position + 1
    if code == "{":
        if start == 0 or signature[start - 1] != "a":
            raise SignatureError(f"signature {signature!r} has a dict entry outside an array")
        key, position = _parse_one(signature, start + 1, depth + 1)
        if key.code not in BASIC_CODES:
            raise SignatureError(f"signature {signature!r} has a dict key that is not a basic type")
        value, position = _parse_one(signature, position, depth + 1)
        if position >= len(signature) or signature[position] != "}":
            raise SignatureError(f"signature {signature!r} has a dict entry without exactly two types")
        return SignatureNode("{", signature[start:position + 1], (key, value)), position + 1
    if code in _ALL_CODES:
        raise SignatureError(f"signature {signature!r} has an unexpected {code!r}")
    raise SignatureError(f"signature {signature!r} has an unknown type code {code!r}")


@lru_cache(maxsize=1024)
def parse_signature(signature: str) -> tuple[SignatureNode, ...]:
    """The complete types of `signature`, in order; raises SignatureError if it is invalid."""
    if len(signature) > MAX_SIGNATURE_LENGTH:
        raise SignatureError(f"signature is longer than {MAX_SIGNATURE_LENGTH} characters")
    nodes = []
    position = 0
    while position < len(signature):
        node, position = _parse_one(signature, position, 0)
        nodes.append(node)
    return tuple(nodes)


def split_signature(signature: str) -> list[str]:
    """The complete types of `signature` as strings: "a{sv}i" -> ["a{sv}", "i"]."""
    return [node.text for node in parse_signature(signature)]


def is_valid_signature(signature: str) -> bool:
    try:
        parse_signature(signature)
    except SignatureError:
        return False
    return True
