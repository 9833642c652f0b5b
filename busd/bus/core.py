"""The bus: peers, unique names, routing, reply tracking, match rules and monitors.

Theory. `Bus.receive()` is the per-message path. It is handed a validated
message and its parsed header; it stamps the sender (cached SENDER field bytes
per peer and byte order), picks the recipients and queues the same bytes on each
of them. Bodies are never read, except by the driver for its own calls and by
match rules that filter on arguments. Replies pass only when a call is pending
for them: `pending` maps (caller, serial, callee) to the deadline, kept in
insertion order so expiry is a sweep from the front. As in dbus-daemon, a caller
may reuse a serial for calls to different callees, but a call that would
duplicate a key still pending is refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable, Collection

from ..wire.marshal import LITTLE
from ..wire.message import (
    ERROR, METHOD_CALL, METHOD_RETURN, NO_AUTO_START, NO_REPLY_EXPECTED, SIGNAL, TYPE_NAMES, Header, build_message,
    parse_header,
    read_body, sender_field, stamp_sender,
)
from ..wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH
from . import errors
from .driver import Driver
from .errors import DriverError
from .limits import Limits
from .match import MatchRule
from .match_index import MatchIndex
from .observers import BusObserver
from .ownership import NameEvent, NameRegistry
from .policy import AllowEverything, BusPolicy
from .ports import PeerLink

log = logging.getLogger("busd.bus")

SOFT_QUEUE_LIMIT = 8 << 20
_DRIVER_NAMES = frozenset({DRIVER_NAME})
NOT_ACTIVE_YET = ":not.active.yet"  # the sender monitors see for a peer before its Hello, as on dbus-daemon


class Peer:
    """The bus side of one authenticated connection; `conn` is its transport, seen through the PeerLink port."""

    __slots__ = ("conn", "unique_name", "names", "sender_fields", "hello_done", "monitor",
                 "monitor_rules", "expecting", "replies_outstanding", "credentials", "serial_in",
                 "match_count", "peak_match_count", "policy", "auth_uid", "counted_uid", "__weakref__")

    def __init__(self, conn: PeerLink):
        self.conn = conn
        self.unique_name: str | None = None
        self.names: set[str] = set()  # unique name + primary-owned well-known names
        self.sender_fields: dict[int, bytes] = {}
        self.hello_done = False
        self.monitor = False
        self.monitor_rules: list[MatchRule] = []
        self.expecting: set[tuple[Peer, int, Peer]] = set()  # keys of the calls this peer must answer
        self.replies_outstanding = 0  # calls this peer made that await an answer
        self.credentials = conn.credentials
        self.auth_uid: int | None = conn.credentials.uid
        self.counted_uid: int | None = None  # counted against max_connections_per_user (since Hello)
        self.serial_in = 0
        self.match_count = 0
        self.peak_match_count = 0

    def __repr__(self) -> str:
        return f"<Peer {self.unique_name or self.conn.label}>"


class Bus:
    """Bus semantics, independent of how bytes reach it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, guid: str, limits: Limits | None = None,
                 bus_type: str = "session"):
        self.loop = loop
        self.guid = guid
        self.limits = limits or Limits()
        self.bus_type = bus_type
        self.peers: dict[str, Peer] = {}
        self.links: dict[PeerLink, Peer | None] = {}  # every link, with its peer once authenticated
        self._incomplete: set[PeerLink] = set()  # accepted, no Hello yet
        self.connections_per_uid: dict[int, int] = {}
        self.registry = NameRegistry()
        self.matches = MatchIndex()
        self.monitors: list[Peer] = []
        self.pending: dict[tuple[Peer, int, Peer], float] = {}  # (caller, serial, callee) -> deadline
        self._next_unique = 0
        self._driver_serial = 0
        self._flush_queue: list[PeerLink] = []
        self._reading = False  # inside a link's read: input_done() flushes
        # Back-pressure, both directions of one relation: a recipient whose queue is over
        # soft_queue_limit holds back the senders that filled it, until it drains to half.
        self._held_senders: dict[PeerLink, set[PeerLink]] = {}  # recipient -> senders it holds back
        self._holders: dict[PeerLink, set[PeerLink]] = {}  # sender -> recipients holding it back
        self._driver_fields: dict[int, bytes] = {}
        self.started = time.monotonic()
        self.observers: list[BusObserver] = []  # registered where the daemon is assembled
        self.policy: BusPolicy = AllowEverything()
        self.driver = Driver(self)
        self._sweeper = loop.call_later(1.0, self._sweep_pending)

    # ------------------------------------------------------------ observers

    def add_observer(self, observer: BusObserver) -> None:
        self.observers.append(observer)

    def remove_observer(self, observer: BusObserver) -> None:
        if observer in self.observers:
            self.observers.remove(observer)

    def config_reloaded(self, settings: Any) -> None:
        """The daemon re-read its configuration: tell every observer."""
        for observer in list(self.observers):
            observer.config_reloaded(settings)

    # ------------------------------------------------------------ connection lifecycle

    @property
    def incomplete_connections(self) -> int:
        """Links accepted that have not said Hello yet (max_incomplete_connections counts them)."""
        return len(self._incomplete)

    def link_opened(self, link: PeerLink) -> None:
        """A transport accepted a peer: it is incomplete until Hello, and authenticates next."""
        self.links[link] = None
        self._incomplete.add(link)

    def peer_authenticated(self, link: PeerLink, auth_uid: int | None) -> Peer | None:
        """The link's peer authenticated (as `auth_uid` when the kernel did not say): its Peer, or None if refused."""
        uid = link.credentials.uid if link.credentials.uid is not None else auth_uid
        verdict = self.policy.allows_connection(uid)
        if not verdict.allowed:
            link.drop(f"uid {uid} may not connect: "
                      f"{verdict.rule or 'only the bus owner may, and no <allow user/group> rule lets it'}")
            return None
        peer = Peer(link)
        peer.auth_uid = uid
        peer.policy = self.policy.for_peer(link.credentials.uid, link.credentials.groups)
        self.links[link] = peer
        return peer

    def attach_virtual_peer(self, link: PeerLink) -> Peer:
        """A peer that lives inside the daemon (the bridge's end of an upstream bus).

        It gets a unique name as if it had said Hello, and leaves through link_closed().
        """
        peer = Peer(link)
        peer.policy = self.policy.for_peer(link.credentials.uid, link.credentials.groups)
        self.links[link] = peer
        name = self.assign_unique_name(peer)
        peer.hello_done = True
        self.emit_name_events([NameEvent("owner_changed", name, None, peer)])
        return peer

    def peer_of(self, link: PeerLink) -> Peer | None:
        """The peer a link carries, None before authentication and after it closed."""
        return self.links.get(link)

    def link_closed(self, link: PeerLink) -> None:
        """The link is gone: release what it held back, forget its peer and tell whoever must know."""
        if link not in self.links:
            return
        peer = self.links.pop(link)
        if link in self._incomplete:
            self._incomplete_ended(link)
        if link in self._held_senders:
            self._release_senders(link)
        for recipient in self._holders.pop(link, ()):
            held = self._held_senders.get(recipient)
            if held is not None:
                held.discard(link)
        if peer is None:
            return
        uid = peer.counted_uid
        if uid is not None:
            peer.counted_uid = None
            left = self.connections_per_uid[uid] - 1
            if left:
                self.connections_per_uid[uid] = left
            else:
                del self.connections_per_uid[uid]
        if peer.monitor:
            self.monitors.remove(peer)
        if peer.unique_name is None:
            return
        self.matches.remove_owner(peer, peer.unique_name)
        if self.peers.get(peer.unique_name) is not peer:
            return  # a monitor: its unique name was released when it became one
        del self.peers[peer.unique_name]
        # Every call the peer was asked and did not answer gets NoReply.
        for key in list(peer.expecting):
            if self.pending.pop(key, None) is not None:
                caller, serial, _ = key
                caller.replies_outstanding -= 1
                self.send_error(caller, serial, errors.NO_REPLY,
                                "Message recipient disconnected from message bus without replying")
        peer.expecting.clear()
        # As dbus-daemon: NameLost goes to the departed peer too, so monitors see it.
        events = self.registry.remove_peer(peer)
        events.append(NameEvent("lost", peer.unique_name, peer, None))
        events.append(NameEvent("owner_changed", peer.unique_name, peer, None))
        self.emit_name_events(events)

    def _incomplete_ended(self, link: PeerLink) -> None:
        """A link said Hello, or closed before it."""
        self._incomplete.discard(link)
        if self.incomplete_connections < self.limits.max_incomplete_connections:
            for observer in self.observers:
                observer.incomplete_room()

    # ------------------------------------------------------------ writing, batched per read

    def input_started(self) -> None:
        """A link is handing over the messages of one read: their writes wait for input_done()."""
        self._reading = True

    def input_done(self) -> None:
        """The read is handed over: write every queue it filled, one sendmsg() per link."""
        self._reading = False
        self._flush_all()

    def schedule_flush(self, link: PeerLink) -> None:
        """Write `link`'s queue soon: at the end of the current read, or on the next loop turn."""
        queue = self._flush_queue
        if not queue and not self._reading:
            self.loop.call_soon(self._flush_all)
        queue.append(link)

    def _flush_all(self) -> None:
        queue = self._flush_queue
        if not queue:
            return
        self._flush_queue = []
        for link in queue:
            if not link.closed:
                link.flush()

    def output_flushed(self, link: PeerLink) -> None:
        """`link` wrote some of its queue: once below the low-water mark, the senders it held back read again."""
        if link in self._held_senders and link.out_bytes <= self.soft_queue_limit // 2:
            self._release_senders(link)

    def _hold_sender(self, sender: PeerLink, recipient: PeerLink) -> None:
        """Back-pressure: read no more from `sender` until `recipient` catches up."""
        held = self._held_senders.get(recipient)
        if held is None:
            held = self._held_senders[recipient] = set()
        held.add(sender)
        holders = self._holders.get(sender)
        if holders is None:
            holders = self._holders[sender] = set()
        holders.add(recipient)
        sender.hold_input()

    def _release_senders(self, recipient: PeerLink) -> None:
        for sender in self._held_senders.pop(recipient):
            holders = self._holders.get(sender)
            if holders is None:
                continue
            holders.discard(recipient)
            if not holders:
                del self._holders[sender]
                sender.release_input()

    # ------------------------------------------------------------ the per-message path

    def receive(self, peer: Peer, buf: bytes, h: Header, fds: list[int] | None, monitored: bool = True) -> None:
        """Route one message. `monitored=False` re-dispatches a message monitors already saw (activation)."""
        if not peer.hello_done:
            self._receive_before_hello(peer, buf, h, fds)
            return
        if peer.monitor:
            peer.conn.drop("a monitor may not send messages")
            _close(fds)
            return
        h.sender = peer.unique_name
        dest = h.destination
        mtype = h.type
        if dest is None:
            if mtype == SIGNAL:
                self.broadcast(peer, buf, h, fds)
                return
            # Anything else without a destination is a peer-to-peer message to the
            # bus's end of the connection, not routed: as in dbus-daemon, no match
            # rule or monitor sees it and the connection answers calls as a plain
            # D-Bus peer would.
            _close(fds)
            if mtype == METHOD_CALL:
                self.driver.answer_as_peer(peer, h)
            return
        if mtype > SIGNAL:
            if dest == DRIVER_NAME or dest[0] == ":" and dest in self.peers or self.registry.owner(dest) is not None:
                self._refuse_unknown_type(peer, buf, h, fds)
                return
            # To a name nobody owns it meets ServiceUnknown, as any message does.
        if dest == DRIVER_NAME:
            if self.policy.enforced and not self.policy_allows_driver_call(peer, h, fds):
                return
            if mtype == SIGNAL:
                # What a signal to the bus causes (systemd's ActivationFailure: errors to the
                # held callers) reaches monitors before the signal, as on dbus-daemon.
                for observer in self.observers:
                    observer.driver_signal(peer, buf, h)
            self.deliver_to_monitors(peer, buf, h, fds)
            if mtype == METHOD_CALL:
                self.driver.handle(peer, buf, h)
            # Eavesdroppers see the call after what it caused, as on dbus-daemon
            # (so the rule an AddMatch adds sees that AddMatch).
            self.deliver_eavesdroppers(peer, buf, h, fds, None)
            _close(fds)
            return
        target = self.peers.get(dest) if dest[0] == ":" else self.registry.owner(dest)
        if target is None:
            # Any message may start a service (dbus-daemon activates for signals too).
            if dest[0] != ":" and not h.flags & NO_AUTO_START and self.driver.try_activation(peer, h, buf, fds):
                if monitored:  # after the activation request, as monitors see it on dbus-daemon
                    self.deliver_to_monitors(peer, buf, h, None)
                return
            if monitored:
                self.deliver_to_monitors(peer, buf, h, None)
            _close(fds)
            if not h.flags & NO_REPLY_EXPECTED:
                if h.flags & NO_AUTO_START:
                    self.send_error(peer, h.serial, errors.NAME_HAS_NO_OWNER, f'Name "{dest}" does not exist')
                else:
                    self.send_error(peer, h.serial, errors.SERVICE_UNKNOWN,
                                    f"The name {dest} was not provided by any .service files")
            return
        requested_reply = False
        if mtype == METHOD_RETURN or mtype == ERROR:
            key = (target, h.reply_serial, peer)
            if key not in self.pending:
                log.debug("dropping unexpected reply from %s to %s (reply_serial=%s)",
                          peer.unique_name, dest, h.reply_serial)
                self.deliver_to_monitors(peer, buf, h, fds)
                _close(fds)
                return
            requested_reply = True
        if self.policy.enforced and not self.policy_allows(peer, target, h, requested_reply, fds, buf):
            return
        if mtype == METHOD_CALL:
            if not h.flags & NO_REPLY_EXPECTED:
                key = (peer, h.serial, target)
                refusal = self._expect_reply_refusal(peer, key)
                if refusal is not None:
                    _close(fds)
                    if monitored:
                        self.deliver_to_monitors(peer, buf, h, None)
                    self.send_error(peer, h.serial, *refusal)
                    return
                peer.replies_outstanding += 1
                self.pending[key] = time.monotonic() + self.limits.reply_timeout / 1000
                target.expecting.add(key)
        elif requested_reply:
            del self.pending[key]
            peer.expecting.discard(key)
            target.replies_outstanding -= 1
        self.deliver(target, peer, buf, h, fds)
        if self.monitors and monitored:
            self.deliver_to_monitors(peer, buf, h, None, target.names)
        if self.matches.has_eavesdroppers:
            self.deliver_eavesdroppers(peer, buf, h, None, target)

    def _refuse_unknown_type(self, peer: Peer, buf: bytes, h: Header, fds: list[int] | None) -> None:
        """A message of a type the specification does not define is not delivered.

        The specification says to ignore it; dbus-daemon shows it to monitors and answers
        AccessDenied, which busd does too, unless the sender said it expects no reply.
        """
        _close(fds)
        self.deliver_to_monitors(peer, buf, h, None)
        text = "Message bus will not accept messages of unknown type\n"
        if h.flags & NO_REPLY_EXPECTED:
            self.refuse(peer, h, errors.ACCESS_DENIED, text, monitors_only=True)
        else:
            self.send_error(peer, h.serial, errors.ACCESS_DENIED, text)

    def _expect_reply_refusal(self, caller: Peer, key: tuple[Peer, int, Peer]) -> tuple[str, str] | None:
        """Why the bus will not track a reply to this call (error name and text), or None."""
        if key in self.pending:
            return (errors.ACCESS_DENIED,
                    "Message has the same reply serial as a currently-outstanding existing method call")
        if caller.replies_outstanding >= self.limits.max_replies_per_connection:
            return (errors.LIMITS_EXCEEDED, "The maximum number of pending replies per connection has been reached")
        return None

    def _receive_before_hello(self, peer: Peer, buf: bytes, h: Header, fds: list[int] | None) -> None:
        """Only Hello is served before Hello; other driver calls are refused, anything routed drops the peer.

        As in dbus-daemon, monitors see what an unregistered peer sends, from
        ":not.active.yet", and a message with no destination that is no signal is
        not routed at all: the bus's end of the connection answers it, Hello or not.
        """
        _close(fds)
        if h.destination is None and h.type != SIGNAL:
            if h.type == METHOD_CALL:
                self.driver.answer_as_peer(peer, h)
            return
        if h.destination == DRIVER_NAME and h.type == METHOD_CALL:
            if h.member == "Hello" and h.interface in (None, DRIVER_INTERFACE):
                refusal = self._hello_refusal(peer)
                if refusal is not None:
                    # As dbus-daemon: the peer authenticated, but its Hello is refused.
                    message = build_message(ERROR, self.next_driver_serial(), error_name=errors.LIMITS_EXCEEDED,
                                            reply_serial=h.serial, sender=DRIVER_NAME, signature="s",
                                            body=[refusal])
                    peer.conn.queue(message, b"")
                    log.warning("refusing Hello from %s (uid %s): %s", peer.conn.label, peer.auth_uid, refusal)
                    return
                uid = peer.auth_uid
                if uid is not None:
                    self.connections_per_uid[uid] = self.connections_per_uid.get(uid, 0) + 1
                    peer.counted_uid = uid
                self._incomplete_ended(peer.conn)
                peer.conn.registered()
                self.driver.hello(peer, h, buf)
                return
            self._show_monitors_unregistered(buf, h)
            message = build_message(ERROR, self.next_driver_serial(), error_name=errors.ACCESS_DENIED,
                                    reply_serial=h.serial, destination=NOT_ACTIVE_YET,
                                    sender=DRIVER_NAME, signature="s",
                                    body=["Client tried to send a message other than Hello without "
                                          "being registered"])
            self.send_from_driver(None, message)  # monitors
            if not h.flags & NO_REPLY_EXPECTED:
                peer.conn.queue(message, b"")
            return
        self._show_monitors_unregistered(buf, h)
        peer.conn.drop(f"sent {h.describe()} before Hello")

    def _show_monitors_unregistered(self, buf: bytes, h: Header) -> None:
        """Show monitors a message from a peer that has no unique name yet."""
        if self.monitors:
            head, body = stamp_sender(buf, h, sender_field(NOT_ACTIVE_YET, h.endian))
            self._queue_monitors(head, body, h, (), lambda: read_body(buf, h))

    def _hello_refusal(self, peer: Peer) -> str | None:
        """Why a connection may not register (a connection limit), or None."""
        limits = self.limits
        if len(self.peers) >= limits.max_completed_connections:
            return (f"The maximum number of active connections has been reached "
                    f"(max_completed_connections={limits.max_completed_connections})")
        uid = peer.auth_uid
        if uid is not None and self.connections_per_uid.get(uid, 0) >= limits.max_connections_per_user:
            return (f"The maximum number of active connections for UID {uid} has been reached "
                    f"(max_connections_per_user={limits.max_connections_per_user})")
        return None

    def policy_allows(self, sender: Peer, target: Peer, h: Header, requested_reply: bool,
                      fds: list[int] | None, buf: bytes | None = None) -> bool:
        """Check send rules of the sender and receive rules of the recipient; log and answer a denial.

        With `buf` (a unicast message) a denial drops the message: monitors see it and
        the AccessDenied error, and the sender gets the error if it expects a reply.
        Without `buf` (one recipient of a broadcast) only monitors see the error, as
        with dbus-daemon.
        """
        nfds = len(fds) if fds else 0
        # Like dbus-daemon, send_destination rules see every name the recipient owns or queues for.
        queued = self.registry.all_names_of(target)
        receiver_names = target.names | queued if queued else target.names
        verdict = sender.policy.can_send(h, receiver_names, requested_reply, nfds)
        side = "send"
        if verdict.allowed:
            sender_queued = self.registry.all_names_of(sender)
            sender_names = sender.names | sender_queued if sender_queued else sender.names
            verdict = target.policy.can_receive(h, sender_names, requested_reply, nfds, False)
            side = "receive"
        if verdict.allowed:
            return True
        log.warning("policy denied %s by %s rule %s: %s (uid %s) -> %s (uid %s)",
                    h.describe(), side, verdict.rule or "(default deny)", sender.unique_name,
                    sender.credentials.uid, target.unique_name, target.credentials.uid)
        text = f"Rejected send message: {h.describe()} ({side} rule {verdict.rule or 'default deny'})"
        if buf is not None:
            _close(fds)
            self.deliver_to_monitors(sender, buf, h, None)
            self.refuse(sender, h, errors.ACCESS_DENIED, text)
        elif self.monitors:
            self.refuse(sender, h, errors.ACCESS_DENIED, text, monitors_only=True)
        return False

    def refuse(self, sender: Peer, h: Header, error_name: str, text: str, monitors_only: bool = False) -> None:
        """Answer a message the bus will not deliver with an error.

        The sender gets it only if it expects a reply (the specification's rule; dbus-daemon
        sends it regardless); monitors always see it, as they do on dbus-daemon.
        """
        if not monitors_only and h.type == METHOD_CALL and not h.flags & NO_REPLY_EXPECTED:
            self.send_error(sender, h.serial, error_name, text)
        elif self.monitors:
            message = build_message(ERROR, self.next_driver_serial(), error_name=error_name,
                                    reply_serial=h.serial, destination=sender.unique_name,
                                    sender=DRIVER_NAME, signature="s", body=[text])
            self.send_from_driver(None, message)

    def policy_allows_driver_call(self, sender: Peer, h: Header, fds: list[int] | None) -> bool:
        """Check the sender's send rules for a message to the bus itself (dbus-daemon checks them too)."""
        verdict = sender.policy.can_send(h, (DRIVER_NAME,), False, len(fds) if fds else 0)
        if verdict.allowed:
            return True
        log.warning("policy denied %s by send rule %s: %s (uid %s) -> the bus", h.describe(),
                    verdict.rule or "(default deny)", sender.unique_name, sender.credentials.uid)
        _close(fds)
        self.refuse(sender, h, errors.ACCESS_DENIED,
                    f"Rejected send message: {h.describe()} (send rule {verdict.rule or 'default deny'})")
        return False

    def check_own(self, peer: Peer, name: str) -> None:
        """Raise the driver's AccessDenied when policy forbids `peer` owning `name`."""
        verdict = peer.policy.can_own(name)
        if not verdict.allowed:
            log.warning("policy denied %s (uid %s) owning %s by rule %s", peer.unique_name,
                        peer.credentials.uid, name, verdict.rule or "(default deny)")
            raise DriverError(errors.ACCESS_DENIED,
                              f'Connection "{peer.unique_name}" is not allowed to own the service "{name}" '
                              f"due to security policies in the configuration file")

    def set_policy(self, policy: BusPolicy) -> None:
        """Install a new policy and recompute every connection's rules at once (reload)."""
        self.policy = policy
        for peer in self.links.values():
            if peer is not None:
                creds = peer.credentials
                peer.policy = policy.for_peer(creds.uid, creds.groups)

    def deliver(self, target: Peer, sender: Peer, buf: bytes, h: Header, fds: list[int] | None) -> None:
        conn = target.conn
        if conn.out_bytes + len(buf) > self.limits.max_outgoing_bytes or (
                fds and conn.out_fds + len(fds) > self.limits.max_outgoing_unix_fds):
            self._reject_full_queue(target, sender, h, fds)
            return
        if fds and not conn.can_pass_fds:
            # The recipient cannot receive fds: the caller gets an error, as from dbus-daemon.
            _close(fds)
            if h.type == METHOD_CALL and not h.flags & NO_REPLY_EXPECTED:
                key = (sender, h.serial, target)
                del self.pending[key]
                target.expecting.discard(key)
                sender.replies_outstanding -= 1
                self.send_error(sender, h.serial, errors.NOT_SUPPORTED,
                                "Tried to send message with Unix file descriptors to a client that doesn't support that.")
            return
        field = sender.sender_fields.get(h.endian)
        if field is None:
            field = sender.sender_fields[h.endian] = sender_field(sender.unique_name, h.endian)
        head, body = stamp_sender(buf, h, field)
        conn.queue(head, body, fds)
        if conn.out_bytes > self.soft_queue_limit and sender.conn is not conn:
            self._hold_sender(sender.conn, conn)

    def _reject_full_queue(self, target: Peer, sender: Peer, h: Header, fds: list[int] | None) -> None:
        _close(fds)
        log.warning("rejecting %s from %s to %s: destination queue is full "
                    "(max_outgoing_bytes=%d, max_outgoing_unix_fds=%d)",
                    TYPE_NAMES.get(h.type, h.type), sender.unique_name, target.unique_name,
                    self.limits.max_outgoing_bytes, self.limits.max_outgoing_unix_fds)
        if h.type == METHOD_CALL and not h.flags & NO_REPLY_EXPECTED:
            key = (sender, h.serial, target)
            if self.pending.pop(key, None) is not None:
                target.expecting.discard(key)
                sender.replies_outstanding -= 1
            self.send_error(sender, h.serial, errors.LIMITS_EXCEEDED,
                            "Rejected: destination has a full message queue")

    @property
    def limits(self) -> Limits:
        return self._limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        self._limits = limits
        # Queue size past which senders to a connection are paused (a quarter of the hard limit).
        self.soft_queue_limit = min(limits.max_outgoing_bytes // 4, SOFT_QUEUE_LIMIT)

    def broadcast(self, sender: Peer, buf: bytes, h: Header, fds: list[int] | None) -> None:
        args_cache: list = []

        def get_args() -> list:
            if not args_cache:
                args_cache.append(read_body(buf, h))
            return args_cache[0]

        recipients = self.matches.recipients(h, sender.names, get_args)
        field = sender.sender_fields.get(h.endian)
        if field is None:
            field = sender.sender_fields[h.endian] = sender_field(sender.unique_name, h.endian)
        head, body = stamp_sender(buf, h, field)
        if self.monitors:  # monitors see the broadcast first, then any refusal it met
            self._queue_monitors(head, body, h, sender.names, get_args)
        hard_limit = self.limits.max_outgoing_bytes
        enforced = self.policy.enforced
        for target in recipients:
            if target.monitor:
                continue
            if enforced and not self.policy_allows(sender, target, h, False, fds):
                continue
            conn = target.conn
            if conn.out_bytes + len(buf) > hard_limit:
                # A subscriber that does not read loses broadcasts; it never stalls the emitter.
                conn.note_dropped_broadcast(hard_limit)
                continue
            if fds:
                if not conn.can_pass_fds:
                    self.refuse(sender, h, errors.NOT_SUPPORTED,
                                f"broadcast cannot be delivered to {target.unique_name} because it does "
                                f"not support receiving Unix fds", monitors_only=True)
                    continue
                conn.queue(head, body, [os.dup(fd) for fd in fds])
            else:
                conn.queue(head, body)
        _close(fds)

    def deliver_to_monitors(self, sender: Peer, buf: bytes, h: Header, fds: list[int] | None,
                            destination_names: Collection[str] | None = None) -> None:
        """Show monitors a message; `destination_names` are the names of the peer it reached."""
        if self.monitors:
            field = sender.sender_fields.get(h.endian)
            if field is None:
                field = sender.sender_fields[h.endian] = sender_field(sender.unique_name, h.endian)
            head, body = stamp_sender(buf, h, field)
            self._queue_monitors(head, body, h, sender.names, lambda: read_body(buf, h), destination_names)

    def _queue_monitors(self, head: bytes, body: Any, h: Header, sender_names: Collection[str],
                        get_args: Callable[[], list], destination_names: Collection[str] | None = None) -> None:
        for monitor in self.monitors:
            rules = monitor.monitor_rules
            if rules and not any(rule.matches(h, sender_names, get_args, destination_names) for rule in rules):
                continue
            monitor.conn.queue(head, body)

    def deliver_eavesdroppers(self, sender: Peer, buf: bytes, h: Header, fds: list[int] | None,
                              target: Peer | None) -> None:
        """Deliver a unicast message to peers whose match rules ask to eavesdrop on it (its sender too)."""
        if not self.matches.has_eavesdroppers:
            return
        eavesdroppers = self.matches.recipients(h, sender.names, lambda: read_body(buf, h),
                                                addressed_recipient=target,
                                                recipient_names=target.names if target else None)
        if not eavesdroppers:
            return
        field = sender.sender_fields.get(h.endian) or sender_field(sender.unique_name, h.endian)
        head, body = stamp_sender(buf, h, field)
        enforced = self.policy.enforced
        for peer in eavesdroppers:
            if peer is not target and not peer.monitor:
                if enforced:
                    nfds = len(fds) if fds else 0
                    if not (sender.policy.can_send(h, peer.names, False, nfds).allowed and
                            peer.policy.can_receive(h, sender.names, False, nfds, True).allowed):
                        continue
                peer.conn.queue(head, body)

    # ------------------------------------------------------------ messages from the bus itself

    def next_driver_serial(self) -> int:
        self._driver_serial = serial = (self._driver_serial % 0xFFFFFFFF) + 1
        return serial

    def send_from_driver(self, target: Peer | None, message: bytes) -> None:
        """Queue a message the driver built; monitors see it too.

        The recipient's receive rules apply to the bus's own messages as well: a denied
        one is not delivered, and monitors see it followed by the AccessDenied error the
        bus addresses to itself, as with dbus-daemon.
        """
        h = None
        if self.monitors or (target is not None and self.policy.enforced):
            h = parse_header(message, validate_body=False)
        if self.monitors:
            self._queue_monitors(message, b"", h, _DRIVER_NAMES, lambda: read_body(message, h))
        if target is None or target.conn.closed:
            return
        if self.policy.enforced:
            verdict = target.policy.can_receive(h, _DRIVER_NAMES, h.type in (METHOD_RETURN, ERROR), 0, False)
            if not verdict.allowed:
                log.warning("policy denied %s by receive rule %s: the bus -> %s (uid %s)", h.describe(),
                            verdict.rule or "(default deny)", target.unique_name, target.credentials.uid)
                if self.monitors:
                    error = build_message(ERROR, self.next_driver_serial(), error_name=errors.ACCESS_DENIED,
                                          reply_serial=h.serial, destination=DRIVER_NAME, sender=DRIVER_NAME,
                                          signature="s", body=[f"Rejected receive message: {h.describe()}"])
                    eh = parse_header(error, validate_body=False)
                    self._queue_monitors(error, b"", eh, _DRIVER_NAMES, lambda: read_body(error, eh))
                return
        target.conn.queue(message, b"")

    def send_error(self, target: Peer, reply_serial: int, error_name: str, text: str) -> None:
        if target.conn.closed:
            return
        message = build_message(ERROR, self.next_driver_serial(), error_name=error_name,
                                reply_serial=reply_serial, destination=target.unique_name,
                                sender=DRIVER_NAME, signature="s", body=[text])
        self.send_from_driver(target, message)

    def send_reply(self, target: Peer, reply_serial: int, signature: str = "", body: list | tuple = ()) -> None:
        message = build_message(METHOD_RETURN, self.next_driver_serial(), reply_serial=reply_serial,
                                destination=target.unique_name, sender=DRIVER_NAME,
                                signature=signature, body=body)
        self.send_from_driver(target, message)

    def emit_driver_signal(self, member: str, signature: str, body: list, destination: Peer | None = None) -> None:
        """A driver signal: unicast to `destination`, or broadcast by match rules."""
        message = build_message(SIGNAL, self.next_driver_serial(), path=DRIVER_PATH,
                                interface=DRIVER_INTERFACE, member=member, sender=DRIVER_NAME,
                                destination=destination.unique_name if destination else None,
                                signature=signature, body=body)
        if destination is not None:
            self.send_from_driver(destination, message)
            return
        h = Header()
        h.type = SIGNAL
        h.path = DRIVER_PATH
        h.interface = DRIVER_INTERFACE
        h.member = member
        h.sender = DRIVER_NAME
        h.signature = signature
        names = _DRIVER_NAMES
        enforced = self.policy.enforced
        for target in self.matches.recipients(h, names, lambda: body):
            if not target.monitor and not target.conn.closed:
                if enforced and not target.policy.can_receive(h, names, False, 0, False).allowed:
                    continue
                target.conn.queue(message, b"")
        if self.monitors:
            self._queue_monitors(message, b"", h, names, lambda: body)

    def emit_name_events(self, events: list[NameEvent]) -> None:
        for event in events:
            if event.kind == "owner_changed":
                old = event.old_owner.unique_name if event.old_owner else ""
                new = event.new_owner.unique_name if event.new_owner else ""
                if event.name[0] != ":":
                    if event.old_owner:
                        event.old_owner.names.discard(event.name)
                    if event.new_owner:
                        event.new_owner.names.add(event.name)
                self.emit_driver_signal("NameOwnerChanged", "sss", [event.name, old, new])
            elif event.kind == "lost":
                self.emit_driver_signal("NameLost", "s", [event.name], event.old_owner)
            elif event.kind == "acquired":
                self.emit_driver_signal("NameAcquired", "s", [event.name], event.new_owner)
        for observer in list(self.observers):  # (the bridge may stop itself while it handles them)
            observer.names_changed(events)

    # ------------------------------------------------------------ housekeeping

    def assign_unique_name(self, peer: Peer) -> str:
        name = f":1.{self._next_unique}"
        self._next_unique += 1
        peer.unique_name = name
        peer.names.add(name)
        self.peers[name] = peer
        return name

    def _sweep_pending(self) -> None:
        now = time.monotonic()
        pending = self.pending
        expired = []
        for key, deadline in pending.items():
            if deadline > now:
                break
            expired.append(key)
        for key in expired:
            del pending[key]
            caller, serial, callee = key
            callee.expecting.discard(key)
            caller.replies_outstanding -= 1
            self.send_error(caller, serial, errors.NO_REPLY, "Message did not receive a reply (timeout by message bus)")
        self._sweeper = self.loop.call_later(1.0, self._sweep_pending)

    def close(self) -> None:
        self._sweeper.cancel()
        for link in list(self.links):
            link.drop("bus shutting down", level=logging.DEBUG)


def _close(fds: list[int] | None) -> None:
    if fds:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
