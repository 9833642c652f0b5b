"""What the bus itself sends, as org.freedesktop.DBus: replies, errors and signals, and what monitors see of them.

Every message from the bus takes its serial from one counter here. Monitors see
each of them; the recipient's receive rules apply to them too (a denied one is
not delivered, and monitors see it followed by the AccessDenied error the bus
addresses to itself, as with dbus-daemon). `queue_to_monitors` is also the
router's way of showing monitors what peers send. Everything goes out through
the ledger (ledger.py): it counts against the recipient's max_outgoing_bytes and
its user's quota like any message, and a full queue drops it with one log line.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Collection

from ..wire.build import build_string_to, string_runs
from ..wire.message import (
    ERROR, METHOD_CALL, METHOD_RETURN, NO_REPLY_EXPECTED, SIGNAL, Header, build_message, parse_header, read_body,
)
from ..wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH
from . import errors

if TYPE_CHECKING:
    from .ledger import Ledger
    from .match_index import MatchIndex
    from .peer import Peer
    from .policy import BusPolicy

log = logging.getLogger("busd.bus")

DRIVER_NAMES = frozenset({DRIVER_NAME})  # the names a message from the bus comes from
# The prepared runs of the bus's messages with one string argument to one peer (build_string_to): its
# replies, and its signals by member (NameAcquired and NameLost).
_REPLY_RUNS = string_runs(None, None, None, None, DRIVER_NAME)
_NO_ONE: frozenset = frozenset()  # the cached recipients of a broadcast no rule matches
_SIGNAL_RUNS = {member: string_runs(DRIVER_PATH, DRIVER_INTERFACE, member, None, DRIVER_NAME)
                for member in ("NameAcquired", "NameLost")}


def queue_to_monitors(ledger: Ledger, monitors: list[Peer], head: bytes, body: Any, h: Header,
                      sender_names: Collection[str], get_args: Callable[[], list],
                      destination_names: Collection[str] | None = None) -> None:
    """Queue a message (already stamped with its sender) for every monitor whose rules it matches and
    whose queue has room (a monitor that stops reading misses messages, never grows without bound)."""
    for monitor in monitors:
        rules = monitor.monitor_rules
        if rules and not any(rule.matches(h, sender_names, get_args, destination_names) for rule in rules):
            continue
        ledger.queue(monitor, head, body)


class DriverOutbox:
    """The bus's own messages: `monitors` and `matches` are the bus's, `policy` follows Bus.set_policy()."""

    def __init__(self, monitors: list[Peer], matches: MatchIndex, policy: BusPolicy, ledger: Ledger):
        self.monitors = monitors
        self.matches = matches
        self.policy = policy
        self.ledger = ledger
        self.serial = 0  # of the last message the bus sent
        # Errors the bus answered or refused with, by name (a refusal nobody is told of counts too): the metrics'
        self.errors: dict[str, int] = {}

    def next_serial(self) -> int:
        self.serial = serial = (self.serial % 0xFFFFFFFF) + 1
        return serial

    def send(self, target: Peer | None, message: bytes) -> None:
        """Queue a message the bus built for `target` (None: for monitors only); monitors see it too."""
        monitors = self.monitors
        enforced = self.policy.enforced
        h = None
        if monitors or (target is not None and enforced):
            h = parse_header(message, validate_body=False)
        if monitors:
            queue_to_monitors(self.ledger, monitors, message, b"", h, DRIVER_NAMES, lambda: read_body(message, h))
        if target is None or target.conn.closed:
            return
        if enforced:
            verdict = target.policy.can_receive(h, DRIVER_NAMES, h.type in (METHOD_RETURN, ERROR), 0, False)
            if not verdict.allowed:
                log.warning("policy denied %s by receive rule %s: the bus -> %s (uid %s)", h.describe(),
                            verdict.rule or "(default deny)", target.unique_name, target.credentials.uid)
                if monitors:
                    error = build_message(ERROR, self.next_serial(), error_name=errors.ACCESS_DENIED,
                                          reply_serial=h.serial, destination=DRIVER_NAME, sender=DRIVER_NAME,
                                          signature="s", body=[f"Rejected receive message: {h.describe()}"])
                    eh = parse_header(error, validate_body=False)
                    queue_to_monitors(self.ledger, monitors, error, b"", eh, DRIVER_NAMES,
                                      lambda: read_body(error, eh))
                return
        # As dbus-daemon: a reply, error or signal of the bus toward a full queue is dropped and logged.
        self.ledger.queue(target, message, b"")

    def send_error(self, target: Peer, reply_serial: int, error_name: str, text: str) -> None:
        self.errors[error_name] = self.errors.get(error_name, 0) + 1
        if target.conn.closed:
            return
        message = build_message(ERROR, self.next_serial(), error_name=error_name,
                                reply_serial=reply_serial, destination=target.unique_name,
                                sender=DRIVER_NAME, signature="s", body=[text])
        self.send(target, message)

    def send_reply(self, target: Peer, reply_serial: int, signature: str = "", body: list | tuple = ()) -> None:
        if signature == "s" and target.unique_name is not None:
            head, tail = _REPLY_RUNS
            self.send(target, build_string_to(METHOD_RETURN, self.next_serial(), head, reply_serial,
                                              target.unique_name, tail, body[0]))
            return
        message = build_message(METHOD_RETURN, self.next_serial(), reply_serial=reply_serial,
                                destination=target.unique_name, sender=DRIVER_NAME,
                                signature=signature, body=body)
        self.send(target, message)

    def refuse(self, sender: Peer, h: Header, error_name: str, text: str, monitors_only: bool = False) -> None:
        """Answer a message the bus will not deliver with an error.

        The sender gets it only if it expects a reply (the specification's rule; dbus-daemon
        sends it regardless); monitors always see it, as they do on dbus-daemon.
        """
        if not monitors_only and h.type == METHOD_CALL and not h.flags & NO_REPLY_EXPECTED:
            self.send_error(sender, h.serial, error_name, text)
            return
        self.errors[error_name] = self.errors.get(error_name, 0) + 1
        if self.monitors:
            message = build_message(ERROR, self.next_serial(), error_name=error_name,
                                    reply_serial=h.serial, destination=sender.unique_name,
                                    sender=DRIVER_NAME, signature="s", body=[text])
            self.send(None, message)

    def emit_signal(self, member: str, signature: str, body: list, destination: Peer | None = None) -> None:
        """A signal of org.freedesktop.DBus: unicast to `destination`, or broadcast by match rules.

        A signal no one would receive is not built: a departed peer's NameLost, or a unique
        name's NameOwnerChanged with no subscriber (most watch well-known names, with arg0)
        was two of the five messages a connection's life cost the bus.
        """
        monitors = self.monitors
        if destination is not None:
            if destination.conn.closed and not monitors:
                return
            runs = _SIGNAL_RUNS.get(member) if signature == "s" and destination.unique_name is not None else None
            if runs is not None:
                self.send(destination, build_string_to(SIGNAL, self.next_serial(), runs[0], None,
                                                       destination.unique_name, runs[1], body[0]))
                return
            self.send(destination, build_message(SIGNAL, self.next_serial(), path=DRIVER_PATH,
                                                 interface=DRIVER_INTERFACE, member=member, sender=DRIVER_NAME,
                                                 destination=destination.unique_name,
                                                 signature=signature, body=body))
            return
        if not monitors and self.matches.cached_broadcast(SIGNAL, DRIVER_INTERFACE, member, DRIVER_PATH,
                                                          DRIVER_NAME) == _NO_ONE:
            return
        h = Header()
        h.type = SIGNAL
        h.path = DRIVER_PATH
        h.interface = DRIVER_INTERFACE
        h.member = member
        h.sender = DRIVER_NAME
        h.signature = signature
        names = DRIVER_NAMES
        enforced = self.policy.enforced
        targets = [target for target in self.matches.recipients(h, names, lambda: body)
                   if not target.monitor and not target.conn.closed
                   and (not enforced or target.policy.can_receive(h, names, False, 0, False).allowed)]
        if not targets and not monitors:
            return
        message = build_message(SIGNAL, self.next_serial(), path=DRIVER_PATH, interface=DRIVER_INTERFACE,
                                member=member, sender=DRIVER_NAME, signature=signature, body=body)
        ledger = self.ledger
        for target in targets:
            ledger.queue(target, message, b"")
        if monitors:
            queue_to_monitors(ledger, monitors, message, b"", h, names, lambda: body)


__all__ = ["DRIVER_NAMES", "DriverOutbox", "queue_to_monitors"]
