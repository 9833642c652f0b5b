"""Security policy: who may connect, own which names and send or receive which messages.

This module is the door between the bus and the <policy> rules of the
configuration, which the launcher hands over as `PolicyRules` (launcher/policy.py).
The bus asks a `BusPolicy` for a `PeerPolicy` once per connection (rules
depend on the peer's uid and groups) and consults it on every message when
`BusPolicy.enforced` is true; a bus whose rules allow everything skips the
checks entirely, so they cost nothing on the per-message path.

Verdicts are `Verdict(allowed, rule)`: `rule` (the deciding rule, or None for the
default) is what a denial's log line names.

Theory (dbus-daemon's bus/policy.c). A connection's rules are the rules of the
`default` context, then those of each of its groups (ascending gid), then those
of its user, then `at_console="false"` ones, then `mandatory` ones: the last rule
that matches a message decides, and none matching means deny. Before use,
dbus-daemon drops every rule that precedes a rule it thinks matches everything
(for send rules: no type, path, interface, member, error or destination) and we
do the same, quirks included: such a rule may still test send_broadcast, fds or
requested_reply, so `<deny send_broadcast="true"/>` really does wipe the rules
before it. `<allow user/group>` rules decide who may connect at all, from the
`default` and `mandatory` contexts only, starting from "only the bus's own user".

Speed. Peers with the same uid and (relevant) groups share one compiled
`ConfigPeerPolicy`. It files its rules by message type, then by the bus name and
interface they test, so a check visits only rules that can match; and it caches
verdicts keyed by the message fields its rules actually test, so a busy system
bus mostly pays one dict lookup per check.
"""

from __future__ import annotations

import logging
import os
import pwd
from typing import Any, Collection, Iterable, Mapping, NamedTuple, Protocol

from ..wire.message import MAX_MESSAGE_UNIX_FDS
from ..wire.records import field, record

log = logging.getLogger("busd.policy")

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
MESSAGE_TYPES = {"method_call": METHOD_CALL, "method_return": METHOD_RETURN, "error": ERROR, "signal": SIGNAL}
CACHE_LIMIT = 4096  # verdicts kept per compiled peer policy before the cache starts over
# A verdict is cached under the message's path and the relevant names of the other peer, all chosen by
# peers: one with a longer path or more names is checked without caching, so a cache never holds more
# than CACHE_LIMIT x about 5 KiB (a 32 MiB path per entry would pin gigabytes: issue 13, #3).
CACHEABLE_PATH = 1024
CACHEABLE_NAMES = 16


class Verdict(NamedTuple):
    allowed: bool
    rule: Any = None


ALLOWED = Verdict(True)
DENIED = Verdict(False)


class PeerPolicy(Protocol):
    def can_own(self, name: str) -> Verdict: ...

    def can_send(self, h: Any, receiver_names: Collection[str], requested_reply: bool,
                 nfds: int) -> Verdict: ...

    def can_receive(self, h: Any, sender_names: Collection[str], requested_reply: bool,
                    nfds: int, eavesdrop: bool) -> Verdict: ...

    @property
    def may_eavesdrop(self) -> bool:
        """False when no message can pass `can_receive(..., eavesdrop=True)`: the bus then skips
        this peer's eavesdropping rules before it looks at a message's body."""


class BusPolicy(Protocol):
    enforced: bool

    def for_peer(self, uid: int | None, gids: Collection[int]) -> PeerPolicy: ...

    def allows_connection(self, uid: int | None, user_groups: Collection[int] | None = None) -> Verdict: ...


class _AllowEverything:
    may_eavesdrop = True

    def can_own(self, name: str) -> Verdict:
        return ALLOWED

    def can_send(self, h: Any, receiver_names: Collection[str], requested_reply: bool, nfds: int) -> Verdict:
        return ALLOWED

    def can_receive(self, h: Any, sender_names: Collection[str], requested_reply: bool, nfds: int,
                    eavesdrop: bool) -> Verdict:
        return ALLOWED


