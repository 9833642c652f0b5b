"""dev.busd.Policy1, served by the driver: ask the running bus's policy which rule decides a message.

Check(a{sv} query) -> a{sv} answer and Dump() -> a(ssa(sss)) are privileged
like BecomeMonitor (root and the bus's own user): the rules of a system bus
say a lot about it. The query's fields are busd.bus.policy_query.PolicyQuery's;
when the destination has an owner on this bus and no receiver is given, the
owner's uid, groups and names are the receiver's, so the answer is what the
bus would do to that message now. Mode (a property) is "enforce", "audit"
or "none" (no rules: everything is allowed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..wire.marshal import Variant
from . import errors
from .errors import DriverError
from .policy_audit import AuditPolicy
from .policy_query import PolicyQuery, PolicyQueryError, check, dump

if TYPE_CHECKING:
    from ..wire.message import Header
    from .peer import Peer
    from .driver_host import DriverHost

POLICY_INTERFACE = "dev.busd.Policy1"


def policy_mode(bus: DriverHost) -> str:
    policy = bus.policy
    if isinstance(policy, AuditPolicy):
        return "audit"
    return "enforce" if policy.enforced else "none"


def _variant(value: Any) -> Variant:
    if isinstance(value, bool):
        return Variant("b", value)
    return Variant("s", str(value))


class PolicyMethods:
    """The handlers of dev.busd.Policy1."""

    def __init__(self, bus: DriverHost):
        self.bus = bus

    def properties(self) -> dict[str, Variant]:
        return {"Mode": Variant("s", policy_mode(self.bus))}

    def check(self, peer: Peer, h: Header, args: list) -> list:
        fields = {key: value.value if isinstance(value, Variant) else value for key, value in args[0].items()}
        bus = self.bus
        receiver_names: set[str] = set()
        receiver = ""
        destination = fields.get("destination")
        if destination and "receiver_uid" not in fields:
            target = bus.peers.get(destination) if destination[0] == ":" else bus.registry.owner(destination)
            if target is not None:
                creds = target.credentials
                receiver = target.unique_name or ""
                receiver_names = set(target.names) | set(bus.registry.all_names_of(target))
                if creds.uid is not None:
                    fields["receiver_uid"] = creds.uid
                    fields["receiver_gids"] = tuple(creds.policy_groups)
        try:
            answer = check(bus.policy, PolicyQuery.from_dict(fields), receiver_names)
        except (PolicyQueryError, TypeError) as exc:
            raise DriverError(errors.INVALID_ARGS, str(exc)) from None
        flat: dict[str, Variant] = {"mode": Variant("s", policy_mode(bus)), "receiver": Variant("s", receiver)}
        for key, value in answer.items():
            if isinstance(value, dict):
                for inner, item in value.items():
                    flat[f"{key}_{inner}"] = _variant(item)
            else:
                flat[key] = _variant(value)
        return [flat]

    def dump(self, peer: Peer, h: Header, args: list) -> list:
        return [[(context["context"], context["applies_to"],
                  [(rule["kind"], rule["rule"], rule["origin"]) for rule in context["rules"]])
                 for context in dump(self.bus.policy)]]


__all__ = ["POLICY_INTERFACE", "PolicyMethods", "policy_mode"]
