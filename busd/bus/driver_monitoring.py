"""org.freedesktop.DBus's methods about traffic: match rules, becoming a monitor, and the Debug.Stats counters.

Handlers take (peer, header, arguments) and return the reply's body (its
signature is the driver table's), or None when they answered by themselves.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from ..wire.message import Header
from ..wire.wellknown import DRIVER_NAME
from . import errors
from .driver_names import peer_of_name
from .errors import DriverError
from .match import MatchRule, MatchRuleInvalid, MatchRuleNotFound
from .ownership import NameEvent
from .stats import StatsPeaks, bus_stats, connection_stats

if TYPE_CHECKING:
    from .driver_host import DriverHost
    from .peer import Peer

log = logging.getLogger("busd.driver")


def _parse_rule(text: str) -> MatchRule:
    try:
        return MatchRule.parse(text)
    except MatchRuleInvalid as exc:
        raise DriverError(exc.error_name, exc.driver_text) from None


class MonitoringMethods:
    """AddMatch, RemoveMatch, BecomeMonitor, GetStats, GetConnectionStats and GetAllMatchRules."""

    def __init__(self, bus: DriverHost):
        self.bus = bus
        self.peaks = StatsPeaks(bus)  # bus-wide peaks for GetStats, kept from the bus's events
        bus.observers.append(self.peaks)

    # ------------------------------------------------------------ match rules

    def add_match(self, peer: Peer, h: Header, args: list) -> list:
        rule = _parse_rule(args[0])
        bus = self.bus
        limit = bus.limits.max_match_rules_per_connection
        if peer.match_count >= limit:
            raise DriverError(errors.LIMITS_EXCEEDED,
                              f'Connection "{peer.unique_name}" is not allowed to add more match rules '
                              f"(increase limits in configuration file if required; "
                              f"max_match_rules_per_connection={limit})")
        uid = peer.credentials.uid
        if rule.eavesdrop and uid not in (0, os.getuid()):
            # As dbus-daemon (since 1.11.16): only root and the bus's own user may eavesdrop, as only
            # they may BecomeMonitor.
            log.warning("refusing AddMatch with eavesdrop='true' from %s (uid %s): only root or uid %d may "
                        "eavesdrop", peer.unique_name, uid, os.getuid())
            raise DriverError(errors.ACCESS_DENIED,
                              f"uid {uid} is not allowed to call AddMatch with eavesdrop='true': only the bus's "
                              f"own user or root may")
        if not bus.ledger.charge_match_rule(peer):
            user = peer.user
            raise DriverError(errors.LIMITS_EXCEEDED,
                              f'Connection "{peer.unique_name}" is not allowed to add more match rules: UID '
                              f"{user.uid if user else None} has too many (max_match_rules_per_user="
                              f"{bus.ledger.quotas.match_rules})")
        bus.matches.add(peer, rule)
        peer.match_count += 1
        peer.peak_match_count = max(peer.peak_match_count, peer.match_count)
        for observer in bus.observers:
            observer.match_added(peer, rule)
        return []

    def remove_match(self, peer: Peer, h: Header, args: list) -> list:
        rule = _parse_rule(args[0])
        bus = self.bus
        try:
            bus.matches.remove(peer, rule)
        except MatchRuleNotFound:
            raise DriverError(errors.MATCH_RULE_NOT_FOUND,
                              "The given match rule wasn't found and can't be removed") from None
        peer.match_count -= 1
        if peer.user is not None:
            peer.user.match_rules -= 1
        for observer in bus.observers:
            observer.match_removed(peer, rule)
        return []

    # ------------------------------------------------------------ monitoring

    def become_monitor(self, peer: Peer, h: Header, args: list) -> None:
        rule_texts, flags = args
        if flags != 0:
            raise DriverError(errors.INVALID_ARGS, "BecomeMonitor does not support any flags yet")
        rules = tuple(_parse_rule(text).with_eavesdrop() for text in rule_texts)  # monitors see unicast too
        bus = self.bus
        if not h.no_reply_expected:  # answered while still a plain peer, before its names go
            bus.outbox.send_reply(peer, h.serial)
        # A monitor owns no names and has no match rules. As from dbus-daemon, it loses its
        # unique name first, then every well-known name, each with NameLost.
        name = peer.unique_name
        events = [NameEvent("lost", name, peer, None), NameEvent("owner_changed", name, peer, None)]
        events += bus.registry.remove_peer(peer)
        bus.matches.remove_owner(peer)
        if peer.user is not None:
            peer.user.match_rules -= peer.match_count
        peer.match_count = 0
        bus.ledger.settle_names(peer, 0)
        bus.emit_name_events(events)
        del bus.peers[name]
        peer.monitor = True
        peer.monitor_rules = rules
        bus.monitors.append(peer)
        log.info("%s became a monitor with %d match rules", name, len(rules))
        return None

    # ------------------------------------------------------------ org.freedesktop.DBus.Debug.Stats

    def get_stats(self, peer: Peer, h: Header, args: list) -> list:
        return [bus_stats(self.bus, self.peaks)]

    def get_connection_stats(self, peer: Peer, h: Header, args: list) -> list:
        name = args[0]
        if name == DRIVER_NAME:
            raise DriverError(errors.INVALID_ARGS,
                              f'GetConnectionStats is not meaningful for the message bus "{DRIVER_NAME}" itself')
        return [connection_stats(self.bus, peer_of_name(self.bus, name, "statistics"))]

    def get_all_match_rules(self, peer: Peer, h: Header, args: list) -> list:
        bus = self.bus
        # Every connection, as dbus-daemon.
        return [{name: [str(rule) for rule in bus.matches.rules(p)] for name, p in bus.peers.items()}]


__all__ = ["MonitoringMethods"]