class AllowEverything:
    """The policy of a bus with no rules: nothing is checked."""

    enforced = False
    _peer = _AllowEverything()

    def for_peer(self, uid: int | None, gids: Collection[int]) -> PeerPolicy:
        return self._peer

    def allows_connection(self, uid: int | None, user_groups: Collection[int] | None = None) -> Verdict:
        return ALLOWED


# ---------------------------------------------------------------- what the launcher hands over

class PolicyRule(Protocol):
    """One <allow> or <deny> as the bus reads it; a field left None matches anything.

    `kind` says when the rule is consulted: "send"/"receive" for each message,
    "own" for RequestName, "user"/"group" when a connection is accepted.
    """

    allow: bool
    kind: str
    send_interface: str | None
    send_member: str | None
    send_error: str | None
    send_destination: str | None
    send_destination_prefix: str | None
    send_path: str | None
    send_type: str | None
    send_broadcast: bool | None
    send_requested_reply: bool | None
    receive_interface: str | None
    receive_member: str | None
    receive_error: str | None
    receive_sender: str | None
    receive_path: str | None
    receive_type: str | None
    receive_requested_reply: bool | None
    eavesdrop: bool
    max_fds: int
    min_fds: int
    own: str | None
    own_prefix: str | None
    user: str | None
    uid: int | None
    group: str | None
    gid: int | None
    log: bool

    @property
    def requested_reply(self) -> bool: ...

    @property
    def origin(self) -> str: ...


@record(frozen=True)
class PolicyRules:
    """A configuration's rules by whom they apply to, each list in file order (launcher.policy builds it)."""

    default: tuple[PolicyRule, ...] = ()
    mandatory: tuple[PolicyRule, ...] = ()
    by_uid: Mapping[int, tuple[PolicyRule, ...]] = field(default_factory=dict)
    by_gid: Mapping[int, tuple[PolicyRule, ...]] = field(default_factory=dict)
    not_at_console: tuple[PolicyRule, ...] = ()  # every peer with a uid: nobody is at the console to busd


# ---------------------------------------------------------------- compiled rules

def describe_rule(rule: PolicyRule) -> str:
    """The rule as it was written, give or take attribute order, with its file and line."""
    attrs = []
    for name in ("send_type", "send_destination", "send_destination_prefix", "send_path", "send_interface",
                 "send_member", "send_error", "send_broadcast", "send_requested_reply",
                 "receive_type", "receive_sender", "receive_path", "receive_interface", "receive_member",
                 "receive_error", "receive_requested_reply", "own", "own_prefix", "user", "group"):
        value = getattr(rule, name)
        if value is not None:
            attrs.append(f'{name}="{str(value).lower() if isinstance(value, bool) else value}"')
    if rule.kind in ("send", "receive"):
        if rule.eavesdrop:
            attrs.append('eavesdrop="true"')
        if rule.min_fds:
            attrs.append(f'min_fds="{rule.min_fds}"')
        if rule.max_fds != MAX_MESSAGE_UNIX_FDS:
            attrs.append(f'max_fds="{rule.max_fds}"')
        if rule.log:
            attrs.append('log="true"')
    if not attrs:
        # Every field was "*", which reads back as nothing: say which kind of rule it was.
        attrs.append(f'{rule.kind}_type="*"' if rule.kind in ("send", "receive") else f'{rule.kind}="*"')
    return f"<{'allow' if rule.allow else 'deny'} {' '.join(attrs)}/> ({rule.origin})"


