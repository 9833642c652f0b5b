"""Signal subscriptions: the local match rules an imported name's signals could match, held as upstream rules.

A local rule that could match a signal from an imported name needs an upstream
rule: the same rule as a signal rule without eavesdropping, its sender (if a
mirror's local unique name) translated to the upstream connection's. Upstream
rules are counted: added upstream with the first local rule that needs them,
removed with the last. A rule naming an upstream unique name is *bound* to the
upstream connection, and is forgotten with it. This module only keeps count; the
bridge sends AddMatch and RemoveMatch for the rules it is handed back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ..bus.match import MatchRule
from ..wire.message import SIGNAL
from .settings import NamePattern, matches_any

if TYPE_CHECKING:
    from ..bus.peer import Peer


@dataclasses.dataclass(frozen=True)
class Subscription:
    """One local peer's rule and the upstream rule it needs."""

    rule: MatchRule
    upstream_rule: str
    bound: bool  # its sender is an upstream unique name: it dies with the upstream connection


class Subscriptions:
    """The upstream match rules that local peers' rules need, counted.

    `upstream_name_of(local unique name)` is the upstream unique name of the mirror
    that has it here, or None for a local peer.
    """

    def __init__(self, imports: tuple[NamePattern, ...], upstream_name_of: Callable[[str], str | None]):
        self.imports = imports
        self.upstream_name_of = upstream_name_of
        self.counts: dict[str, int] = {}  # upstream match rule -> how many local rules need it
        self.by_peer: dict["Peer", list[Subscription]] = {}

    def __iter__(self) -> Iterator[str]:
        """The upstream rules held (what to add again on a new upstream connection)."""
        return iter(self.counts)

    def upstream_rule(self, rule: MatchRule) -> tuple[str, bool] | None:
        """The upstream rule a local rule needs (and whether it names an upstream unique name), or None."""
        if not self.imports or rule.type not in (None, SIGNAL) or rule.destination is not None:
            return None
        sender = rule.sender
        bound = False
        if sender is not None:
            if sender[0] == ":":
                upstream_name = self.upstream_name_of(sender)
                if upstream_name is None:
                    return None
                sender, bound = upstream_name, True
            elif not matches_any(self.imports, sender):
                return None
        return str(dataclasses.replace(rule, type=SIGNAL, sender=sender, eavesdrop=False)), bound

    def add(self, peer: "Peer", rule: MatchRule) -> str | None:
        """`peer` added `rule`: the upstream rule to add upstream now (the first to need it), or None."""
        translated = self.upstream_rule(rule)
        if translated is None:
            return None
        upstream_rule, bound = translated
        self.by_peer.setdefault(peer, []).append(Subscription(rule, upstream_rule, bound))
        return self._count(upstream_rule)

    def remove(self, peer: "Peer", rule: MatchRule) -> str | None:
        """`peer` removed `rule`: the upstream rule to remove upstream now (none needs it any more), or None."""
        entries = self.by_peer.get(peer)
        if not entries:
            return None
        for index, entry in enumerate(entries):
            if entry.rule == rule:
                del entries[index]
                return self._uncount(entry.upstream_rule)
        return None

    def peer_left(self, peer: "Peer") -> list[str]:
        """`peer` left the bus with its rules: the upstream rules to remove upstream now."""
        gone = (self._uncount(entry.upstream_rule) for entry in self.by_peer.pop(peer, ()))
        return [upstream_rule for upstream_rule in gone if upstream_rule is not None]

    def unbind(self) -> None:
        """The upstream connection is gone: forget the rules that named its peers (upstream forgot them too)."""
        for entries in self.by_peer.values():
            for entry in [entry for entry in entries if entry.bound]:
                entries.remove(entry)
                self._uncount(entry.upstream_rule)

    def _count(self, upstream_rule: str) -> str | None:
        count = self.counts.get(upstream_rule, 0)
        self.counts[upstream_rule] = count + 1
        return None if count else upstream_rule

    def _uncount(self, upstream_rule: str) -> str | None:
        count = self.counts.get(upstream_rule)
        if count is None:
            return None
        if count > 1:
            self.counts[upstream_rule] = count - 1
            return None
        del self.counts[upstream_rule]
        return upstream_rule


__all__ = ["Subscription", "Subscriptions"]
