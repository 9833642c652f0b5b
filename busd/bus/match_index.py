"""MatchIndex: every connection's match rules, bucketed so a message finds its recipients without scanning them all.

Delivery semantics (dbus-daemon's, which the spec describes): a match rule never
makes its owner a recipient of a message addressed to someone else unless the
rule says ``eavesdrop='true'``. The addressed recipient gets such a message
anyway; the daemon sends it there itself, and `MatchIndex.recipients` leaves it
out so that it is not delivered twice.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterator, Sequence
from operator import itemgetter
from typing import Any

from .match import MatchRule, MatchRuleNotFound

# A rule's "shape" says which of the exactly-compared fields it sets. Rules are
# bucketed by shape and by those fields' values, so a message only probes one
# bucket per shape present on the bus (times the sender's names for shapes with
# a sender) and never looks at a rule that differs in one of those fields.
_TYPE, _INTERFACE, _MEMBER, _PATH, _SENDER = 1, 2, 4, 8, 16
_SHAPE_FIELDS = (_TYPE, _INTERFACE, _MEMBER, _PATH, _SENDER)  # positions in a key-fields tuple
RECIPIENTS_CACHE_LIMIT = 1024  # cached broadcast recipient sets (headers and senders that repeat)
# Longer paths are not cached: 1024 keys of long paths would hold the memory of 1024 messages (as the
# wire's header cache, which skips fields over 1 KiB).
CACHED_PATH_LIMIT = 1024
SMALL_OWNERS = 8  # a rule's owners are a tuple up to this many, then a dict
Owners = tuple[Hashable, ...] | dict[Hashable, None]  # see _ShapeTable


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
    """Rules bucketed by shape, then by the values of the shape's fields, each with its owners.

    Memory is per rule, and an idle desktop connection holds tens of rules, so the common
    case is kept small. At a key with one rule (most keys) the entry is a (rule, owners)
    pair; with more it is a dict, rule -> owners. A rule's owners are a tuple while few
    (most rules have one) and a dict past SMALL_OWNERS, so a rule many connections share (a
    NameOwnerChanged subscription) costs no copy of all its owners per AddMatch.
    """

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        # shape -> (key getter, key -> (rule, owners) | {rule: owners})
        self.buckets: dict[int, tuple[Callable[[tuple], Any], dict[Any, Any]]] = {}

    def _locate(self, rule: MatchRule, create: bool = False) -> tuple[dict, Any]:
        """(the table of the rule's shape, the rule's key in it)."""
        shape = _shape_of(rule)
        entry = self.buckets.get(shape)
        if entry is None:
            if not create:
                return {}, None
            entry = self.buckets[shape] = (_key_getter(shape), {})
        getter, table = entry
        return table, getter((rule.type, rule.interface, rule.member, rule.path, rule.sender))

    def owners_of(self, rule: MatchRule) -> Owners | None:
        table, key = self._locate(rule)
        entry = table.get(key)
        if type(entry) is tuple:
            return entry[1] if entry[0] == rule else None
        return entry.get(rule) if entry is not None else None

    def own(self, rule: MatchRule, owner: Hashable) -> bool:
        """Give `rule` one more owner; True when the rule is new to the table."""
        table, key = self._locate(rule, create=True)
        entry = table.get(key)
        if entry is None:
            table[key] = (rule, (owner,))
            return True
        if type(entry) is tuple:
            if entry[0] != rule:
                table[key] = {entry[0]: entry[1], rule: (owner,)}
                return True
            owners = entry[1]
        else:
            owners = entry.get(rule)
            if owners is None:
                entry[rule] = (owner,)
                return True
        if type(owners) is dict:
            owners[owner] = None
            return False
        owners = (*owners, owner) if len(owners) < SMALL_OWNERS else dict.fromkeys((*owners, owner))
        if type(entry) is tuple:
            table[key] = (rule, owners)
        else:
            entry[rule] = owners
        return False

    def disown(self, rule: MatchRule, owner: Hashable) -> bool:
        """Take one owner from `rule`; True when it had no other and left the table."""
        table, key = self._locate(rule)
        entry = table[key]
        owners = entry[1] if type(entry) is tuple else entry[rule]
        if type(owners) is dict:
            del owners[owner]
            if owners:
                return False
        elif len(owners) > 1:
            i = owners.index(owner)
            if type(entry) is tuple:
                table[key] = (rule, owners[:i] + owners[i + 1:])
            else:
                entry[rule] = owners[:i] + owners[i + 1:]
            return False
        if type(entry) is tuple:
            del table[key]
        else:
            del entry[rule]
            if len(entry) == 1:
                table[key] = next(iter(entry.items()))
            return True
        if not table:
            del self.buckets[_shape_of(rule)]
        return True

    def candidates(self, fields_by_sender: list[tuple]) -> Iterator[tuple[MatchRule, Owners]]:
        """Every rule whose exactly-compared fields equal the message's, with its owners."""
        first = fields_by_sender[0]
        for shape, (getter, table) in self.buckets.items():
            for fields in (fields_by_sender if shape & _SENDER else (first,)):
                entry = table.get(getter(fields))
                if entry is None:
                    continue
                if type(entry) is tuple:
                    yield entry
                else:
                    yield from entry.items()

    def __bool__(self) -> bool:
        return bool(self.buckets)

    def __len__(self) -> int:
        return sum(1 if type(entry) is tuple else len(entry) for _, table in self.buckets.values()
                   for entry in table.values())


