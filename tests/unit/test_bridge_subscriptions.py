"""Unit tests of the bridge's subscription count: which upstream AddMatch and RemoveMatch local match rules cause."""

from __future__ import annotations

from busd.bridge.settings import NamePattern
from busd.bridge.subscriptions import Subscriptions
from busd.bus.match import MatchRule

CHANGED = "type='signal',sender='org.up.A',member='Changed'"
UPSTREAM_CHANGED = "type='signal',member='Changed',sender='org.up.A'"


class Peer:
    """Stands for a local peer: Subscriptions only keys its rules by it."""


def subscriptions(mirrors: dict[str, str] | None = None) -> Subscriptions:
    return Subscriptions((NamePattern("org.up.*"),), (mirrors or {}).get)


def test_the_first_rule_adds_upstream_and_the_last_removes() -> None:
    subs, a, b = subscriptions(), Peer(), Peer()
    assert subs.add(a, MatchRule.parse(CHANGED)) == UPSTREAM_CHANGED
    assert subs.add(b, MatchRule.parse(CHANGED)) is None
    assert subs.add(a, MatchRule.parse(CHANGED)) is None  # the same rule twice counts twice, as the bus does
    assert subs.counts == {UPSTREAM_CHANGED: 3} and list(subs) == [UPSTREAM_CHANGED]
    assert subs.remove(a, MatchRule.parse(CHANGED)) is None
    assert subs.remove(b, MatchRule.parse(CHANGED)) is None
    assert subs.remove(b, MatchRule.parse(CHANGED)) is None  # b has none left: nothing changes
    assert subs.remove(a, MatchRule.parse(CHANGED)) == UPSTREAM_CHANGED
    assert subs.counts == {}


def test_rules_that_need_nothing_upstream_are_not_kept() -> None:
    subs, a = subscriptions(), Peer()
    assert subs.add(a, MatchRule.parse("type='signal',sender='org.down.A'")) is None
    assert subs.remove(a, MatchRule.parse("type='signal',sender='org.down.A'")) is None
    assert subs.counts == {} and subs.by_peer == {}


def test_a_peer_leaving_removes_what_only_it_needed() -> None:
    subs, a, b = subscriptions(), Peer(), Peer()
    subs.add(a, MatchRule.parse(CHANGED))
    subs.add(a, MatchRule.parse("type='signal',interface='org.x.I'"))
    subs.add(b, MatchRule.parse(CHANGED))
    assert subs.peer_left(a) == ["type='signal',interface='org.x.I'"]
    assert subs.peer_left(a) == []
    assert subs.peer_left(b) == [UPSTREAM_CHANGED]
    assert subs.counts == {}


def test_rules_naming_an_upstream_peer_are_forgotten_with_the_upstream_connection() -> None:
    subs, a = subscriptions({":1.7": ":1.42"}), Peer()
    assert subs.add(a, MatchRule.parse("type='signal',sender=':1.7'")) == "type='signal',sender=':1.42'"
    assert subs.add(a, MatchRule.parse(CHANGED)) == UPSTREAM_CHANGED
    subs.unbind()
    # Upstream forgot the rule with the connection; what stays is added again on the next connection.
    assert list(subs) == [UPSTREAM_CHANGED]
    assert subs.remove(a, MatchRule.parse("type='signal',sender=':1.7'")) is None
    assert subs.peer_left(a) == [UPSTREAM_CHANGED]
