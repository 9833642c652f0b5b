"""SignalRule: a signal match rule as the SDK subscribes with it: the exact rule string for AddMatch, and the same rule applied locally."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Callable

from busd.wire.wellknown import DRIVER_NAME

_ARG_KEY = re.compile(r"^arg(\d{1,2})(path|namespace)?$")
MAX_ARG_INDEX = 63


def _quote(value: str) -> str:
    # The match rule grammar has no escapes inside quotes; an apostrophe is written '\''.
    return "'" + value.replace("'", "'\\''") + "'"


def _is_unique_name(name: str) -> bool:
    return name.startswith(":")


def _path_matches(arg: str, rule_path: str) -> bool:
    """argNpath semantics: equal, or one is a '/'-terminated prefix of the other."""
    if arg == rule_path:
        return True
    if rule_path.endswith("/") and arg.startswith(rule_path):
        return True
    return arg.endswith("/") and rule_path.startswith(arg)


def _namespace_matches(value: str, namespace: str) -> bool:
    return value == namespace or value.startswith(namespace + ".")


@dataclass(frozen=True)
class SignalRule:
    """A signal match rule.  `None` fields match anything; `args` holds the argN/argNpath/arg0namespace filters."""

    sender: str | None = None
    path: str | None = None
    interface: str | None = None
    member: str | None = None
    path_namespace: str | None = None
    destination: str | None = None
    args: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def for_signal(cls, sender: str | None, path: str | None, interface: str | None,
                   member: str | None, **filters: str) -> SignalRule:
        """Build a rule from connect_signal's arguments; `filters` are argN=..., argNpath=..., arg0namespace=...,
        path_namespace=... or destination=...."""
        path_namespace = filters.pop("path_namespace", None)
        destination = filters.pop("destination", None)
        if path is not None and path_namespace is not None:
            raise ValueError("a match rule takes either path or path_namespace, not both")
        args = []
        for key, value in filters.items():
            matched = _ARG_KEY.match(key)
            if not matched or int(matched.group(1)) > MAX_ARG_INDEX:
                raise TypeError(
                    f"unknown signal filter {key}=...; use argN=, argNpath= (N from 0 to "
                    f"{MAX_ARG_INDEX}), arg0namespace=, path_namespace= or destination=")
            if matched.group(2) == "namespace" and matched.group(1) != "0":
                raise TypeError(f"{key}: only arg0namespace exists in D-Bus match rules")
            if not isinstance(value, str):
                raise TypeError(f"{key}= must be a string (match rules only compare string arguments)")
            args.append((key, value))
        args.sort(key=lambda item: (int(_ARG_KEY.match(item[0]).group(1)), item[0]))
        return cls(sender=sender, path=path, interface=interface, member=member,
                   path_namespace=path_namespace, destination=destination, args=tuple(args))

    def to_string(self) -> str:
        """The rule text for AddMatch/RemoveMatch, with only the keys that were asked for."""
        parts = ["type='signal'"]
        for key in ("sender", "interface", "member", "path", "path_namespace", "destination"):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{key}={_quote(value)}")
        parts.extend(f"{key}={_quote(value)}" for key, value in self.args)
        return ",".join(parts)

    @property
    def sender_is_well_known(self) -> bool:
        return (self.sender is not None and not _is_unique_name(self.sender)
                and self.sender != DRIVER_NAME)

    def compile(self, sender_owner: Any = None) -> Callable[[Any], bool]:
        """A predicate on received signal messages, as the bus would apply this rule.

        `sender_owner` is needed when the sender is a well-known name: an
        object whose `owner` attribute is the name's current unique owner.
        """
        keys: list[str] = []
        expected: list[str] = []
        for key in ("sender", "path", "interface", "member", "destination"):
            value = getattr(self, key)
            if value is not None and not (key == "sender" and self.sender_is_well_known):
                keys.append(key)
                expected.append(value)
        extra: list[Callable[[Any], bool]] = []
        if self.sender_is_well_known:
            if sender_owner is None:
                raise ValueError(f"matching sender {self.sender} needs the owner of that name")
            name = self.sender
            extra.append(lambda msg: msg.sender == sender_owner.owner or msg.sender == name)
        if self.path_namespace is not None:
            exact = self.path_namespace
            prefix = exact.rstrip("/") + "/"
            extra.append(lambda msg: msg.path == exact or (msg.path or "").startswith(prefix))
        extra.extend(_arg_check(key, value) for key, value in self.args)
        # Header fields are compared in one go: a C attrgetter and a tuple comparison.
        if keys:
            headers = attrgetter(*keys)
            wanted: Any = tuple(expected) if len(keys) > 1 else expected[0]
            if self.sender_is_well_known and len(extra) == 1:
                # The usual subscription, in one function: it runs for every signal received.
                name = self.sender
                return lambda msg: headers(msg) == wanted and (
                    msg.sender == sender_owner.owner or msg.sender == name)
            extra.insert(0, lambda msg: headers(msg) == wanted)
        if not extra:
            return lambda msg: True
        if len(extra) == 1:
            return extra[0]
        if len(extra) == 2:
            first, second = extra
            return lambda msg: first(msg) and second(msg)
        return lambda msg: all(check(msg) for check in extra)


def _arg_check(key: str, expected: str) -> Callable[[Any], bool]:
    matched = _ARG_KEY.match(key)
    assert matched is not None
    index, kind = int(matched.group(1)), matched.group(2)

    def argument(msg: Any) -> Any:
        body = msg.body
        return body[index] if index < len(body) else None

    if kind == "path":
        # argNpath also matches object-path arguments, and arrays are not compared.
        return lambda msg: isinstance(value := argument(msg), str) and _path_matches(value, expected)
    if kind == "namespace":
        return lambda msg: isinstance(value := argument(msg), str) and _namespace_matches(value, expected)
    return lambda msg: isinstance(value := argument(msg), str) and value == expected