class MatchIndex:
    """The match rules of every connection on the bus, indexed for delivery.

    The same rule added twice by one owner must be removed twice (dbus-daemon
    keeps one entry per AddMatch). `owner` is any hashable; the daemon passes
    its connection objects.
    """

    def __init__(self) -> None:
        self._counts: dict[Hashable, dict[MatchRule, int]] = {}
        self._distinct = 0  # rules with an owner
        self._broadcast_rules = _ShapeTable()  # eavesdrop='false': only see broadcasts
        self._eavesdrop_rules = _ShapeTable()  # eavesdrop='true': may also see unicast messages
        # Whether any rule says eavesdrop='true'; if not, a unicast message needs no lookup (read per message:
        # an attribute kept as rules come and go, not a property).
        self.has_eavesdroppers = False
        self._by_unique_name: dict[str, set[MatchRule]] = {}
        # Broadcast recipients by the header fields rules compare and the sender, for messages no
        # argument rule looked at. Emptied whenever a rule, an owner or a sender's names change.
        self._broadcast_recipients: dict[tuple, frozenset[Hashable]] = {}
        self._cached_senders: set[str | None] = set()  # the senders in its keys

    def _forget_cached(self) -> None:
        self._broadcast_recipients.clear()
        self._cached_senders.clear()

    def names_changed(self) -> None:
        """Some peer gained or lost a bus name: sender='name' rules may now match other senders."""
        self._forget_cached()

    def _table(self, rule: MatchRule) -> _ShapeTable:
        return self._eavesdrop_rules if rule.eavesdrop else self._broadcast_rules

    def add(self, owner: Hashable, rule: MatchRule) -> None:
        per_owner = self._counts.setdefault(owner, {})
        count = per_owner.get(rule, 0)
        per_owner[rule] = count + 1
        if count:
            return
        self._forget_cached()
        if self._table(rule).own(rule, owner):
            self._distinct += 1
            self.has_eavesdroppers = bool(self._eavesdrop_rules)
            for name in rule.unique_names():
                self._by_unique_name.setdefault(name, set()).add(rule)

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
        if own_rules or unique_name is None or unique_name in self._cached_senders:
            # Cached sets may hold the owner, or keys its signals made. Any other departure (a peer that
            # neither subscribed nor broadcast: every connection of a churn) leaves the cache, which kept
            # the bus's own NameOwnerChanged uncached.
            self._forget_cached()
        for rule in own_rules:
            self._forget_owner_of(rule, owner)
        if unique_name is None or not own_rules:
            return
        for rule in list(self._by_unique_name.get(unique_name, ())):
            for other in list(self._table(rule).owners_of(rule) or ()):
                per_owner = self._counts[other]
                del per_owner[rule]
                if not per_owner:
                    del self._counts[other]
                self._forget_owner_of(rule, other)

    def _forget_owner_of(self, rule: MatchRule, owner: Hashable) -> None:
        self._forget_cached()
        if not self._table(rule).disown(rule, owner):
            return
        self._distinct -= 1
        self.has_eavesdroppers = bool(self._eavesdrop_rules)
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

    def owners(self) -> list[Hashable]:
        return list(self._counts)

    def __len__(self) -> int:
        """Distinct rules on the bus."""
        return self._distinct

    def cached_broadcast(self, msg_type: int, interface: str | None, member: str | None, path: str | None,
                         sender: str | None) -> frozenset[Hashable] | None:
        """The recipients of a broadcast with these header fields if known already (no rule tests its
        arguments), else None: the bus's own signals skip building a header when no one listens."""
        return self._broadcast_recipients.get((msg_type, interface, member, path, sender))

    def recipients(self, msg: Any, sender_names: Collection[str], get_args: Callable[[], Sequence[Any]], *,
                   addressed_recipient: Hashable | None = None,
                   recipient_names: Collection[str] | None = None,
                   may_eavesdrop: Callable[[Any], bool] | None = None) -> Collection[Hashable]:
        """Every owner with a rule matching `msg`, each once, as `MatchRule.matches` decides.

        For a broadcast (no destination) that is every owner with a matching
        rule. For a message with a destination only eavesdrop='true' rules can
        match; pass the connection it is addressed to as `addressed_recipient`
        (it is left out: the daemon delivers to it directly) and the names it
        is primary owner of as `recipient_names` (for rules with a
        destination). `get_args` is called at most once, and only if a
        candidate rule filters on arguments.

        `may_eavesdrop(owner)` (for a message with a destination) says whether
        the owner's policy can ever let it eavesdrop: rules of owners that
        cannot are passed over before anything is matched or decoded, so a rule
        that can never deliver costs nothing on other peers' traffic.
        """
        broadcast = msg.destination is None
        if broadcast:
            # Signal after signal from one sender differ only in their bodies: unless a rule tests an
            # argument, the recipients are those of the last one (issue 14: a quarter of signal-1's CPU).
            cache_key = (msg.type, msg.interface, msg.member, msg.path, msg.sender)
            cached = self._broadcast_recipients.get(cache_key)
            if cached is not None:
                return cached
        body: Sequence[Any] = ()
        fetched = False
        tests_args = False

        def args_once() -> Sequence[Any]:
            nonlocal body, fetched
            if not fetched:
                body, fetched = get_args(), True
            return body

        senders = [msg.sender, *sender_names] if msg.sender is not None else list(sender_names) or [None]
        base = (msg.type, msg.interface, msg.member, msg.path)
        fields_by_sender = [(*base, name) for name in senders]
        tables = (self._broadcast_rules, self._eavesdrop_rules) if broadcast else (self._eavesdrop_rules,)
        found: set[Hashable] = set()
        for table in tables:
            for rule, owners in table.candidates(fields_by_sender):
                needs_check = rule.checks_beyond_key
                eligible: Collection[Hashable] = owners
                if may_eavesdrop is not None and not broadcast:
                    eligible = [owner for owner in owners if may_eavesdrop(owner)]
                    if not eligible:
                        continue
                if needs_check and rule.args:
                    tests_args = True
                if (not needs_check and broadcast) or \
                        rule.matches_beyond_header_key(msg, args_once, recipient_names):
                    found.update(eligible)
        if addressed_recipient is not None:
            found.discard(addressed_recipient)
        if broadcast and not tests_args and (msg.path is None or len(msg.path) <= CACHED_PATH_LIMIT):
            cache = self._broadcast_recipients
            if len(cache) >= RECIPIENTS_CACHE_LIMIT:
                self._forget_cached()
            self._cached_senders.add(msg.sender)
            recipients = cache[cache_key] = frozenset(found)
            return recipients
        return found


__all__ = ["MatchIndex"]
