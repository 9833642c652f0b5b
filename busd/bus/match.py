"""Match rules (AddMatch/RemoveMatch): parsing rule text, writing it back, and deciding whether a message matches.

Parsing follows dbus-daemon's bus/signals.c to the letter, including its quirks:
only the first 16 key=value pairs are read, argument numbers are read like C's
strtoul(..., 0) (so ``arg010`` is arg 8), and an empty rule matches everything.
The index that finds a message's recipients among all rules is match_index.MatchIndex.

A rule matches a message addressed to someone else only if it says ``eavesdrop='true'``.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from enum import Enum
from functools import lru_cache
from typing import Any, NamedTuple

from busd.wire import names
from busd.wire.signature import SignatureError, parse_signature

from . import errors

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
MESSAGE_TYPES: dict[str, int] = {
    "method_call": METHOD_CALL, "method_return": METHOD_RETURN, "error": ERROR, "signal": SIGNAL,
}
MESSAGE_TYPE_NAMES: dict[int, str] = {number: name for name, number in MESSAGE_TYPES.items()}

MAX_RULE_LENGTH = 1024  # bytes, DBUS_MAXIMUM_MATCH_RULE_LENGTH
MAX_ARG_INDEX = 63  # DBUS_MAXIMUM_MATCH_RULE_ARG_NUMBER
MAX_RULE_TOKENS = 16  # dbus-daemon silently ignores key=value pairs after the 16th

_WHITESPACE = " \t\n\r"
_ULONG_MAX = (1 << 64) - 1
# dbus-daemon accepts ":" and ":1" as unique names in match rules, unlike the wire validator.
_RULE_UNIQUE_NAME_RE = re.compile(r"\A:[A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*\Z")
_BUS_NAMESPACE_RE = re.compile(r"\A[A-Za-z_-][A-Za-z0-9_-]*(\.[A-Za-z_-][A-Za-z0-9_-]*)*\Z")


class MatchRuleInvalid(ValueError):
    """The text is not a valid match rule; the daemon replies with `error_name` and `driver_text`.

    `driver_text` is the text as dbus-daemon's driver words it: most of its texts end
    in a newline (`newline=False` for those that do not).
    """

    error_name = errors.MATCH_RULE_INVALID

    def __init__(self, text: str, newline: bool = True) -> None:
        super().__init__(text)
        self.driver_text = text + "\n" if newline else text


class MatchRuleTooLong(MatchRuleInvalid):
    """The rule text exceeds MAX_RULE_LENGTH bytes (dbus-daemon answers LimitsExceeded)."""

    error_name = errors.LIMITS_EXCEEDED


class MatchRuleNotFound(LookupError):
    """RemoveMatch named a rule the connection has not added."""

    error_name = errors.MATCH_RULE_NOT_FOUND

    def __init__(self, message: str = "The given match rule wasn't found and can't be removed") -> None:
        super().__init__(message)


class ArgKind(Enum):
    """How an argN filter compares: the key suffix that selects it."""

    STRING = ""
    PATH = "path"
    NAMESPACE = "namespace"


class ArgMatch(NamedTuple):
    """One argN / argNpath / arg0namespace filter."""

    index: int
    value: str
    kind: ArgKind = ArgKind.STRING

    @property
    def key(self) -> str:
        return f"arg{self.index}{self.kind.value}"

    def accepts(self, type_code: str | None, actual: Any) -> bool:
        """Whether a body argument of D-Bus type `type_code` with value `actual` passes."""
        return self.accepts_type(type_code) and self.accepts_value(actual)

    def accepts_type(self, type_code: str | None) -> bool:
        """Whether an argument of this type can pass (spec: argN tests strings, argNpath strings and paths)."""
        return type_code == "s" or (type_code == "o" and self.kind is ArgKind.PATH)

    def accepts_value(self, actual: Any) -> bool:
        """Whether a string or object path argument with value `actual` passes."""
        if not isinstance(actual, str):
            return False
        expected = self.value
        if self.kind is ArgKind.STRING:
            return actual == expected
        if self.kind is ArgKind.PATH:
            # Either side may be a '/'-terminated prefix of the other (spec: argNpath).
            if len(actual) < len(expected) and not actual.endswith("/"):
                return False
            if len(expected) < len(actual) and not expected.endswith("/"):
                return False
            common = min(len(actual), len(expected))
            return actual[:common] == expected[:common]
        return actual == expected or (actual.startswith(expected) and actual[len(expected)] == ".")


def _arg_index(arg: ArgMatch) -> int:
    return arg.index


@lru_cache(maxsize=1024)
def _top_level_type_codes(signature: str) -> tuple[str, ...] | None:
    try:
        return tuple(node.code for node in parse_signature(signature))
    except SignatureError:
        return None


def _escape(value: str) -> str:
    # A quote cannot appear inside quotes: close them, write \' and reopen.
    return "'" + value.replace("'", "'\\''") + "'"


@dataclasses.dataclass(frozen=True, slots=True)
class MatchRule:
    """One parsed match rule; equal rules compare and hash equal (RemoveMatch relies on it).

    `args` is sorted by index with one filter per index. Build rules with `parse`,
    or directly with already-valid values.
    """

    type: int | None = None
    sender: str | None = None
    interface: str | None = None
    member: str | None = None
    path: str | None = None
    path_namespace: str | None = None
    destination: str | None = None
    args: tuple[ArgMatch, ...] = ()
    eavesdrop: bool = False
    _hash: int = dataclasses.field(init=False, repr=False, compare=False, default=0)
    # Whether matching needs more than the header key a MatchIndex buckets by (destination, path_namespace, args).
    checks_beyond_key: bool = dataclasses.field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.args, key=_arg_index))
        if ordered != self.args:
            object.__setattr__(self, "args", ordered)
        object.__setattr__(self, "checks_beyond_key",
                           self.destination is not None or self.path_namespace is not None or bool(self.args))
        # Rules are dict keys on every AddMatch/RemoveMatch: hash the fields once.
        object.__setattr__(self, "_hash", hash((self.type, self.sender, self.interface, self.member, self.path,
                                                self.path_namespace, self.destination, self.args, self.eavesdrop)))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def parse(cls, text: str) -> MatchRule:
        """Parse match rule text exactly as dbus-daemon does; raises MatchRuleInvalid."""
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_RULE_LENGTH:
            raise MatchRuleTooLong(f"Match rule text is {size} bytes, maximum is {MAX_RULE_LENGTH}",
                                   newline=False)
        fields: dict[str, Any] = {}
        args: dict[int, ArgMatch] = {}
        for key, value in _tokenize(text):
            handler = _KEY_HANDLERS.get(key)
            if handler is not None:
                handler(fields, key, value)
            elif key.startswith("arg"):
                arg = _parse_arg_key(key, value, args)
                args[arg.index] = arg
            else:
                raise MatchRuleInvalid(f'Unknown key "{key}" in match rule', newline=False)
        return cls(args=tuple(sorted(args.values(), key=_arg_index)), **fields)

    def with_eavesdrop(self) -> MatchRule:
        """This rule with eavesdrop='true' (how BecomeMonitor treats a monitor's rules)."""
        return dataclasses.replace(self, eavesdrop=True)

    def __str__(self) -> str:
        """Canonical text, in dbus-daemon's key order; `parse(str(rule)) == rule`."""
        parts = []
        if self.type is not None:
            parts.append("type=" + _escape(MESSAGE_TYPE_NAMES[self.type]))
        for key in ("interface", "member", "path", "path_namespace", "sender", "destination"):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{key}={_escape(value)}")
        if self.eavesdrop:
            parts.append("eavesdrop='true'")
        parts.extend(f"{arg.key}={_escape(arg.value)}" for arg in self.args)
        return ",".join(parts)

    def unique_names(self) -> Iterator[str]:
        """Unique names this rule mentions as sender or destination."""
        for name in (self.sender, self.destination):
            if name is not None and name.startswith(":"):
                yield name

    def matches(self, msg: Any, sender_names: Collection[str],
                get_args: Callable[[], Sequence[Any]],
                destination_names: Collection[str] | None = None) -> bool:
        """Whether this rule makes its owner a recipient of `msg`.

        `msg` has `type`, `sender`, `interface`, `member`, `path`, `destination`
        and optionally `signature` (the body signature; with it argN only
        matches 's' arguments and argNpath 's' or 'o', as the spec says; without
        it every str argument counts as a string). `sender_names` are the names
        whose primary owner is the sender. `destination_names` are the names
        whose primary owner is the addressed recipient; None means compare the
        rule's destination with `msg.destination` (a message to the bus driver,
        or to a service not started yet). `get_args` returns the body's
        arguments as a sequence (wire.message.body_arguments decodes only the
        ones indexed); it is called only when the rule filters on arguments of
        types that can match.
        """
        if self.type is not None and msg.type != self.type:
            return False
        if self.interface is not None and msg.interface != self.interface:
            return False
        if self.member is not None and msg.member != self.member:
            return False
        if self.path is not None and msg.path != self.path:
            return False
        if self.sender is not None and self.sender != msg.sender and self.sender not in sender_names:
            return False
        return self.matches_beyond_header_key(msg, get_args, destination_names)

    def matches_beyond_header_key(self, msg: Any, get_args: Callable[[], Sequence[Any]],
                                  destination_names: Collection[str] | None) -> bool:
        """The checks left once type, interface, member, sender and path are known to match."""
        destination = msg.destination
        if self.destination is not None:
            if destination is None or not self.eavesdrop:
                return False
            if destination_names is None:
                if self.destination != destination:
                    return False
            elif self.destination not in destination_names:
                return False
        elif destination is not None and not self.eavesdrop:
            return False
        if self.path_namespace is not None and not _in_path_namespace(msg.path, self.path_namespace):
            return False
        if self.args:
            return self._args_match(msg, get_args)
        return True

    def _args_match(self, msg: Any, get_args: Callable[[], Sequence[Any]]) -> bool:
        signature = getattr(msg, "signature", None)
        if signature is None:
            # No signature to go by: every str argument counts as a string.
            body = get_args()
            for arg in self.args:
                if arg.index >= len(body):
                    return False
                value = body[arg.index]
                if not arg.accepts("s" if isinstance(value, str) else None, value):
                    return False
            return True
        codes = _top_level_type_codes(signature)
        if codes is None:
            return False
        # The types come from the signature alone: a rule whose argument is not a
        # string (or path) fails without a byte of the body being read.
        for arg in self.args:
            if arg.index >= len(codes) or not arg.accepts_type(codes[arg.index]):
                return False
        body = get_args()  # a lazy sequence decodes only the arguments indexed
        for arg in self.args:
            if not arg.accepts_value(body[arg.index]):
                return False
        return True


def _in_path_namespace(path: str | None, namespace: str) -> bool:
    if path is None:
        return False
    if namespace == "/":
        return True
    return path == namespace or path.startswith(namespace + "/")


# -- parsing -----------------------------------------------------------------

def _tokenize(text: str) -> list[tuple[str, str]]:
    """Split rule text into (key, value) pairs the way dbus-daemon's tokenize_rule does."""
    tokens: list[tuple[str, str]] = []
    pos, end = 0, len(text)
    slots = 0
    while slots < MAX_RULE_TOKENS and pos < end:
        slots += 1  # an empty key (trailing blanks, a stray '=') still uses a slot
        while pos < end and text[pos] in _WHITESPACE:
            pos += 1
        key_start = pos
        while pos < end and text[pos] != "=" and text[pos] not in _WHITESPACE:
            pos += 1
        key = text[key_start:pos]
        while pos < end and text[pos] in _WHITESPACE:
            pos += 1
        if not key:
            continue
        if pos >= end or text[pos] != "=":
            raise MatchRuleInvalid("Match rule has a key with no subsequent '=' character", newline=False)
        value, pos = _read_value(text, pos + 1)
        tokens.append((key, value))
    return tokens


def _read_value(text: str, pos: int) -> tuple[str, int]:
    """One value: quoted or not, up to an unquoted comma; returns (value, next position)."""
    out: list[str] = []
    quote = ""
    end = len(text)
    while pos < end:
        char = text[pos]
        pos += 1
        if quote == "":
            if char == "'":
                quote = "'"
            elif char == ",":
                return "".join(out), pos
            elif char == "\\":
                quote = "\\"
            else:
                out.append(char)
        elif quote == "\\":
            # Outside quotes a backslash escapes only an apostrophe.
            if char != "'":
                out.append("\\")
            out.append(char)
            quote = ""
        elif char == "'":
            quote = ""
        else:
            out.append(char)
    if quote == "\\":
        out.append("\\")
    elif quote == "'":
        raise MatchRuleInvalid("Unbalanced quotation marks in match rule", newline=False)
    return "".join(out), pos


def _parse_c_ulong(text: str) -> tuple[int, int] | None:
    """C strtoul(text, &end, 0): (value, end index), or None when it would fail."""
    pos = 0
    negative = False
    if pos < len(text) and text[pos] in "+-":
        negative = text[pos] == "-"
        pos += 1
    base, digits = 10, "0123456789"
    if text[pos:pos + 2] in ("0x", "0X") and pos + 2 < len(text) and text[pos + 2] in "0123456789abcdefABCDEF":
        base, digits, pos = 16, "0123456789abcdefABCDEF", pos + 2
    elif text[pos:pos + 1] == "0":
        base, digits = 8, "01234567"
    start = pos
    while pos < len(text) and text[pos] in digits:
        pos += 1
    if pos == start:
        return None
    value = int(text[start:pos], base)
    if value > _ULONG_MAX:
        return None  # ERANGE
    if negative:
        value = -value & _ULONG_MAX
    return value, pos


def _parse_arg_key(key: str, value: str, seen: dict[int, ArgMatch]) -> ArgMatch:
    if len(key) < 4:
        raise MatchRuleInvalid(f"Key '{key}' in match rule starts with 'arg' but lacks an arg number. "
                               "Should be 'arg0' or 'arg7' for example.")
    parsed = _parse_c_ulong(key[3:])
    if parsed is None:
        raise MatchRuleInvalid(f"Key '{key}' in match rule starts with 'arg' but could not parse arg number. "
                               "Should be 'arg0' or 'arg7' for example.")
    index, end = parsed
    end += 3
    kind = ArgKind.STRING
    if end != len(key):
        if key[end:] == "path":
            kind = ArgKind.PATH
        elif key == "arg0namespace":
            kind = ArgKind.NAMESPACE
            if not _is_valid_bus_namespace(value):
                raise MatchRuleInvalid(f"arg0namespace='{value}' is not a valid prefix of a bus name",
                                       newline=False)
        else:
            raise MatchRuleInvalid(f"Key '{key}' in match rule contains junk after argument number ({index}). "
                                   f"Only 'arg{index}path' (for example) or 'arg0namespace' are valid",
                                   newline=False)
    if index > MAX_ARG_INDEX:
        raise MatchRuleInvalid(f"Key '{key}' in match rule has arg number {index} "
                               f"but the maximum is {MAX_ARG_INDEX}.")
    if index in seen:
        raise MatchRuleInvalid(f"Argument {key} matched more than once in match rule")
    return ArgMatch(index, sys.intern(value), kind)


def _is_valid_rule_bus_name(name: str) -> bool:
    if len(name) > names.MAX_NAME_LENGTH:
        return False
    if name.startswith(":"):
        return _RULE_UNIQUE_NAME_RE.match(name) is not None
    return names.is_valid_well_known_name(name)


def _is_valid_bus_namespace(name: str) -> bool:
    if len(name) > names.MAX_NAME_LENGTH:
        return False
    if name.startswith(":"):
        return _RULE_UNIQUE_NAME_RE.match(name) is not None
    return _BUS_NAMESPACE_RE.match(name) is not None


# Values kept in a rule are interned: every client of a service subscribes with the same interface,
# member, sender and often path or arg0, so thousands of rules share one copy of each string.
def _checked_key(check: Callable[[str], bool], what: str) -> Callable[[dict[str, Any], str, str], None]:
    def handle(fields: dict[str, Any], key: str, value: str) -> None:
        if key in fields:
            raise MatchRuleInvalid(f"Key {key} specified twice in match rule")
        if not check(value):
            raise MatchRuleInvalid(f"{what} '{value}' is invalid")
        fields[key] = sys.intern(value)
    return handle


def _handle_type(fields: dict[str, Any], key: str, value: str) -> None:
    if "type" in fields:
        raise MatchRuleInvalid("Key type specified twice in match rule")
    if value not in MESSAGE_TYPES:
        raise MatchRuleInvalid(f"Invalid message type ({value}) in match rule")
    fields["type"] = MESSAGE_TYPES[value]


def _handle_path(fields: dict[str, Any], key: str, value: str) -> None:
    if "path" in fields or "path_namespace" in fields:
        raise MatchRuleInvalid("path or path_namespace specified twice in match rule")
    if not names.is_valid_object_path(value):
        raise MatchRuleInvalid(f"Path '{value}' is invalid")
    fields[key] = sys.intern(value)


def _handle_eavesdrop(fields: dict[str, Any], key: str, value: str) -> None:
    # Allowed twice: tools such as dbus-monitor append eavesdrop='false' to turn it off.
    if value not in ("true", "false"):
        raise MatchRuleInvalid(f"eavesdrop='{value}' is invalid, it should be 'true' or 'false'")
    fields["eavesdrop"] = value == "true"


_KEY_HANDLERS: dict[str, Callable[[dict[str, Any], str, str], None]] = {
    "type": _handle_type,
    "sender": _checked_key(_is_valid_rule_bus_name, "Sender name"),
    "interface": _checked_key(names.is_valid_interface, "Interface name"),
    "member": _checked_key(names.is_valid_member, "Member name"),
    "path": _handle_path,
    "path_namespace": _handle_path,
    "destination": _checked_key(_is_valid_rule_bus_name, "Destination name"),
    "eavesdrop": _handle_eavesdrop,
}


__all__ = [
    "ArgKind", "ArgMatch", "MatchRule", "MatchRuleInvalid", "MatchRuleNotFound",
    "MatchRuleTooLong", "MESSAGE_TYPES", "MESSAGE_TYPE_NAMES", "MAX_RULE_LENGTH", "MAX_ARG_INDEX",
]
