"""Audit mode (<busd:policy mode="audit"/>): the policy decides as always, but a denial only logs.

For tuning a policy on a live system: every message the rules deny is logged
as "policy audit: would deny ..." with the deciding rule and its file:line,
and let through. Eavesdropping stays as the rules say (auditing it would let
any peer read other peers' traffic), and so do name ownership and who may
connect. The daemon warns loudly at startup, and `busdctl status` says so.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from .policy import ConfigPeerPolicy, ConfigPolicy, Verdict

log = logging.getLogger("busd.policy")

WOULD_DENY = "policy audit: would deny %s by %s rule %s (uid %s)"


class AuditPeerPolicy:
    """A peer's compiled rules, with denials of messages logged and turned into allowances."""

    def __init__(self, inner: ConfigPeerPolicy, uid: int | None):
        self.inner = inner
        self.uid = uid
        self.may_eavesdrop = inner.may_eavesdrop

    def can_own(self, name: str) -> Verdict:
        return self.inner.can_own(name)

    def can_send(self, h: Any, receiver_names: Collection[str], requested_reply: bool, nfds: int) -> Verdict:
        verdict = self.inner.can_send(h, receiver_names, requested_reply, nfds)
        if verdict.allowed:
            return verdict
        log.warning(WOULD_DENY, h.describe(), "send", verdict.rule or "(default deny)", self.uid)
        return Verdict(True, verdict.rule)

    def can_receive(self, h: Any, sender_names: Collection[str], requested_reply: bool, nfds: int,
                    eavesdrop: bool) -> Verdict:
        verdict = self.inner.can_receive(h, sender_names, requested_reply, nfds, eavesdrop)
        if verdict.allowed or eavesdrop:
            return verdict
        log.warning(WOULD_DENY, h.describe(), "receive", verdict.rule or "(default deny)", self.uid)
        return Verdict(True, verdict.rule)


class AuditPolicy:
    """A compiled configuration in audit mode."""

    def __init__(self, inner: ConfigPolicy):
        self.inner = inner
        self.enforced = inner.enforced
        self._peers: dict[tuple[int | None, int], AuditPeerPolicy] = {}

    def for_peer(self, uid: int | None, gids: Collection[int]) -> AuditPeerPolicy:
        compiled = self.inner.for_peer(uid, gids)
        key = (uid, id(compiled))
        peer = self._peers.get(key)
        if peer is None:
            peer = self._peers[key] = AuditPeerPolicy(compiled, uid)
        return peer

    def allows_connection(self, uid: int | None, user_groups: Collection[int] | None = None) -> Verdict:
        return self.inner.allows_connection(uid, user_groups)


__all__ = ["AuditPeerPolicy", "AuditPolicy", "WOULD_DENY"]