class MessageRule:
    """One <allow>/<deny> send or receive rule, flattened for fast matching; str() names it."""

    __slots__ = ("allow", "type", "path", "interface", "member", "error", "name", "name_is_prefix",
                 "broadcast", "requested_reply", "eavesdrop", "min_fds", "max_fds", "tests_fds", "log",
                 "source", "verdict", "_text")

    def __init__(self, source: PolicyRule):
        send = source.kind == "send"
        field = (lambda name: getattr(source, f"send_{name}")) if send \
            else (lambda name: getattr(source, f"receive_{name}"))
        self.source = source
        self.allow = source.allow
        kind = field("type")
        self.type = MESSAGE_TYPES[kind] if kind is not None else None
        self.path = field("path")
        self.interface = field("interface")
        self.member = field("member")
        self.error = field("error")
        if send:
            self.name = source.send_destination if source.send_destination is not None \
                else source.send_destination_prefix
            self.name_is_prefix = source.send_destination_prefix is not None
            self.broadcast = source.send_broadcast
        else:
            self.name = source.receive_sender
            self.name_is_prefix = False
            self.broadcast = None
        self.requested_reply = source.requested_reply
        self.eavesdrop = source.eavesdrop
        self.min_fds = source.min_fds
        self.max_fds = source.max_fds
        self.tests_fds = source.min_fds > 0 or source.max_fds < MAX_MESSAGE_UNIX_FDS
        self.log = source.log
        self.verdict = Verdict(self.allow, self)
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = describe_rule(self.source)
        return self._text

    __repr__ = __str__

    @property
    def looks_unconditional(self) -> bool:
        """dbus-daemon's test for "matches everything", used to drop the rules before it (see the theory)."""
        return (self.type is None and self.path is None and self.interface is None and self.member is None
                and self.error is None and self.name is None)

    @property
    def allows_everything(self) -> bool:
        """Really matches every message (and allows it), whoever sends or receives it."""
        return (self.allow and self.looks_unconditional and self.broadcast is None and not self.tests_fds
                and (self.eavesdrop or (self.source.kind == "send" and not self.requested_reply)))

    def names_match(self, names: Collection[str]) -> bool:
        if not self.name_is_prefix:
            return self.name in names
        prefix = self.name
        dotted = prefix + "."
        return any(name == prefix or name.startswith(dotted) for name in names)

    def applies_to_reply(self, requested_reply: bool) -> bool:
        """dbus-daemon's reply logic: an allow rule skips unrequested replies unless it says
        requested_reply="false" or eavesdrop="true"; a deny rule skips requested replies
        unless it says requested_reply="true"."""
        if self.allow:
            return requested_reply or not self.requested_reply or self.eavesdrop
        return not requested_reply or self.requested_reply

    def matches_fields(self, h: Any) -> bool:
        """Path, interface, member and error name; a message without the field matches the rule,
        except that an allow rule with an interface needs a message with one."""
        if self.path is not None and h.path is not None and h.path != self.path:
            return False
        if self.interface is not None:
            if h.interface is None:
                if self.allow:
                    return False
            elif h.interface != self.interface:
                return False
        if self.member is not None and h.member is not None and h.member != self.member:
            return False
        if self.error is not None and h.error_name is not None and h.error_name != self.error:
            return False
        return True

    def matches_send(self, h: Any, receiver_names: Collection[str], requested_reply: bool, nfds: int) -> bool:
        if h.reply_serial and not self.applies_to_reply(requested_reply):
            return False
        if not self.matches_fields(h):
            return False
        if self.broadcast is not None and self.broadcast != (h.destination is None and h.type == SIGNAL):
            return False
        if self.name is not None and not self.names_match(receiver_names):
            return False
        return not self.tests_fds or self.min_fds <= nfds <= self.max_fds

    def matches_receive(self, h: Any, sender_names: Collection[str], requested_reply: bool, nfds: int,
                        eavesdrop: bool) -> bool:
        if eavesdrop:
            if self.allow and not self.eavesdrop:
                return False  # an allow rule lets a peer eavesdrop only if it says eavesdrop="true"
        elif not self.allow and self.eavesdrop:
            return False  # a deny rule with eavesdrop="true" only stops eavesdropping
        if h.reply_serial and not self.applies_to_reply(requested_reply):
            return False
        if not self.matches_fields(h):
            return False
        if self.name is not None and self.name not in sender_names:
            return False
        return not self.tests_fds or self.min_fds <= nfds <= self.max_fds


class OwnRule:
    """One <allow>/<deny> own or own_prefix rule."""

    __slots__ = ("allow", "name", "prefix", "source", "verdict")

    def __init__(self, source: PolicyRule):
        self.source = source
        self.allow = source.allow
        self.prefix = source.own_prefix is not None
        self.name = source.own_prefix if self.prefix else source.own  # None: any name
        self.verdict = Verdict(self.allow, self)

    def __str__(self) -> str:
        return describe_rule(self.source)

    __repr__ = __str__

    @property
    def looks_unconditional(self) -> bool:
        return self.name is None and not self.prefix

    def matches(self, name: str) -> bool:
        if self.name is None:
            return True
        if self.prefix:
            return name == self.name or name.startswith(self.name + ".")
        return name == self.name


