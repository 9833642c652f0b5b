"""busctl's command-line syntax for typed D-Bus values: a signature, then one word per basic value.

Arrays take their element count first, dictionaries their entry count; struct fields follow
one another; a variant takes its own signature, then its value:

    a{sv} 2 name s Alice age u 31      ->  {"name": Variant("s", "Alice"), "age": Variant("u", 31)}
    (ias) 7 2 x y                      ->  [7, ["x", "y"]]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dbus_next.errors import SignatureBodyMismatchError
from dbus_next.signature import SignatureTree, Variant
from dbus_next.validators import is_object_path_valid

from busd.wire import signature as wire_signature
from busd.wire.errors import SignatureError
from busd.wire.signature import TypeNode

from .errors import UsageError

# token: (lowest, highest, what busctl calls it)
INTEGER_TYPES: dict[str, tuple[int, int, str]] = {
    "y": (0, 2**8 - 1, "byte (unsigned 8bit integer)"),
    "n": (-(2**15), 2**15 - 1, "signed 16bit integer"),
    "q": (0, 2**16 - 1, "unsigned 16bit integer"),
    "i": (-(2**31), 2**31 - 1, "signed 32bit integer"),
    "u": (0, 2**32 - 1, "unsigned 32bit integer"),
    "x": (-(2**63), 2**63 - 1, "signed 64bit integer"),
    "t": (0, 2**64 - 1, "unsigned 64bit integer"),
}

# The words systemd's parse_boolean() accepts, compared without case.
TRUE_WORDS = frozenset({"1", "yes", "y", "true", "t", "on"})
FALSE_WORDS = frozenset({"0", "no", "n", "false", "f", "off"})


class _Words:
    """The argument words still to be consumed."""

    def __init__(self, words: Sequence[str]) -> None:
        self._words = list(words)
        self._next = 0

    def take(self) -> str:
        if self._next >= len(self._words):
            raise UsageError("Too few parameters for signature.")
        word = self._words[self._next]
        self._next += 1
        return word

    @property
    def left(self) -> int:
        return len(self._words) - self._next


def parse_signature(signature: str) -> tuple[TypeNode, ...]:
    """The complete types of `signature` (busd.wire's parser), or a usage error saying why it is not one."""
    try:
        return wire_signature.parse_signature(signature)
    except SignatureError as error:
        raise UsageError(f"Invalid signature '{signature}': {error}") from None


def parse_single_type(signature: str) -> TypeNode:
    """The one complete type `signature` must hold (for variants and properties)."""
    types = parse_signature(signature)
    if len(types) != 1:
        raise UsageError(f"Signature '{signature}' must be exactly one complete type.")
    return types[0]


def parse_arguments(signature: str, words: Sequence[str]) -> list[Any]:
    """Turn busctl-style argument words into dbus-next values for `signature`."""
    types = parse_signature(signature)
    remaining = _Words(words)
    values = [parse_value(type_, remaining) for type_ in types]
    if remaining.left:
        raise UsageError("Too many parameters for signature.")
    try:
        # dbus-next's own check of the body it will marshal
        SignatureTree(signature).verify(values)
    except SignatureBodyMismatchError as error:
        raise UsageError(f"Arguments do not match signature '{signature}': {error}") from None
    return values


def parse_value(type_: TypeNode, words: _Words) -> Any:
    """Consume the words for one value of `type_`."""
    token = type_.code
    if token in INTEGER_TYPES:
        return _parse_integer(token, words.take())
    return VALUE_PARSERS[token](type_, words)


def _parse_integer(token: str, word: str) -> int:
    low, high, what = INTEGER_TYPES[token]
    try:
        value = int(word, 0)
    except ValueError:
        value = _c_style_integer(word)
        if value is None:
            raise UsageError(f"Failed to parse '{word}' as {what}: not a number.") from None
    if not low <= value <= high:
        raise UsageError(f"Failed to parse '{word}' as {what}: out of range {low}..{high}.")
    return value


def _c_style_integer(word: str) -> int | None:
    """strtol(word, 0)'s reading of what Python's int(word, 0) refuses: a leading zero means octal."""
    digits = word.lstrip("+-")
    if len(digits) > 1 and digits.startswith("0") and digits.isdigit():
        try:
            value = int(digits, 8)
        except ValueError:
            return None
        return -value if word.startswith("-") else value
    return None


def _parse_boolean(_type: TypeNode, words: _Words) -> bool:
    word = words.take()
    if word.lower() in TRUE_WORDS:
        return True
    if word.lower() in FALSE_WORDS:
        return False
    raise UsageError(f"Failed to parse '{word}' as boolean: use true/false, yes/no, on/off or 1/0.")


def _parse_double(_type: TypeNode, words: _Words) -> float:
    word = words.take()
    try:
        return float(word)
    except ValueError:
        raise UsageError(f"Failed to parse '{word}' as double precision floating point.") from None


def _parse_string(_type: TypeNode, words: _Words) -> str:
    return words.take()


def _parse_object_path(_type: TypeNode, words: _Words) -> str:
    word = words.take()
    if not is_object_path_valid(word):
        raise UsageError(f"'{word}' is not a valid object path (like /org/example/Object).")
    return word


def _parse_signature_value(_type: TypeNode, words: _Words) -> str:
    word = words.take()
    parse_signature(word)
    return word


def _parse_unix_fd(_type: TypeNode, _words: _Words) -> int:
    raise UsageError("UNIX file descriptor arguments (type 'h') are not supported.")


def _parse_array(type_: TypeNode, words: _Words) -> Any:
    count_word = words.take()
    try:
        count = int(count_word, 0)
    except ValueError:
        raise UsageError(f"Failed to parse '{count_word}' as array length: not a number.") from None
    if count < 0:
        raise UsageError(f"Array length '{count_word}' must not be negative.")
    element = type_.children[0]
    if element.code == "{":
        key_type, value_type = element.children
        entries: dict[Any, Any] = {}
        for _ in range(count):
            key = parse_value(key_type, words)
            entries[key] = parse_value(value_type, words)
        return entries
    items = [parse_value(element, words) for _ in range(count)]
    return bytes(items) if element.code == "y" else items


def _parse_struct(type_: TypeNode, words: _Words) -> list[Any]:
    return [parse_value(field, words) for field in type_.children]


def _parse_variant(_type: TypeNode, words: _Words) -> Variant:
    signature = words.take()
    inner = parse_single_type(signature)
    return Variant(signature, parse_value(inner, words))


VALUE_PARSERS: dict[str, Callable[[TypeNode, _Words], Any]] = {
    "b": _parse_boolean,
    "d": _parse_double,
    "s": _parse_string,
    "o": _parse_object_path,
    "g": _parse_signature_value,
    "h": _parse_unix_fd,
    "a": _parse_array,
    "(": _parse_struct,
    "v": _parse_variant,
}
