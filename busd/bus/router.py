"""The bus: connections, unique names, routing, monitors and back-pressure.

Theory. `Bus.receive()` is the per-message path. It is handed a validated
message and its parsed header; it stamps the sender (cached SENDER field bytes
per peer and byte order), picks the recipients and queues the same bytes on each
of them. Bodies are never read, except by the driver for its own calls and by
match rules that filter on arguments. Replies pass only when a call is pending
for them (replies.py); what the bus itself sends goes through its DriverOutbox
(outbox.py), its own object is the Driver (driver.py). Writes are batched: the
messages of one read are queued, then each link that got some is flushed once.
Everything queued toward a peer, and everything else a peer makes the bus keep,
is charged to its uid's ledger (ledger.py) and released when freed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Collection

from ..wire.message import (
    ERROR, METHOD_CALL, METHOD_RETURN, NO_AUTO_START, NO_REPLY_EXPECTED, SIGNAL, TYPE_NAMES, Header, body_arguments,
    forget_unique_name, read_body, sender_field, stamp_sender)
from ..wire.wellknown import DRIVER_NAME
from . import errors
from .backpressure import BackPressure
from .driver import Driver
from .fds import close_fds
from .ledger import Ledger, UserLedger
from .limits import Limits
from .match_index import MatchIndex
from .observers import BusObserver
from .outbox import DriverOutbox, queue_to_monitors
from .ownership import NameEvent, NameRegistry
from .peer import Peer
from .policy import AllowEverything, BusPolicy
from .ports import PeerLink, SharedFds
from .replies import ReplyTracker, settled

log = logging.getLogger("busd.bus")

SOFT_QUEUE_LIMIT = 8 << 20


class Bus:
    """Bus semantics, independent of how bytes reach it.

    `machine_id` and `introspection` (org.freedesktop.DBus's XML) are handed over: the bus reads no file.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, guid: str, limits: Limits | None = None,
                 bus_type: str = "session", *, machine_id: str, introspection: str):
        self.loop = loop
        self.guid = guid
        self.ledger = Ledger(limits or Limits())
        self.limits = limits or Limits()
        self.bus_type = bus_type
        self.peers: dict[str, Peer] = {}
        self.links: dict[PeerLink, Peer | None] = {}  # every link, with its peer once authenticated
        self._link_users: dict[PeerLink, UserLedger] = {}  # every link, with the uid's ledger it is charged to
        self._incomplete: set[PeerLink] = set()  # accepted, no Hello yet (charged IncompleteConnections)
        self.registry = NameRegistry()
        self.matches = MatchIndex()
        self.monitors: list[Peer] = []
        self.replies = ReplyTracker(self.ledger)
        self._next_unique = 0
        self._flush_queue: list[PeerLink] = []
        self._reading = False  # inside a link's read: input_done() flushes
        # A recipient whose queue is over soft_queue_limit holds back the senders that filled it.
        self.backpressure = BackPressure()
        self.started = time.monotonic()
        self.observers: list[BusObserver] = []  # registered where the daemon is assembled
        self.policy: BusPolicy = AllowEverything()
        self.outbox = DriverOutbox(self.monitors, self.matches, self.policy, self.ledger)
        self.driver = Driver(self, machine_id=machine_id, introspection=introspection)
        self._sweeper = loop.call_later(1.0, self._sweep_replies)

    # ------------------------------------------------------------ observers and settings

    def add_observer(self, observer: BusObserver) -> None:
        self.observers.append(observer)

    def remove_observer(self, observer: BusObserver) -> None:
        if observer in self.observers:
            self.observers.remove(observer)

    def config_reloaded(self, settings: Any) -> None:
        """The daemon re-read its configuration: tell every observer."""
        for observer in list(self.observers):
            observer.config_reloaded(settings)

    def set_policy(self, policy: BusPolicy) -> None:
        """Install a new policy and recompute every connection's rules at once (reload)."""
        self.policy = self.outbox.policy = policy
        for peer in self.links.values():
            if peer is not None:
                creds = peer.credentials
                peer.policy = policy.for_peer(creds.uid, creds.policy_groups)

    @property
    def limits(self) -> Limits:
        return self._limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        self._limits = limits
        self.ledger.limits = limits
        quotas = self.ledger.quotas
        self._user_out_bytes, self._user_out_fds = quotas.outgoing_bytes, quotas.outgoing_fds  # (the hot path's)
        # Queue size past which senders to a connection are paused (a quarter of the hard limit).
        self.soft_queue_limit = min(limits.max_outgoing_bytes // 4, SOFT_QUEUE_LIMIT)

    # ------------------------------------------------------------ connection lifecycle

    @property
    def incomplete_connections(self) -> int:
        """Links accepted that have not said Hello yet (max_incomplete_connections counts them)."""
        return len(self._incomplete)

    def link_opened(self, link: PeerLink) -> None:
        """A transport accepted a peer: it is incomplete until Hello, and authenticates next."""
        self.links[link] = None
        user = self._link_users[link] = self.ledger.open_link(link.credentials.uid)
        if self.ledger.charge_incomplete(user):
            self._incomplete.add(link)
        else:  # dropped on the next turn: the transport starts reading once this returns
            self.loop.call_soon(link.drop, f"uid {user.uid} is at its IncompleteConnections quota "
                                           f"({self.ledger.quotas.incomplete_connections})")

    def peer_authenticated(self, link: PeerLink, auth_uid: int | None) -> Peer | None:
        """The link's peer authenticated (as `auth_uid` when the kernel did not say): its Peer, or None if refused."""
        uid = link.credentials.uid if link.credentials.uid is not None else auth_uid
        verdict = self.policy.allows_connection(uid, link.credentials.user_groups)
        if not verdict.allowed:
            link.drop(f"uid {uid} may not connect: "
                      f"{verdict.rule or 'only the bus owner may, and no <allow user/group> rule lets it'}")
            return None
        peer = Peer(link)
        peer.auth_uid = uid
        # Authenticated as another uid than the socket's (TCP): charged to that one from now on.
        peer.user = self._link_users[link] = self.ledger.move_link(self._link_users[link], uid,
                                                                   link in self._incomplete)
        peer.policy = self.policy.for_peer(link.credentials.uid, link.credentials.policy_groups)
        self.links[link] = peer
        return peer

    def admit(self, peer: Peer) -> str | None:
        """`peer` says Hello: complete its connection and count it; or, when a connection limit refuses it, why."""
        limits = self.limits
        if len(self.peers) >= limits.max_completed_connections:
            return (f"The maximum number of active connections has been reached "
                    f"(max_completed_connections={limits.max_completed_connections})")
        refusal = self.ledger.charge_connection(peer.user, counted=peer.auth_uid is not None)
        if refusal is not None:
            return refusal
        self._incomplete_ended(peer.conn)
        peer.conn.registered()
        return None

    def assign_unique_name(self, peer: Peer) -> str:
        name = f":1.{self._next_unique}"
        self._next_unique += 1
        peer.unique_name = name
        peer.names.add(name)
        self.peers[name] = peer
        return name

    def attach_virtual_peer(self, link: PeerLink) -> Peer:
        """A peer that lives inside the daemon (the bridge's end of an upstream bus).

        It gets a unique name as if it had said Hello, and leaves through link_closed().
        """
        peer = Peer(link)
        peer.policy = self.policy.for_peer(link.credentials.uid, link.credentials.policy_groups)
        self.links[link] = peer
        peer.user = self._link_users[link] = self.ledger.open_link(link.credentials.uid)
        self.ledger.charge_connection(peer.user, counted=False)
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
        self.backpressure.forget(link)
        user = self._link_users.pop(link)
        self.ledger.release_input(link, user)
        if peer is None:
            self.ledger.close_link(user)
            return
        # Everything the peer held is released: its calls (replies), its queue, rules, names, connection (ledger).
        self.replies.caller_gone(peer)
        self.ledger.peer_left(peer, user)
        if peer.monitor:
            self.monitors.remove(peer)
        if peer.unique_name is None:
            return
        self.matches.remove_owner(peer, peer.unique_name)
        forget_unique_name(peer.unique_name)  # the wire's caches keep nothing of a peer that left
        if self.peers.get(peer.unique_name) is not peer:
            return  # a monitor: its unique name was released when it became one
        del self.peers[peer.unique_name]
        # Every call the peer was asked and did not answer gets NoReply.
        for caller, serial in self.replies.callee_gone(peer):
            self.outbox.send_error(caller, serial, errors.NO_REPLY,
                                   "Message recipient disconnected from message bus without replying")
        events = self.registry.remove_peer(peer)
        events.append(NameEvent("lost", peer.unique_name, peer, None))  # as dbus-daemon (monitors see it)
        events.append(NameEvent("owner_changed", peer.unique_name, peer, None))
        self.emit_name_events(events)

    def _incomplete_ended(self, link: PeerLink) -> None:
        """A link said Hello, or closed before it."""
        self._incomplete.discard(link)
        self._link_users[link].incomplete -= 1
        if self.incomplete_connections < self.limits.max_incomplete_connections:
            for observer in self.observers:
                observer.incomplete_room()

    def emit_name_events(self, events: list[NameEvent]) -> None:
        """Record who now holds which primary names, announce the changes as the driver's signals, tell observers."""
        emit_signal = self.outbox.emit_signal
        registry = self.registry
        ledger = self.ledger
        for event in events:
            if event.kind == "owner_changed":
                old = event.old_owner.unique_name if event.old_owner else ""
                new = event.new_owner.unique_name if event.new_owner else ""
                if event.name[0] != ":":
                    self.matches.names_changed()
                    if event.old_owner:
                        event.old_owner.names.discard(event.name)
                        ledger.settle_names(event.old_owner, registry.queued_count(event.old_owner))
                    if event.new_owner:
                        event.new_owner.names.add(event.name)
                        ledger.settle_names(event.new_owner, registry.queued_count(event.new_owner))
                emit_signal("NameOwnerChanged", "sss", [event.name, old, new])
            elif event.kind == "lost":
                emit_signal("NameLost", "s", [event.name], event.old_owner)
            elif event.kind == "acquired":
                emit_signal("NameAcquired", "s", [event.name], event.new_owner)
        for observer in list(self.observers):  # (the bridge may stop itself while it handles them)
            observer.names_changed(events)

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

    def input_buffered(self, link: PeerLink) -> None:
        """`link`'s unfinished input changed: charged to its user; a link past the user's quota is dropped."""
        over = self.ledger.settle_input(link, self._link_users[link])
        if over is not None:
            link.drop(f"uid {self._link_users[link].uid} is at its {over} quota ({self.ledger.quotas.of(over)})")

    def output_flushed(self, link: PeerLink) -> None:
        """`link` wrote some of its queue: its user's ledger follows it, and once below the low-water mark
        the senders it held back read again."""
        peer = self.links.get(link)
        if peer is not None and peer.user is not None:
            self.ledger.settle_queue(peer)
        if link in self.backpressure.held and link.out_bytes <= self.soft_queue_limit // 2:
            self.backpressure.release(link)

    # ------------------------------------------------------------ the per-message path

    def receive(self, peer: Peer, buf: bytes, h: Header, fds: list[int] | None, monitored: bool = True) -> None:
        """Route one message. `monitored=False` re-dispatches a message monitors already saw (activation)."""
        if not peer.hello_done:
            self.driver.receive_before_hello(peer, buf, h, fds)
            return
        if peer.monitor:
            peer.conn.drop("a monitor may not send messages")
            close_fds(fds)
            return
        h.sender = peer.unique_name
        dest = h.destination
        mtype = h.type
        if dest is None:
            if mtype == SIGNAL:
                self.broadcast(peer, buf, h, fds)
                return
            # Anything else without a destination is a peer-to-peer message to the bus's end of the
            # connection: as in dbus-daemon, no rule or monitor sees it; calls are answered as a peer would.
            close_fds(fds)
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
            close_fds(fds)
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
            close_fds(fds)
            if dest[0] == ":":  # gone (a reply after its caller left): parsing just cached a header for it
                forget_unique_name(dest)
            if not h.flags & NO_REPLY_EXPECTED:
                if h.flags & NO_AUTO_START:
                    self.outbox.send_error(peer, h.serial, errors.NAME_HAS_NO_OWNER,
                                           f'Name "{dest}" does not exist')
                else:
                    self.outbox.send_error(peer, h.serial, errors.SERVICE_UNKNOWN,
                                           f"The name {dest} was not provided by any .service files")
            return
        requested_reply = False
        if mtype == METHOD_RETURN or mtype == ERROR:
            key = (target, h.reply_serial, peer)
            if key not in self.replies.pending:
                log.debug("dropping unexpected reply from %s to %s (reply_serial=%s)",
                          peer.unique_name, dest, h.reply_serial)
                self.deliver_to_monitors(peer, buf, h, fds)
                close_fds(fds)
                return
            requested_reply = True
        if self.policy.enforced and not self.policy_allows(peer, target, h, requested_reply, fds, buf):
            return
        if mtype == METHOD_CALL:
            if not h.flags & NO_REPLY_EXPECTED:
                refusal = self.replies.expect(peer, h.serial, target, self._limits)
                if refusal is not None:
                    close_fds(fds)
                    if monitored:
                        self.deliver_to_monitors(peer, buf, h, None)
                    self.outbox.send_error(peer, h.serial, *refusal)
                    return
        elif requested_reply:
            # The call is answered: ReplyTracker.forget(), inline to spend no call per reply.
            del self.replies.pending[key]
            peer.expecting.pop(key, None)
            settled(target, key)
        self.deliver(target, peer, buf, h, fds)
        if self.monitors and monitored:
            self.deliver_to_monitors(peer, buf, h, None, target.names)
        if self.matches.has_eavesdroppers:
            self.deliver_eavesdroppers(peer, buf, h, None, target)

    def _refuse_unknown_type(self, peer: Peer, buf: bytes, h: Header, fds: list[int] | None) -> None:
        """A message of a type the specification does not define (it says: ignore it) is not delivered;
        as dbus-daemon, monitors see it and AccessDenied answers it unless the sender expects no reply."""
        close_fds(fds)
        self.deliver_to_monitors(peer, buf, h, None)
        text = "Message bus will not accept messages of unknown type\n"
        if h.flags & NO_REPLY_EXPECTED:
            self.outbox.refuse(peer, h, errors.ACCESS_DENIED, text, monitors_only=True)
        else:
            self.outbox.send_error(peer, h.serial, errors.ACCESS_DENIED, text)

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
            close_fds(fds)
            self.deliver_to_monitors(sender, buf, h, None)
            self.outbox.refuse(sender, h, errors.ACCESS_DENIED, text)
        elif self.monitors:
            self.outbox.refuse(sender, h, errors.ACCESS_DENIED, text, monitors_only=True)
        return False

    def policy_allows_driver_call(self, sender: Peer, h: Header, fds: list[int] | None) -> bool:
        """Check the sender's send rules for a message to the bus itself (dbus-daemon checks them too)."""
        verdict = sender.policy.can_send(h, (DRIVER_NAME,), False, len(fds) if fds else 0)
        if verdict.allowed:
            return True
        log.warning("policy denied %s by send rule %s: %s (uid %s) -> the bus", h.describe(),
                    verdict.rule or "(default deny)", sender.unique_name, sender.credentials.uid)
        close_fds(fds)
        self.outbox.refuse(sender, h, errors.ACCESS_DENIED,
                           f"Rejected send message: {h.describe()} (send rule {verdict.rule or 'default deny'})")
        return False

    def deliver(self, target: Peer, sender: Peer, buf: bytes, h: Header, fds: list[int] | None) -> None:
        conn = target.conn
        user = target.user  # (a peer leaves self.peers and every rule, pending call and queue before it loses it)
        size = len(buf)
        if conn.out_bytes + size > self._limits.max_outgoing_bytes or user.out_bytes + size > self._user_out_bytes or (
                fds and (conn.out_fds + len(fds) > self._limits.max_outgoing_unix_fds
                         or user.out_fds + len(fds) > self._user_out_fds)):
            self._reject_full_queue(target, sender, buf, h, fds)
            return
        if fds and not conn.can_pass_fds:
            # The recipient cannot receive fds: the caller gets an error, as from dbus-daemon.
            close_fds(fds)
            if h.type == METHOD_CALL and not h.flags & NO_REPLY_EXPECTED:
                self.replies.forget((sender, h.serial, target))
                self.outbox.send_error(sender, h.serial, errors.NOT_SUPPORTED,
                                       "Tried to send message with Unix file descriptors to a client that "
                                       "doesn't support that.")
            return
        field = sender.sender_fields.get(h.endian)
        if field is None:
            field = sender.sender_fields[h.endian] = sender_field(sender.unique_name, h.endian)
        head, body = stamp_sender(buf, h, field)
        conn.queue(head, body, fds)
        size = len(head) + len(body)
        target.out_charged += size
        user.out_bytes += size
        if fds:
            target.fds_charged += len(fds)
            user.out_fds += len(fds)
        if conn.out_bytes > self.soft_queue_limit and sender.conn is not conn:
            self.backpressure.hold(sender.conn, conn)

    def _reject_full_queue(self, target: Peer, sender: Peer, buf: bytes, h: Header, fds: list[int] | None) -> None:
        """A unicast meets a full queue (the recipient's, or its user's): dbus-daemon's LimitsExceeded."""
        full = self.ledger.room_for(target, len(buf), len(fds) if fds else 0) or "max_outgoing_bytes"
        close_fds(fds)
        log.warning("rejecting %s from %s to %s (uid %s): destination has a full message queue (%s=%d)",
                    TYPE_NAMES.get(h.type, h.type), sender.unique_name, target.unique_name, target.user.uid,
                    full, self.ledger.limit_of(full))
        if h.type == METHOD_CALL and not h.flags & NO_REPLY_EXPECTED:
            self.replies.forget((sender, h.serial, target))
            self.outbox.send_error(sender, h.serial, errors.LIMITS_EXCEEDED,
                                   "Rejected: destination has a full message queue")

    def broadcast(self, sender: Peer, buf: bytes, h: Header, fds: list[int] | None) -> None:
        args_cache: list = []

        def get_args() -> list:
            if not args_cache:
                args_cache.append(body_arguments(buf, h))
            return args_cache[0]

        recipients = self.matches.recipients(h, sender.names, get_args)
        field = sender.sender_fields.get(h.endian)
        if field is None:
            field = sender.sender_fields[h.endian] = sender_field(sender.unique_name, h.endian)
        head, body = stamp_sender(buf, h, field)
        ledger = self.ledger
        if self.monitors:  # monitors see the broadcast first, then any refusal it met
            queue_to_monitors(ledger, self.monitors, head, body, h, sender.names, get_args)
        hard_limit = self._limits.max_outgoing_bytes
        user_limit = self._user_out_bytes
        size = len(head) + len(body)
        enforced = self.policy.enforced
        shared = SharedFds(fds) if fds else None  # one set of fds for every subscriber's queue
        for target in recipients:
            if target.monitor:
                continue
            if enforced and not self.policy_allows(sender, target, h, False, fds):
                continue
            conn = target.conn
            user = target.user
            # A subscriber that does not read loses broadcasts; it never stalls the emitter.
            if conn.out_bytes + size > hard_limit or user.out_bytes + size > user_limit:
                if conn.out_bytes + size > hard_limit:
                    conn.note_dropped_broadcast(hard_limit)
                else:
                    ledger.refused(target, "OutgoingBytes", user_limit, "broadcasts to it")
                continue
            if fds:
                if not conn.can_pass_fds:
                    self.outbox.refuse(sender, h, errors.NOT_SUPPORTED,
                                       f"broadcast cannot be delivered to {target.unique_name} because it does "
                                       f"not support receiving Unix fds", monitors_only=True)
                    continue
                full = ledger.room_for(target, size, len(fds))
                if full is not None:
                    ledger.refused(target, full, ledger.limit_of(full), "broadcasts with fds to it")
                    continue
                conn.queue(head, body, shared.share())
                ledger.charge_queued(target, size, len(fds))
            else:
                conn.queue(head, body)
                target.out_charged += size
                user.out_bytes += size
        if shared is not None:
            close_fds(shared)

    def deliver_to_monitors(self, sender: Peer, buf: bytes, h: Header, fds: list[int] | None,
                            destination_names: Collection[str] | None = None) -> None:
        """Show monitors a message; `destination_names` are the names of the peer it reached."""
        if self.monitors:
            field = sender.sender_fields.get(h.endian)
            if field is None:
                field = sender.sender_fields[h.endian] = sender_field(sender.unique_name, h.endian)
            head, body = stamp_sender(buf, h, field)
            queue_to_monitors(self.ledger, self.monitors, head, body, h, sender.names, lambda: read_body(buf, h),
                              destination_names)

    def deliver_eavesdroppers(self, sender: Peer, buf: bytes, h: Header, fds: list[int] | None,
                              target: Peer | None) -> None:
        """Deliver a unicast message to peers whose match rules ask to eavesdrop on it (its sender too)."""
        if not self.matches.has_eavesdroppers:
            return
        enforced = self.policy.enforced
        # A peer whose policy never lets it eavesdrop is passed over before its rules read the body.
        eavesdroppers = self.matches.recipients(h, sender.names, lambda: body_arguments(buf, h),
                                                addressed_recipient=target,
                                                recipient_names=target.names if target else None,
                                                may_eavesdrop=(lambda peer: peer.policy.may_eavesdrop)
                                                if enforced else None)
        if not eavesdroppers:
            return
        field = sender.sender_fields.get(h.endian) or sender_field(sender.unique_name, h.endian)
        head, body = stamp_sender(buf, h, field)
        for peer in eavesdroppers:
            if peer is not target and not peer.monitor:
                if enforced:
                    nfds = len(fds) if fds else 0
                    if not (sender.policy.can_send(h, peer.names, False, nfds).allowed and
                            peer.policy.can_receive(h, sender.names, False, nfds, True).allowed):
                        continue
                self.ledger.queue(peer, head, body)

    # ------------------------------------------------------------ housekeeping

    def _sweep_replies(self) -> None:
        """Once a second: calls past their reply timeout get NoReply from the bus."""
        for caller, serial in self.replies.expired(time.monotonic()):
            self.outbox.send_error(caller, serial, errors.NO_REPLY,
                                   "Message did not receive a reply (timeout by message bus)")
        self._sweeper = self.loop.call_later(1.0, self._sweep_replies)

    def close(self) -> None:
        self._sweeper.cancel()
        for link in list(self.links):
            link.drop("bus shutting down", level=logging.DEBUG)


__all__ = ["Bus", "SOFT_QUEUE_LIMIT"]
