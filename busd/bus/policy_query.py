"""Asking a policy about a message nobody sent: which rule decides, and the effective rules in evaluation order.

The same code answers `busdctl policy check` offline (a config file compiled by
the launcher) and online (dev.busd.Policy1.Check on a running bus): the query
becomes a real message header (busd.wire builds and parses it, so every field
is what the bus would see) and goes through the very `PeerPolicy` checks the
router makes, send rules of the sender, then receive rules of the recipient.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Collection, Mapping
from typing import Any

from ..wire.message import (ERROR, METHOD_CALL, METHOD_RETURN, SIGNAL, Header, build_message, parse_header)
from .policy import BusPolicy, ConfigPolicy, MessageRule, PolicyRule, Verdict, describe_rule
from .policy_audit import AuditPolicy
from ..wire.records import record

TYPES = {"method_call": METHOD_CALL, "method_return": METHOD_RETURN, "error": ERROR, "signal": SIGNAL}


class PolicyQueryError(ValueError):
    """The query cannot be asked: the message says what to give instead."""


@record(frozen=True)
class PolicyQuery:
    """A message, and who sends it (uid, groups) and receives it (its names, uid and groups when known)."""

    uid: int
    gids: tuple[int, ...] | None = None  # None: the user database's groups of uid
    type: str = "method_call"
    destination: str | None = None
    interface: str | None = None
    member: str | None = None
    path: str = "/"
    error_name: str | None = None
    requested_reply: bool = True  # a reply the receiver's call asked for (replies only)
    nfds: int = 0
    sender_names: tuple[str, ...] = ()  # well-known names the sender owns (receive_sender rules see them)
    receiver_uid: int | None = None  # None: receive rules are not checked (nobody known receives it)
    receiver_gids: tuple[int, ...] | None = None

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> PolicyQuery:
        """From dev.busd.Policy1.Check's a{sv} (values already unwrapped)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise PolicyQueryError(f"unknown query field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(fields)
        for key in ("gids", "receiver_gids", "sender_names"):
            if key in values and values[key] is not None:
                values[key] = tuple(values[key])
        if "uid" not in values:
            raise PolicyQueryError("the query needs the sender's uid")
        return cls(**values)

    def header(self) -> Header:
        mtype = TYPES.get(self.type)
        if mtype is None:
            raise PolicyQueryError(f"unknown message type {self.type!r}; give one of {', '.join(TYPES)}")
        if mtype in (METHOD_CALL, SIGNAL) and (self.member is None or (mtype == SIGNAL and not self.interface)):
            raise PolicyQueryError("a method call needs --member, a signal --interface and --member")
        if mtype == ERROR and not self.error_name:
            raise PolicyQueryError("an error needs --error-name")
        try:
            data = build_message(mtype, 1, path=self.path if mtype in (METHOD_CALL, SIGNAL) else None,
                                 interface=self.interface, member=self.member, error_name=self.error_name,
                                 reply_serial=1 if mtype in (METHOD_RETURN, ERROR) else None,
                                 destination=self.destination, sender=":0.0")
            return parse_header(data)
        except Exception as exc:  # noqa: BLE001 - an invalid name or path: say which
            raise PolicyQueryError(f"not a valid message: {exc}") from None


def groups_of(uid: int) -> tuple[int, ...]:
    """The user database's groups of `uid` (as the bus looks them up for a peer); () when there is no such user."""
    try:
        entry = pwd.getpwuid(uid)
        return tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except (KeyError, OSError):
        return ()


def rule_facts(verdict: Verdict) -> dict[str, Any]:
    """allowed, the deciding rule as written (or "" for the default deny) and its file:line."""
    rule = verdict.rule
    if isinstance(rule, MessageRule):
        return {"allowed": verdict.allowed, "rule": str(rule), "origin": rule.source.origin}
    return {"allowed": verdict.allowed, "rule": "" if rule is None else str(rule),
            "origin": "" if rule is None else str(rule).rsplit("(", 1)[-1].rstrip(")")}


def check(policy: BusPolicy, query: PolicyQuery, receiver_names: Collection[str] = ()) -> dict[str, Any]:
    """The policy's answer: `allowed`, `decided_by` (send, receive, or "" when nothing is enforced), the
    deciding `rule` and its `origin`, and each side's verdict (`send`, `receive` when a receiver is known)."""
    h = query.header()
    names = set(receiver_names) | ({query.destination} if query.destination else set())
    if isinstance(policy, AuditPolicy):
        policy = policy.inner  # what the rules say, not what audit mode lets through
    if not policy.enforced:
        return {"allowed": True, "decided_by": "", "rule": "", "origin": "", "enforced": False,
                "send": {"allowed": True, "rule": "", "origin": ""}}
    gids = query.gids if query.gids is not None else groups_of(query.uid)
    requested = query.requested_reply if query.type in ("method_return", "error") else False
    send = policy.for_peer(query.uid, gids).can_send(h, names, requested, query.nfds)
    answer: dict[str, Any] = {"enforced": True, "send": rule_facts(send)}
    decided, verdict = "send", send
    if send.allowed and query.receiver_uid is not None:
        receiver_gids = query.receiver_gids if query.receiver_gids is not None else groups_of(query.receiver_uid)
        receive = policy.for_peer(query.receiver_uid, receiver_gids).can_receive(
            h, set(query.sender_names), requested, query.nfds, False)
        answer["receive"] = rule_facts(receive)
        decided, verdict = "receive", receive
    answer.update(rule_facts(verdict), decided_by=decided)
    return answer


def dump(policy: BusPolicy) -> list[dict[str, Any]]:
    """The policy's contexts in evaluation order (default, each group, each user, at_console="false",
    mandatory), each with its rules as written and their file:line; the last matching rule decides."""
    if isinstance(policy, AuditPolicy):
        policy = policy.inner
    if not isinstance(policy, ConfigPolicy):
        return []

    def rules(found: tuple[PolicyRule, ...]) -> list[dict[str, str]]:
        return [{"kind": rule.kind, "rule": describe_rule(rule).rsplit(" (", 1)[0], "origin": rule.origin}
                for rule in found]

    contexts = [{"context": "default", "applies_to": "every connection", "rules": rules(policy.default)}]
    contexts += [{"context": f"group={gid}", "applies_to": f"connections of users in group {gid}",
                  "rules": rules(found)} for gid, found in sorted(policy.by_gid.items())]
    contexts += [{"context": f"user={uid}", "applies_to": f"connections of uid {uid}", "rules": rules(found)}
                 for uid, found in sorted(policy.by_uid.items())]
    if policy.not_at_console:
        contexts.append({"context": 'at_console="false"', "applies_to": "every connection with a uid (busd "
                         "treats nobody as at the console)", "rules": rules(policy.not_at_console)})
    contexts.append({"context": "mandatory", "applies_to": "every connection, last", "rules": rules(policy.mandatory)})
    return contexts


__all__ = ["PolicyQuery", "PolicyQueryError", "check", "dump", "groups_of", "rule_facts"]