_COMPILE = {"send": MessageRule, "receive": MessageRule, "own": OwnRule}


def _drop_overridden(rules: list) -> list:
    """Keep the rules from the last one that looks unconditional on, as dbus-daemon's optimizer does."""
    for i in range(len(rules) - 1, -1, -1):
        if rules[i].looks_unconditional:
            return rules[i:]
    return rules


# ---------------------------------------------------------------- one peer

class ConfigPeerPolicy:
    """The rules that apply to one (uid, groups): verdicts for own, send and receive checks."""

    def __init__(self, rules: Iterable[PolicyRule]):
        by_kind: dict[str, list] = {"send": [], "receive": [], "own": []}
        for rule in rules:
            if rule.kind in by_kind:
                by_kind[rule.kind].append(_COMPILE[rule.kind](rule))
        send = _drop_overridden(by_kind["send"])
        receive = _drop_overridden(by_kind["receive"])
        self.own_rules: list[OwnRule] = _drop_overridden(by_kind["own"])
        self.send_rules: list[MessageRule] = send
        self.receive_rules: list[MessageRule] = receive
        # Only an allow rule saying eavesdrop="true" lets a peer eavesdrop (MessageRule.matches_receive);
        # without one every eavesdropping verdict is the default deny, whatever the message.
        self.may_eavesdrop = any(rule.allow and rule.eavesdrop for rule in receive)
        self._send = {t: _Bucket([r for r in send if r.type in (None, t)]) for t in MESSAGE_TYPES.values()}
        self._receive = {t: _Bucket([r for r in receive if r.type in (None, t)]) for t in MESSAGE_TYPES.values()}
        self._send_tests = _Tests(send)
        self._receive_tests = _Tests(receive)
        self._send_cache: dict[tuple, Verdict] = {}
        self._receive_cache: dict[tuple, Verdict] = {}
        self._own_cache: dict[str, Verdict] = {}

    def can_own(self, name: str) -> Verdict:
        verdict = self._own_cache.get(name)
        if verdict is None:
            verdict = next((rule.verdict for rule in reversed(self.own_rules) if rule.matches(name)), DENIED)
            if len(self._own_cache) >= CACHE_LIMIT:
                self._own_cache.clear()
            self._own_cache[name] = verdict
        return verdict

    def can_send(self, h: Any, receiver_names: Collection[str], requested_reply: bool, nfds: int) -> Verdict:
        tests = self._send_tests
        key = tests.key(h, receiver_names, requested_reply, nfds, False)
        verdict = self._send_cache.get(key) if key is not None else None
        if verdict is None:
            verdict = DENIED
            bucket = self._send.get(h.type)
            for rule in bucket.candidates(receiver_names, h.interface) if bucket is not None else ():
                if rule.matches_send(h, receiver_names, requested_reply, nfds):
                    verdict = rule.verdict
                    break
            if key is not None:
                if len(self._send_cache) >= CACHE_LIMIT:
                    self._send_cache.clear()
                self._send_cache[key] = verdict
        if verdict.allowed and tests.any_log and verdict.rule.log:
            # dbus-daemon's log="true": let the message through, but say it would be rejected.
            log.warning("would reject %s (allowed by %s, which has log=\"true\")", h.describe(), verdict.rule)
        return verdict

    def can_receive(self, h: Any, sender_names: Collection[str], requested_reply: bool, nfds: int,
                    eavesdrop: bool) -> Verdict:
        key = self._receive_tests.key(h, sender_names, requested_reply, nfds, eavesdrop)
        verdict = self._receive_cache.get(key) if key is not None else None
        if verdict is None:
            verdict = DENIED
            bucket = self._receive.get(h.type)
            for rule in bucket.candidates(sender_names, h.interface) if bucket is not None else ():
                if rule.matches_receive(h, sender_names, requested_reply, nfds, eavesdrop):
                    verdict = rule.verdict
                    break
            if key is not None:
                if len(self._receive_cache) >= CACHE_LIMIT:
                    self._receive_cache.clear()
                self._receive_cache[key] = verdict
        return verdict


