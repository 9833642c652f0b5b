"""Match rules (AddMatch/RemoveMatch): parsing, matching, and an index that finds recipients fast.

Parsing follows dbus-daemon's bus/signals.c to the letter, including its quirks:
only the first 16 key=value pairs are read, argument numbers are read like C's
strtoul(..., 0) (so ``arg010`` is arg 8), and an empty rule matches everything.

Delivery semantics (dbus-daemon's, which the spec describes): a match rule never
makes its owner a recipient of a message addressed to someone else unless the
rule says ``eavesdrop='true'``. The addressed recipient gets such a message
anyway; the daemon sends it there itself, and `MatchIndex.recipients` leaves it
out so that it is not delivered twice.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Hashable, Iterator
from enum import Enum
from functools import lru_cache
from operator import itemgetter
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
        if not isinstance(actual, str):
            return False
        if type_code != "s" and not (type_code == "o" and self.kind is ArgKind.PATH):
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

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.args, key=_arg_index))
        if ordered != self.args:
            object.__setattr__(self, "args", ordered)
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
                get_args: Callable[[], list[Any]],
                destination_names: Collection[str] | None = None) -> bool:
        """Whether this rule makes its owner a recipient of `msg`.

        `msg` has `type`, `sender`, `interface`, `member`, `path`, `destination`
        and optionally `signature` (the body signature; with it argN only
        matches 's' arguments and argNpath 's' or 'o', as the spec says; without
        it every str argument counts as a string). `sender_names` are the names
        whose primary owner is the sender. `destination_names` are the names
        whose primary owner is the addressed recipient; None means compare the
        rule's destination with `msg.destination` (a message to the bus driver,
        or to a service not started yet). `get_args` is called only when the
        rule filters on arguments.
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
        return self._matches_beyond_header_key(msg, get_args, destination_names)

    def _matches_beyond_header_key(self, msg: Any, get_args: Callable[[], list[Any]],
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
            return self._args_match(msg, get_args())
        return True

    def _args_match(self, msg: Any, body: list[Any]) -> bool:
        signature = getattr(msg, "signature", None)
        codes = _top_level_type_codes(signature) if signature is not None else None
        for arg in self.args:
            if arg.index >= len(body):
                return False
            value = body[arg.index]
            if codes is None:
                code = "s" if isinstance(value, str) else None
            else:
                code = codes[arg.index] if arg.index < len(codes) else None
            if not arg.accepts(code, value):
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
    return ArgMatch(index, value, kind)


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


def _checked_key(check: Callable[[str], bool], what: str) -> Callable[[dict[str, Any], str, str], None]:
    def handle(fields: dict[str, Any], key: str, value: str) -> None:
        if key in fields:
            raise MatchRuleInvalid(f"Key {key} specified twice in match rule")
        if not check(value):
            raise MatchRuleInvalid(f"{what} '{value}' is invalid")
        fields[key] = value
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
    fields[key] = value


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


# -- the index ---------------------------------------------------------------

# A rule's "shape" says which of the exactly-compared fields it sets. Rules are
# bucketed by shape and by those fields' values, so a message only probes one
# bucket per shape present on the bus (times the sender's names for shapes with
# a sender) and never looks at a rule that differs in one of those fields.
_TYPE, _INTERFACE, _MEMBER, _PATH, _SENDER = 1, 2, 4, 8, 16
_SHAPE_FIELDS = (_TYPE, _INTERFACE, _MEMBER, _PATH, _SENDER)  # positions in a key-fields tuple


def _shape_of(rule: MatchRule) -> int:
    shape = 0
    for bit, value in zip(_SHAPE_FIELDS, (rule.type, rule.interface, rule.member, rule.path, rule.sender)):
        if value is not None:
            shape |= bit
    return shape


def _key_getter(shape: int) -> Callable[[tuple], Any]:
    positions = [i for i, bit in enumerate(_SHAPE_FIELDS) if shape & bit]
    if not positions:
        return lambda fields: None
    return itemgetter(*positions)


class _ShapeTable:
    """Rules bucketed by shape, then by the values of the shape's fields."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        # shape -> (key getter, key -> {rule: (needs_full_check, owners)})
        self.buckets: dict[int, tuple[Callable[[tuple], Any], dict[Any, dict[MatchRule, tuple[bool, dict]]]]] = {}

    def insert(self, rule: MatchRule, owners: dict[Hashable, None]) -> None:
        shape = _shape_of(rule)
        entry = self.buckets.get(shape)
        if entry is None:
            entry = self.buckets[shape] = (_key_getter(shape), {})
        getter, table = entry
        key = getter((rule.type, rule.interface, rule.member, rule.path, rule.sender))
        # Only destination, path_namespace and args are left once the bucket key matched.
        needs_check = rule.destination is not None or rule.path_namespace is not None or bool(rule.args)
        table.setdefault(key, {})[rule] = (needs_check, owners)

    def discard(self, rule: MatchRule) -> None:
        shape = _shape_of(rule)
        getter, table = self.buckets[shape]
        key = getter((rule.type, rule.interface, rule.member, rule.path, rule.sender))
        rules = table[key]
        del rules[rule]
        if not rules:
            del table[key]
            if not table:
                del self.buckets[shape]

    def candidates(self, fields_by_sender: list[tuple]) -> Iterator[tuple[MatchRule, tuple[bool, dict]]]:
        """Every rule whose exactly-compared fields equal the message's."""
        first = fields_by_sender[0]
        for shape, (getter, table) in self.buckets.items():
            for fields in (fields_by_sender if shape & _SENDER else (first,)):
                rules = table.get(getter(fields))
                if rules:
                    yield from rules.items()

    def __bool__(self) -> bool:
        return bool(self.buckets)

    def __len__(self) -> int:
        return sum(len(rules) for _, table in self.buckets.values() for rules in table.values())


class MatchIndex:
    """The match rules of every connection on the bus, indexed for delivery.

    The same rule added twice by one owner must be removed twice (dbus-daemon
    keeps one entry per AddMatch). `owner` is any hashable; the daemon passes
    its connection objects.
    """

    def __init__(self) -> None:
        self._counts: dict[Hashable, dict[MatchRule, int]] = {}
        self._owners: dict[MatchRule, dict[Hashable, None]] = {}
        self._broadcast_rules = _ShapeTable()  # eavesdrop='false': only see broadcasts
        self._eavesdrop_rules = _ShapeTable()  # eavesdrop='true': may also see unicast messages
        self._by_unique_name: dict[str, set[MatchRule]] = {}

    def _table(self, rule: MatchRule) -> _ShapeTable:
        return self._eavesdrop_rules if rule.eavesdrop else self._broadcast_rules

    def add(self, owner: Hashable, rule: MatchRule) -> None:
        per_owner = self._counts.setdefault(owner, {})
        count = per_owner.get(rule, 0)
        per_owner[rule] = count + 1
        if count:
            return
        owners = self._owners.get(rule)
        if owners is None:
            owners = self._owners[rule] = {}
            self._table(rule).insert(rule, owners)
            for name in rule.unique_names():
                self._by_unique_name.setdefault(name, set()).add(rule)
        owners[owner] = None

    def remove(self, owner: Hashable, rule: MatchRule) -> None:
        """Undo one `add` of `rule` by `owner`; raises MatchRuleNotFound if there is none."""
        per_owner = self._counts.get(owner)
        count = per_owner.get(rule, 0) if per_owner else 0
        if not count:
            raise MatchRuleNotFound()
        if count > 1:
            per_owner[rule] = count - 1
            return
        del per_owner[rule]
        if not per_owner:
            del self._counts[owner]
        self._forget_owner_of(rule, owner)

    def remove_owner(self, owner: Hashable, unique_name: str | None = None) -> None:
        """Drop every rule of `owner` (it disconnected).

        With `unique_name` (the owner's), also drop other owners' rules whose
        sender or destination is that name: unique names are never reused, so
        dbus-daemon removes those rules too, and a later RemoveMatch of one of
        them fails with MatchRuleNotFound. Like dbus-daemon, it does so only
        when the departing owner had match rules of its own.
        """
        own_rules = self._counts.pop(owner, {})
        for rule in own_rules:
            self._forget_owner_of(rule, owner)
        if unique_name is None or not own_rules:
            return
        for rule in list(self._by_unique_name.get(unique_name, ())):
            for other in list(self._owners.get(rule, ())):
                per_owner = self._counts[other]
                del per_owner[rule]
                if not per_owner:
                    del self._counts[other]
                self._forget_owner_of(rule, other)

    def _forget_owner_of(self, rule: MatchRule, owner: Hashable) -> None:
        owners = self._owners[rule]
        del owners[owner]
        if owners:
            return
        del self._owners[rule]
        self._table(rule).discard(rule)
        for name in rule.unique_names():
            rules = self._by_unique_name[name]
            rules.discard(rule)
            if not rules:
                del self._by_unique_name[name]

    def count(self, owner: Hashable) -> int:
        """How many rules `owner` has, counting each AddMatch (for max_match_rules_per_connection)."""
        return sum(self._counts.get(owner, {}).values())

    def rules(self, owner: Hashable) -> list[MatchRule]:
        """`owner`'s rules, one entry per AddMatch (Debug.Stats.GetAllMatchRules)."""
        return [rule for rule, count in self._counts.get(owner, {}).items() for _ in range(count)]

    @property
    def has_eavesdroppers(self) -> bool:
        """Whether any rule says eavesdrop='true'; if not, a unicast message needs no lookup."""
        return bool(self._eavesdrop_rules)

    def owners(self) -> list[Hashable]:
        return list(self._counts)

    def __len__(self) -> int:
        """Distinct rules on the bus."""
        return len(self._owners)

    def recipients(self, msg: Any, sender_names: Collection[str], get_args: Callable[[], list[Any]], *,
                   addressed_recipient: Hashable | None = None,
                   recipient_names: Collection[str] | None = None) -> set[Hashable]:
        """Every owner with a rule matching `msg`, each once, as `MatchRule.matches` decides.

        For a broadcast (no destination) that is every owner with a matching
        rule. For a message with a destination only eavesdrop='true' rules can
        match; pass the connection it is addressed to as `addressed_recipient`
        (it is left out: the daemon delivers to it directly) and the names it
        is primary owner of as `recipient_names` (for rules with a
        destination). `get_args` is called at most once, and only if a
        candidate rule filters on arguments.
        """
        body: list[Any] = []
        fetched = False

        def args_once() -> list[Any]:
            nonlocal body, fetched
            if not fetched:
                body, fetched = get_args(), True
            return body

        senders = [msg.sender, *sender_names] if msg.sender is not None else list(sender_names) or [None]
        base = (msg.type, msg.interface, msg.member, msg.path)
        fields_by_sender = [(*base, name) for name in senders]
        broadcast = msg.destination is None
        tables = (self._broadcast_rules, self._eavesdrop_rules) if broadcast else (self._eavesdrop_rules,)
        found: set[Hashable] = set()
        for table in tables:
            for rule, (needs_check, owners) in table.candidates(fields_by_sender):
                if (not needs_check and broadcast) or \
                        rule._matches_beyond_header_key(msg, args_once, recipient_names):
                    found.update(owners)
        if addressed_recipient is not None:
            found.discard(addressed_recipient)
        return found


__all__ = [
    "ArgKind", "ArgMatch", "MatchIndex", "MatchRule", "MatchRuleInvalid", "MatchRuleNotFound",
    "MatchRuleTooLong", "MESSAGE_TYPES", "MESSAGE_TYPE_NAMES", "MAX_RULE_LENGTH", "MAX_ARG_INDEX",
]
