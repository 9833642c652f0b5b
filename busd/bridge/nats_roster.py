"""The federation as one node sees it: the nodes alive, the names each claims, who owns each name, who listens.

Theory. Every node publishes its whole state (a *heartbeat*: its exported names
with their claim times and local owners, the signal rules its local subscribers
need, and its local callers that other nodes have stand-ins for) on change and
every HEARTBEAT seconds. The roster keeps the
last heartbeat of each node and forgets a node whose heartbeats stop for TTL
seconds (SIGKILL, cable pulled, NATS gone) or that said goodbye.

Ownership is a pure function of the heartbeats, so every node that has heard the
same heartbeats agrees: the primary owner of a name is the claim with the
earliest (claim time, node name); the others are its queue, in that order, and
the next takes over when the primary's claim goes. A node that claims a name
already owned elsewhere stamps its claim later than every claim it has heard
(claim_time()), so a newcomer queues even when clocks disagree. A claim keeps its
time across NATS reconnections: a node does not lose its place by reconnecting.

No I/O here: the federation feeds heartbeats in and asks questions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..bus.match import MatchRule, MatchRuleInvalid

HEARTBEAT = 1.0  # seconds between heartbeats
TTL = 3.5  # a node silent this long has left

Owner = tuple[str, str]  # (node, the owner's unique name on that node)


@dataclass
class Claim:
    """One node's claim on a name: when it was made (wall clock, the same on every node), and the local owner."""

    stamp: float
    owner: str


@dataclass
class NodeState:
    """The last heartbeat of one node."""

    node: str
    instance: str  # a restarted node is a new instance
    seen: float  # monotonic time it was heard
    claims: dict[str, Claim] = field(default_factory=dict)
    interest: tuple[MatchRule, ...] = ()
    interest_text: tuple[str, ...] = ()
    callers: frozenset[str] = frozenset()  # its local peers that other nodes have stand-ins for


def heartbeat(node: str, instance: str, claims: dict[str, Claim], interest: Iterable[str],
              callers: Iterable[str] = ()) -> bytes:
    return json.dumps({"node": node, "instance": instance,
                       "claims": {name: [claim.stamp, claim.owner] for name, claim in claims.items()},
                       "interest": sorted(interest), "callers": sorted(callers)}, separators=(",", ":")).encode()


class HeartbeatError(ValueError):
    """A heartbeat that is not one (another program on the subject, or a busd from the future)."""


def _rules(texts: Sequence[str]) -> tuple[MatchRule, ...]:
    rules = []
    for text in texts:
        try:
            rules.append(MatchRule.parse(text))
        except MatchRuleInvalid:
            continue  # a rule this version cannot read: its signals do not cross to that node
    return tuple(rules)


class Roster:
    """The other nodes' last heartbeats, and what they mean for names and signals."""

    def __init__(self, me: str, clock: Callable[[], float] = time.monotonic):
        self.me = me
        self.clock = clock
        self.nodes: dict[str, NodeState] = {}

    def heard(self, data: bytes) -> tuple[str, bool, bool]:
        """A heartbeat arrived: (its node, whether the node is new here, whether its claims changed)."""
        try:
            payload: dict[str, Any] = json.loads(data)
            node, instance = str(payload["node"]), str(payload["instance"])
            claims = {str(name): Claim(float(stamp), str(owner)) for name, (stamp, owner) in payload["claims"].items()}
            interest = tuple(str(text) for text in payload["interest"])
            callers = frozenset(str(name) for name in payload.get("callers", ()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise HeartbeatError(f"not a busd heartbeat: {exc}") from None
        old = self.nodes.get(node)
        state = NodeState(node, instance, self.clock(), claims, callers=callers)
        if old is not None and old.interest_text == interest:
            state.interest, state.interest_text = old.interest, old.interest_text
        else:
            state.interest, state.interest_text = _rules(interest), interest
        self.nodes[node] = state
        fresh = old is None or old.instance != instance
        return node, fresh, fresh or old.claims != claims

    def forget(self, node: str) -> bool:
        return self.nodes.pop(node, None) is not None

    def expire(self, ttl: float = TTL) -> list[str]:
        """Forget the nodes silent for `ttl` seconds; their names."""
        limit = self.clock() - ttl
        gone = [node for node, state in self.nodes.items() if state.seen < limit]
        for node in gone:
            del self.nodes[node]
        return gone

    def queues(self, mine: dict[str, Claim]) -> dict[str, list[Owner]]:
        """Every claimed name -> its owners in queue order (the primary first), this node's claims included."""
        entries: dict[str, list[tuple[float, str, str]]] = {}
        for name, claim in mine.items():
            entries.setdefault(name, []).append((claim.stamp, self.me, claim.owner))
        for node, state in self.nodes.items():
            for name, claim in state.claims.items():
                entries.setdefault(name, []).append((claim.stamp, node, claim.owner))
        return {name: [(node, owner) for _stamp, node, owner in sorted(found)] for name, found in entries.items()}

    def primaries(self, mine: dict[str, Claim]) -> dict[str, Owner]:
        return {name: queue[0] for name, queue in self.queues(mine).items()}

    def claim_time(self, name: str) -> float:
        """The stamp for a new claim on `name` by this node: now, but after every claim heard on it."""
        latest = max((state.claims[name].stamp for state in self.nodes.values() if name in state.claims),
                     default=0.0)
        return max(time.time(), latest + 0.001)

    def interested(self, msg: Any, sender_names: Collection[str], get_args: Callable[[], Sequence[Any]]) -> list[str]:
        """The nodes that have a subscriber for signal `msg` (arg filters included)."""
        found = []
        for node, state in self.nodes.items():
            for rule in state.interest:
                if rule.matches(msg, sender_names, get_args):
                    found.append(node)
                    break
        return found


__all__ = ["HEARTBEAT", "TTL", "Claim", "HeartbeatError", "NodeState", "Owner", "Roster", "heartbeat"]