class _Bucket:
    """The rules for one message type, indexed by the exact bus name and the interface they test
    (most of a system bus's rules name both), so a check only visits rules that can match."""

    def __init__(self, rules: list[MessageRule]):
        # (name, interface) -> [(position, rule)]; None stands for "any" (or a name prefix).
        self.index: dict[tuple[str | None, str | None], list[tuple[int, MessageRule]]] = {}
        # Deny rules that name an interface also match messages without one: name -> [(position, rule)].
        self.deny_any_interface: dict[str | None, list[tuple[int, MessageRule]]] = {}
        for position, rule in enumerate(rules):
            name = None if rule.name_is_prefix else rule.name
            self.index.setdefault((name, rule.interface), []).append((position, rule))
            if rule.interface is not None and not rule.allow:
                self.deny_any_interface.setdefault(name, []).append((position, rule))

    def candidates(self, names: Collection[str], interface: str | None) -> list[MessageRule]:
        """Rules that may match a message with this interface between peers with these names, newest first."""
        index = self.index
        found: list[tuple[int, MessageRule]] = []
        for name in (None, *names):
            found += index.get((name, None), ())
            if interface is not None:
                found += index.get((name, interface), ())
            else:
                found += self.deny_any_interface.get(name, ())
        found.sort(key=_position, reverse=True)
        return [rule for _, rule in found]


def _position(entry: tuple[int, MessageRule]) -> int:
    return entry[0]


class _Tests:
    """Which message fields a rule list looks at: the cache key holds those and no others."""

    def __init__(self, rules: list[MessageRule]):
        self.path = any(r.path is not None for r in rules)
        self.interface = any(r.interface is not None for r in rules)
        self.member = any(r.member is not None for r in rules)
        self.error = any(r.error is not None for r in rules)
        self.fds = any(r.tests_fds for r in rules)
        self.any_log = any(r.log for r in rules)
        self.exact_names = frozenset(r.name for r in rules if r.name is not None and not r.name_is_prefix)
        self.prefixes = tuple({r.name for r in rules if r.name is not None and r.name_is_prefix})
        self._relevant: dict[str, bool] = {}

    def _is_relevant(self, name: str) -> bool:
        relevant = self._relevant.get(name)
        if relevant is None:
            relevant = name in self.exact_names or any(
                name == prefix or name.startswith(prefix + ".") for prefix in self.prefixes)
            if len(self._relevant) >= CACHE_LIMIT:
                self._relevant.clear()
            self._relevant[name] = relevant
        return relevant

    def key(self, h: Any, names: Collection[str], requested_reply: bool, nfds: int,
            eavesdrop: bool) -> tuple | None:
        """What the verdict depends on, as a cache key; None when it is too large to cache (CACHEABLE_*)."""
        if self.prefixes:
            # (a unique name matches no prefix: not asked, so no cache holds one of a peer that left)
            names_key = frozenset(name for name in names if name[0] != ":" and self._is_relevant(name))
        elif self.exact_names:
            names_key = self.exact_names.intersection(names)
        else:
            names_key = None
        path = h.path if self.path else None
        if (path is not None and len(path) > CACHEABLE_PATH) or (names_key and len(names_key) > CACHEABLE_NAMES):
            return None
        return (h.type, bool(h.reply_serial) and requested_reply, bool(h.reply_serial), eavesdrop,
                h.destination is None,
                path,
                h.interface if self.interface else None,
                h.member if self.member else None,
                h.error_name if self.error else None,
                nfds if self.fds else 0,
                names_key)


# ---------------------------------------------------------------- the whole bus

_IDENTITIES_LIMIT = 4096  # distinct (uid, groups) pairs remembered by ConfigPolicy.for_peer

