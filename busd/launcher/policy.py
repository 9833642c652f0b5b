"""From a configuration's <policy> elements to the `PolicyRules` the bus compiles."""

from __future__ import annotations

import logging

from ..bus.policy import BusPolicy, ConfigPolicy, PolicyRule, PolicyRules
from ..bus.policy_audit import AuditPolicy
from ..config.model import BusConfig

log = logging.getLogger("busd.policy")


def policy_rules(config: BusConfig) -> PolicyRules:
    """The rules of every <policy>, sorted by the context, user or group they apply to."""
    default: list[PolicyRule] = []
    mandatory: list[PolicyRule] = []
    by_uid: dict[int, list[PolicyRule]] = {}
    by_gid: dict[int, list[PolicyRule]] = {}
    not_at_console: list[PolicyRule] = []
    for policy in config.policies:
        where = policy.applies_to
        if where == "default":
            default.extend(policy.rules)
        elif where == "mandatory":
            mandatory.extend(policy.rules)
        elif where == "user":
            by_uid.setdefault(policy.uid, []).extend(policy.rules)
        elif where == "group":
            by_gid.setdefault(policy.gid, []).extend(policy.rules)
        else:
            # Nobody is "at the console" to busd (nor to dbus-daemon without a console auth dir):
            # at_console="false" rules apply to every peer with a uid, at_console="true" ones to none.
            log.info("%s:%d: <policy at_console=\"%s\">: busd treats no connection as being at the "
                     "console, so these rules apply to %s", policy.file, policy.line,
                     str(policy.at_console).lower(), "no one" if policy.at_console else "every connection")
            if not policy.at_console:
                not_at_console.extend(policy.rules)
    return PolicyRules(default=tuple(default), mandatory=tuple(mandatory),
                       by_uid={uid: tuple(rules) for uid, rules in by_uid.items()},
                       by_gid={gid: tuple(rules) for gid, rules in by_gid.items()},
                       not_at_console=tuple(not_at_console))


def policy_mode(config: BusConfig) -> str:
    """<busd:policy mode="audit"/> (only in the configuration: no flag turns it on) or "enforce"."""
    mode = "enforce"
    for element in config.extensions:
        if element.name == "policy":
            given = element.attributes.get("mode", "enforce")
            if given not in ("audit", "enforce"):
                log.error('%s:%d: <busd:policy mode="%s">: the mode is "audit" or "enforce"; enforcing',
                          element.file, element.line, given)
                given = "enforce"
            mode = given
    return mode


def compile_policy(config: BusConfig) -> BusPolicy:
    """Compile a configuration's <policy> elements for the bus (`Bus.set_policy`); in audit mode, a policy
    that logs what it would deny and lets it through."""
    compiled = ConfigPolicy(policy_rules(config))
    if policy_mode(config) != "audit":
        return compiled
    log.warning("POLICY AUDIT MODE IS ON (<busd:policy mode=\"audit\"/>): messages the policy denies are "
                "only logged (\"policy audit: would deny ...\") and delivered. Nothing is enforced but "
                "eavesdropping, name ownership and who may connect; remove the element to enforce the policy")
    return AuditPolicy(compiled)


__all__ = ["compile_policy", "policy_mode", "policy_rules"]
