"""Security policy: who may own which names and send or receive which messages.

This module is the door between the bus and the <policy> rules of the
configuration. The bus asks a `BusPolicy` for a `PeerPolicy` once per
connection (rules depend on the peer's uid and groups) and consults it on every
message when `BusPolicy.enforced` is true; a bus whose rules allow everything
skips the checks entirely, so they cost nothing on the per-message path.

Verdicts are `Verdict(allowed, rule)`: `rule` (the deciding rule, or None for the
default) is what a denial's log line names.
"""

from __future__ import annotations

from typing import Any, Collection, NamedTuple, Protocol


class Verdict(NamedTuple):
    allowed: bool
    rule: Any = None


ALLOWED = Verdict(True)


class PeerPolicy(Protocol):
    def can_own(self, name: str) -> Verdict: ...

    def can_send(self, h: Any, receiver_names: Collection[str], requested_reply: bool,
                 nfds: int) -> Verdict: ...

    def can_receive(self, h: Any, sender_names: Collection[str], requested_reply: bool,
                    nfds: int, eavesdrop: bool) -> Verdict: ...


class BusPolicy(Protocol):
    enforced: bool

    def for_peer(self, uid: int | None, gids: Collection[int]) -> PeerPolicy: ...


class _AllowEverything:
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