class ConfigPolicy:
    """The <policy> elements of a configuration, compiled; hands out per-peer policies."""

    def __init__(self, rules: PolicyRules):
        self.default = rules.default
        self.mandatory = rules.mandatory
        self.by_uid = rules.by_uid
        self.by_gid = rules.by_gid
        self.not_at_console = rules.not_at_console
        self.connection_rules = [r for r in (*self.default, *self.mandatory) if r.kind in ("user", "group")]
        self.enforced = not (self._allows_everything("send") and self._allows_everything("receive"))
        self._peers: dict[tuple, ConfigPeerPolicy] = {}
        # By (uid, groups) as peers present them: every connection of a user asks with the same two, and
        # working out the key above was a sort per connection. Bounded: cleared past _IDENTITIES_LIMIT.
        self._by_identity: dict[tuple, ConfigPeerPolicy] = {}

    def _allows_everything(self, kind: str) -> bool:
        """True when every peer ends up with a rule of `kind` that allows any message, not overridden."""
        order = [*self.default, *(r for rules in self.by_gid.values() for r in rules),
                 *(r for rules in self.by_uid.values() for r in rules), *self.not_at_console, *self.mandatory]
        if any(rule.kind == kind and rule.log for rule in order):
            return False  # log="true" rules have something to say about the messages they match
        everyone = set(map(id, self.default)) | set(map(id, self.mandatory))
        for rule in reversed(order):
            if rule.kind != kind:
                continue
            compiled = MessageRule(rule)
            if compiled.allows_everything and id(rule) in everyone:
                return True
            if not compiled.allow or compiled.looks_unconditional:
                return False  # a deny, or a rule that wipes what precedes it
        return False

    def for_peer(self, uid: int | None, gids: Collection[int]) -> ConfigPeerPolicy:
        identity = (uid, gids) if type(gids) is tuple else None
        if identity is not None:
            peer = self._by_identity.get(identity)
            if peer is not None:
                return peer
        peer = self._for_groups(uid, gids)
        if identity is not None:
            if len(self._by_identity) >= _IDENTITIES_LIMIT:
                self._by_identity.clear()
            self._by_identity[identity] = peer
        return peer

    def _for_groups(self, uid: int | None, gids: Collection[int]) -> ConfigPeerPolicy:
        groups = tuple(sorted(gid for gid in set(gids) if gid in self.by_gid))
        user_key = uid if uid is None or uid in self.by_uid else -1
        key = (user_key, groups)
        peer = self._peers.get(key)
        if peer is None:
            rules = list(self.default)
            for gid in groups:
                rules.extend(self.by_gid[gid])
            if uid is not None:
                rules.extend(self.by_uid.get(uid, ()))
                rules.extend(self.not_at_console)
            rules.extend(self.mandatory)
            peer = self._peers[key] = ConfigPeerPolicy(rules)
        return peer

    def allows_connection(self, uid: int | None, user_groups: Collection[int] | None = None) -> Verdict:
        """May a peer with this uid connect? dbus-daemon's <allow user/group> logic.

        `user_groups` are the user database's groups of `uid` when the caller
        looked them up already (off the event loop: the transport does); () means no such user.
        """
        if uid is None:
            return ALLOWED  # no unix user: the authentication mechanism (ANONYMOUS) already decided
        if user_groups is None:
            try:
                entry = pwd.getpwuid(uid)
                user_groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
            except (KeyError, OSError):
                user_groups = ()
        if not user_groups:
            return DENIED  # dbus-daemon rejects a uid it cannot find the groups of
        gids = set(user_groups)
        verdict = ALLOWED if uid == os.geteuid() else DENIED
        for rule in self.connection_rules:
            if rule.kind == "user":
                if rule.uid is not None and rule.uid != uid:
                    continue
            elif rule.gid is not None and rule.gid not in gids:
                continue
            verdict = Verdict(rule.allow, describe_rule(rule))
        return verdict


__all__ = [
    "ALLOWED", "AllowEverything", "BusPolicy", "ConfigPeerPolicy", "ConfigPolicy", "DENIED", "PeerPolicy",
    "PolicyRule", "PolicyRules", "Verdict", "describe_rule",
]
