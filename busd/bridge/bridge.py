"""The bridge's orchestration: one upstream connection, the mirrors, imports, exports and the traffic between.

Bridge keeps the upstream link connected (reconnecting with backoff), turns
upstream name owners into mirrors owning imported names here, requests exported
names upstream for their local owners, and carries calls, replies and signals
across, re-addressed. The theory is in busd/bridge/__init__.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from ..bus import errors
from ..bus.match import MatchRule
from ..bus.observers import BusObserver
from ..bus.ownership import EXISTS, IN_QUEUE, NameEvent
from ..bus.ports import SharedFds
from ..interfaces import introspection_xml
from ..wire.address import AddressError
from ..wire.errors import ProtocolError
from ..wire.marshal import Variant
from ..wire.message import (
    ERROR, METHOD_CALL, METHOD_RETURN, SIGNAL, Header, build_message, parse_header, read_body,
)
from ..wire.wellknown import DRIVER_NAME
from .link import LinkError, UpstreamLink, close_fds, error_text
from .mirror import Home, Mirror, VirtualConnection, inject, reassign_import
from .readdress import readdressed
from .settings import NAME_OWNER_CHANGED_RULE, BridgeSettings, matches_any
from .subscriptions import Subscriptions

if TYPE_CHECKING:
    from ..bus.peer import Peer
    from ..bus.router import Bus

log = logging.getLogger("busd.bridge")

BRIDGE_INTERFACE = "dev.busd.Bridge1"
INITIAL_BACKOFF = 0.1  # seconds before the first reconnection attempt; doubles up to MAX_BACKOFF
MAX_BACKOFF = 10.0
CONNECT_TIMEOUT = 10.0


def bridge_interface_xml() -> str:
    text = introspection_xml(BRIDGE_INTERFACE)
    start = text.index("  <interface ")
    return text[start:text.index("</interface>", start) + len("</interface>\n")]


class Bridge(BusObserver):
    """One bridge between the local bus and an upstream bus, as `settings` describe it."""

    def __init__(self, bus: "Bus", settings: BridgeSettings):
        self.bus = bus
        self.settings = settings
        self.link: UpstreamLink | None = None
        self.upstream_address = settings.upstream
        self.connects = 0
        self.last_error = ""
        self.home = Home(self)
        self.mirrors: dict[str, Mirror] = {}  # upstream unique name -> its mirror
        self.by_local_name: dict[str, Mirror] = {}  # a mirror's local unique name -> the mirror
        self.imported: dict[str, str] = {}  # imported name -> its upstream owner
        self.forwarded: dict[int, tuple[Mirror, str, int]] = {}  # upstream serial -> (mirror, caller, local serial)
        self.export_owners: dict[str, "Peer"] = {}  # local names to export -> their local owner
        self.exported: set[str] = set()  # names the bridge owns upstream
        self.subscriptions = Subscriptions(settings.imports, self._upstream_name_of)
        self.paused_by: set[VirtualConnection] = set()
        self.refused: set[str] = set()  # local peers refused a message to an upstream peer (logged once each)
        self.task: asyncio.Task | None = None
        self._lost: asyncio.Future | None = None
        self.stopped = False

    @property
    def connected(self) -> bool:
        return self.link is not None and not self.link.closed

    # ------------------------------------------------------------ starting and stopping

    def start(self) -> None:
        join_bus(self.bus, self, self.home, self.properties, self._export_owner_changed)
        self.task = self.bus.loop.create_task(self._keep_connected())
        log.info("bridge: started for upstream %s (import %s; export %s)", self.settings.upstream,
                 listed(self.settings.imports), listed(self.settings.exports))

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.task is not None:
            self.task.cancel()
        if self.link is not None:
            self.link.close("the bridge stopped", notify=False)
        self._withdraw("the bridge stopped")
        self.link = None
        bus = self.bus
        bus.remove_observer(self)
        bus.driver.remove_interface(BRIDGE_INTERFACE)
        for name in list(self.export_owners):
            self._export_owner_changed(name, None)
        self.home.drop("the bridge stopped")
        log.info("bridge: stopped")

    def virtual_closed(self, conn: VirtualConnection) -> None:
        """A virtual peer left the bus (a mirror whose upstream twin left, or everything at shutdown)."""
        self.paused_by.discard(conn)
        if conn is self.home:
            self.stop()  # the bus is shutting down
            return
        if not isinstance(conn, Mirror) or self.mirrors.get(conn.upstream_name) is not conn:
            return
        del self.mirrors[conn.upstream_name]
        if conn.peer_name is not None:
            self.by_local_name.pop(conn.peer_name, None)
        for name in conn.imported:
            if self.imported.get(name) == conn.upstream_name:
                del self.imported[name]
        if self.connected:
            self.link.call("RemoveMatch", "s", [_departure_rule(conn.upstream_name)], handler=_ignore)

    # ------------------------------------------------------------ the upstream connection

    async def _keep_connected(self) -> None:
        delay = INITIAL_BACKOFF
        failing = False
        loop = self.bus.loop
        limits = self.bus.limits
        while not self.stopped:
            link = UpstreamLink(loop, self.from_upstream, self._link_lost, on_drained=self._upstream_drained,
                                schedule_flush=self.bus.schedule_flush, on_read_start=self.bus.input_started,
                                on_read_done=self.bus.input_done, max_message_size=limits.max_message_size,
                                max_message_unix_fds=limits.max_message_unix_fds)
            link.low_water = self.bus.soft_queue_limit // 2
            try:
                address = self.settings.address()
                self.upstream_address = address
                await asyncio.wait_for(link.open(address, refuse_guid=self.bus.guid), CONNECT_TIMEOUT)
            except (LinkError, AddressError, asyncio.TimeoutError) as exc:
                link.close("", notify=False)
                self.last_error = str(exc) or f"no answer within {CONNECT_TIMEOUT:g} s"
                if not failing:
                    failing = True
                    log.warning("bridge: cannot connect to upstream %s: %s; retrying with backoff up to %g s",
                                self.upstream_address, self.last_error, MAX_BACKOFF)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            failing = False
            delay = INITIAL_BACKOFF
            self._lost = loop.create_future()
            self._connected(link)
            await self._lost
            await asyncio.sleep(delay)

    def _connected(self, link: UpstreamLink) -> None:
        self.link = link
        self.connects += 1
        self.last_error = ""
        if self.connects == 1:
            log.info("bridge: connected to upstream %s as %s", self.upstream_address, link.unique_name)
        else:  # as loud as the loss it ends
            log.warning("bridge: connected to upstream %s as %s again; restoring imports, exports and "
                        "subscriptions", self.upstream_address, link.unique_name)
        # Restore everything in one pipelined burst; replies are applied inline, in stream order.
        for pattern in self.settings.imports:
            link.call("AddMatch", "s", [pattern.owner_changed_rule()])
        if self.settings.imports:
            link.call("ListNames", handler=partial(self._names_listed, link))
        for name in self.export_owners:
            self._request_upstream(name)
        for rule in self.subscriptions:
            link.call("AddMatch", "s", [rule])
        link.start()

    def _link_lost(self, reason: str) -> None:
        self.last_error = reason
        log.warning("bridge: lost upstream %s: %s; its names are withdrawn here until it is back",
                    self.upstream_address, reason)
        self._withdraw("the upstream bus went away")
        self.link = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def _withdraw(self, reason: str) -> None:
        """Forget everything that lived on the upstream connection; local callers get NoReply from the bus."""
        for mirror in list(self.mirrors.values()):
            mirror.drop(reason)
        self.forwarded.clear()
        self.exported.clear()
        self.subscriptions.unbind()
        for conn in list(self.paused_by):
            self.resume_upstream(conn)

    def pause_upstream(self, conn: VirtualConnection) -> None:
        """A local recipient is full: read no more from upstream until it catches up."""
        self.paused_by.add(conn)
        if self.link is not None:
            self.link.hold_input()

    def resume_upstream(self, conn: VirtualConnection) -> None:
        self.paused_by.discard(conn)
        if not self.paused_by and self.link is not None:
            self.link.release_input()

    def _upstream_drained(self) -> None:
        for conn in [self.home, *self.mirrors.values()]:
            self.bus.output_flushed(conn)

    # ------------------------------------------------------------ imports: upstream names here

    def _names_listed(self, link: UpstreamLink, h: Header, buf: bytes) -> None:
        if link is not self.link:
            return
        if h.type == ERROR:
            log.warning("bridge: the upstream bus refused ListNames: %s", error_text(h, buf))
            return
        for name in read_body(buf, h)[0]:
            if matches_any(self.settings.imports, name):
                link.call("GetNameOwner", "s", [name], handler=partial(self._owner_found, link, name))

    def _owner_found(self, link: UpstreamLink, name: str, h: Header, buf: bytes) -> None:
        if link is not self.link:
            return
        owner = read_body(buf, h)[0] if h.type == METHOD_RETURN else None
        self._set_import_owner(name, owner)

    def _set_import_owner(self, name: str, owner: str | None) -> None:
        """`name`, imported, has a new upstream owner (None: none, or the bridge itself)."""
        if owner is not None and self.link is not None and owner == self.link.unique_name:
            owner = None  # our own export seen from upstream: it must not come back as an import
        old = self.imported.get(name)
        if old == owner:
            return
        mirror = self._mirror(owner) if owner is not None else None
        previous = self.mirrors.get(old) if old is not None else None
        code = reassign_import(self.bus, self.imported, name, owner, mirror, previous)
        if mirror is None:
            log.info("bridge: imported %s has no owner upstream any more", name)
        elif code == IN_QUEUE and old is None:
            log.warning("bridge: imported %s waits here behind its local owner %s", name,
                        self.bus.registry.owner(name).unique_name)
        else:
            log.info("bridge: imported %s (upstream owner %s, here %s)", name, owner, mirror.peer.unique_name)

    def _mirror(self, upstream_name: str) -> Mirror:
        """The local stand-in for an upstream connection, made on first need and kept while it is connected."""
        mirror = self.mirrors.get(upstream_name)
        if mirror is not None:
            return mirror
        mirror = Mirror(self, upstream_name)
        self.mirrors[upstream_name] = mirror
        peer = self.bus.attach_virtual_peer(mirror)
        mirror.peer_name = peer.unique_name
        self.by_local_name[peer.unique_name] = mirror
        link = self.link
        # Watch for it leaving; it may have left already, so ask once the watch is in place.
        link.call("AddMatch", "s", [_departure_rule(upstream_name)])
        link.call("NameHasOwner", "s", [upstream_name], handler=partial(self._still_there, link, mirror))
        return mirror

    def _still_there(self, link: UpstreamLink, mirror: Mirror, h: Header, buf: bytes) -> None:
        if link is self.link and h.type == METHOD_RETURN and not read_body(buf, h)[0]:
            mirror.drop("it had left the upstream bus")

    # ------------------------------------------------------------ exports: local names upstream

    def _export_owner_changed(self, name: str, owner: "Peer | None") -> None:
        if not matches_any(self.settings.exports, name):
            return
        if owner is not None and isinstance(owner.conn, VirtualConnection):
            owner = None  # an imported name, or one held by the bridge: never sent back
        if owner is not None:
            first = name not in self.export_owners
            self.export_owners[name] = owner
            if first:
                self.bus.matches.add(self.home.peer, MatchRule(type=SIGNAL, sender=name))
                if self.connected:
                    self._request_upstream(name)
            return
        if self.export_owners.pop(name, None) is None:
            return
        if self.home.peer is not None:
            self.bus.matches.remove(self.home.peer, MatchRule(type=SIGNAL, sender=name))
        if name in self.exported:
            self.exported.discard(name)
            log.info("bridge: no longer exporting %s: its local owner let it go", name)
        if self.connected:
            self.link.call("ReleaseName", "s", [name])

    def _request_upstream(self, name: str) -> None:
        self.link.call("RequestName", "su", [name, 0], handler=partial(self._name_requested, self.link, name))

    def _name_requested(self, link: UpstreamLink, name: str, h: Header, buf: bytes) -> None:
        if link is not self.link:
            return
        if h.type == ERROR:
            log.warning("bridge: cannot export %s: the upstream bus refused RequestName: %s", name,
                        error_text(h, buf))
            return
        code = read_body(buf, h)[0]
        if code in (IN_QUEUE, EXISTS):
            log.warning("bridge: exported %s is owned upstream by another connection; queued behind it", name)
        else:
            self._name_acquired(name)

    def _name_acquired(self, name: str) -> None:
        if name in self.export_owners:
            if name not in self.exported:
                self.exported.add(name)
                log.info("bridge: exported %s", name)
        elif self.connected:
            self.link.call("ReleaseName", "s", [name])  # its local owner left while we were queued

    # ------------------------------------------------------------ local hooks

    def names_changed(self, events: list[NameEvent]) -> None:
        for event in events:
            if event.kind != "owner_changed":
                continue
            if event.name[0] == ":":
                if event.new_owner is None:
                    self.refused.discard(event.name)
                    for upstream_rule in self.subscriptions.peer_left(event.old_owner):
                        self._remove_upstream_match(upstream_rule)
                continue
            if self.settings.exports:
                self._export_owner_changed(event.name, event.new_owner)

    def match_added(self, peer: "Peer", rule: MatchRule) -> None:
        if isinstance(peer.conn, VirtualConnection):
            return
        upstream_rule = self.subscriptions.add(peer, rule)
        if upstream_rule is not None and self.connected:
            self.link.call("AddMatch", "s", [upstream_rule])

    def match_removed(self, peer: "Peer", rule: MatchRule) -> None:
        upstream_rule = self.subscriptions.remove(peer, rule)
        if upstream_rule is not None:
            self._remove_upstream_match(upstream_rule)

    def _remove_upstream_match(self, upstream_rule: str) -> None:
        if self.connected:
            # Upstream may have dropped it already (a rule naming a peer that left): no complaint then.
            self.link.call("RemoveMatch", "s", [upstream_rule], handler=_ignore)

    def _upstream_name_of(self, local_name: str) -> str | None:
        """The upstream unique name of the mirror that is `local_name` here; None for a local peer."""
        mirror = self.by_local_name.get(local_name)
        return mirror.upstream_name if mirror is not None else None

    # ------------------------------------------------------------ messages from upstream

    def from_upstream(self, buf: bytes, h: Header, fds: list[int] | None) -> None:
        handler = self._UPSTREAM.get(h.type)
        if handler is None:
            close_fds(fds)  # a message type from the future: nothing here understands it
            return
        handler(self, buf, h, fds)

    def _upstream_reply(self, buf: bytes, h: Header, fds: list[int] | None) -> None:
        entry = self.forwarded.pop(h.reply_serial, None)
        if entry is None or entry[0].closed:
            close_fds(fds)
            return
        mirror, caller, serial = entry
        self._inject(mirror, buf, h, fds, caller, serial)

    def _upstream_call(self, buf: bytes, h: Header, fds: list[int] | None) -> None:
        destination = h.destination
        if destination == self.link.unique_name:
            owners = {self.export_owners[name] for name in self.exported if name in self.export_owners}
            if len(owners) == 1:
                destination = next(iter(owners)).unique_name
            else:
                self._refuse(buf, h, fds, f"{destination} is busd's bridge; call one of the names it exports "
                                          f"({', '.join(sorted(self.exported)) or 'none now'}) instead")
                return
        elif destination not in self.exported or destination not in self.export_owners:
            self._refuse(buf, h, fds, f"The name {destination} is not exported by busd's bridge")
            return
        if h.sender is None:
            close_fds(fds)
            return
        mirror = self._mirror(h.sender)
        serial = mirror.next_serial()
        if not h.no_reply_expected:
            mirror.calls[serial] = h.serial
        self._inject(mirror, buf, h, fds, destination, None, serial)

    def _refuse(self, buf: bytes, h: Header, fds: list[int] | None, text: str) -> None:
        close_fds(fds)
        if h.no_reply_expected or h.sender is None:
            return
        link = self.link
        link.send(build_message(ERROR, link.next_serial(), error_name=errors.SERVICE_UNKNOWN,
                                reply_serial=h.serial, destination=h.sender, signature="s", body=[text]))

    def _upstream_signal(self, buf: bytes, h: Header, fds: list[int] | None) -> None:
        sender = h.sender
        if sender == DRIVER_NAME:
            close_fds(fds)
            handler = self._DRIVER_SIGNALS.get(h.member)
            if handler is not None and h.interface == DRIVER_NAME:
                try:
                    args = read_body(buf, h)
                except ProtocolError:
                    return
                handler(self, *args)
            return
        destination = h.destination
        if destination is not None and destination in self.exported and sender is not None:
            self._inject(self._mirror(sender), buf, h, fds, destination, None)
            return
        # A broadcast, or a signal addressed to the bridge on behalf of its local callers (a portal's
        # Response): it crosses only from an imported service, and local match rules pick the recipients.
        mirror = self.mirrors.get(sender)
        if mirror is None or not mirror.imported or (destination is not None and destination != self.link.unique_name):
            close_fds(fds)
            return
        self._inject(mirror, buf, h, fds, None, None)

    _UPSTREAM = {METHOD_CALL: _upstream_call, METHOD_RETURN: _upstream_reply, ERROR: _upstream_reply,
                 SIGNAL: _upstream_signal}

    def _upstream_owner_changed(self, name: str, old: str, new: str) -> None:
        if name[0] == ":":
            mirror = self.mirrors.get(name)
            if not new and mirror is not None:
                mirror.drop("it left the upstream bus")
            return
        if matches_any(self.settings.imports, name):
            self._set_import_owner(name, new or None)

    def _upstream_name_acquired(self, name: str) -> None:
        if name[0] != ":":
            self._name_acquired(name)

    def _upstream_name_lost(self, name: str) -> None:
        if name in self.exported:
            self.exported.discard(name)
            log.info("bridge: lost exported %s upstream", name)

    _DRIVER_SIGNALS: dict[str, Callable[..., None]] = {
        "NameOwnerChanged": _upstream_owner_changed,
        "NameAcquired": _upstream_name_acquired,
        "NameLost": _upstream_name_lost,
    }

    def _inject(self, mirror: Mirror, buf: bytes, h: Header, fds: list[int] | None, destination: str | None,
                reply_serial: int | None, serial: int | None = None) -> None:
        """Hand an upstream message to the local bus as sent by `mirror`, re-addressed."""
        inject(self.bus, mirror, buf, h, fds, destination, reply_serial, serial)

    # ------------------------------------------------------------ messages from the local bus

    def from_mirror(self, mirror: Mirror, head: bytes, body: Any, fds: list[int] | SharedFds | None) -> None:
        """A message the local bus routed to a mirror: on to its upstream twin (or the name it was sent to)."""
        message = head + body if body else head
        h = parse_header(message, validate_body=False)
        link = self.link
        if link is None or link.closed or (h.type == SIGNAL and h.sender == DRIVER_NAME):
            close_fds(fds)  # the local driver's NameAcquired and NameLost are for the mirror alone
            return
        if h.type in (METHOD_CALL, SIGNAL) and not mirror.imported and not self._serves_upstream(h.sender):
            self._refuse_local(mirror, h, fds)
            return
        destination = h.destination
        if destination is None or destination[0] == ":":
            destination = mirror.upstream_name
        reply_serial = None
        if h.type == METHOD_CALL:
            serial = link.next_serial()
            if not h.no_reply_expected:
                self.forwarded[serial] = (mirror, h.sender, h.serial)
        elif h.type == SIGNAL:
            serial = link.next_serial()
        else:
            reply_serial = mirror.calls.pop(h.reply_serial, None)
            if reply_serial is None:
                close_fds(fds)
                return
            serial = link.next_serial()
        link.send(readdressed(h, serial, destination, reply_serial)[0], memoryview(message)[h.body_start:]
                  if h.body_len else b"", fds)

    def _serves_upstream(self, local_name: str | None) -> bool:
        """Is `local_name` the local owner of a name the bridge exports (whose upstream callers it may call back)?"""
        peer = self.bus.peers.get(local_name) if local_name else None
        return peer is not None and not peer.names.isdisjoint(self.export_owners)

    def _refuse_local(self, mirror: Mirror, h: Header, fds: list[int] | SharedFds | None) -> None:
        """A local peer addressed the mirror of an upstream caller (it owns no imported name): ServiceUnknown.

        What may reach that upstream peer is the answers to its calls and what exported services send it.
        """
        close_fds(fds)
        if h.sender not in self.refused:
            self.refused.add(h.sender)  # one line per peer, however much it sends
            log.warning("bridge: refusing %s: %s is upstream %s, which owns no imported name", h.describe(),
                        mirror.peer_name, mirror.upstream_name)
        if h.type == METHOD_CALL and not h.no_reply_expected:
            error = build_message(ERROR, mirror.next_serial(), error_name=errors.SERVICE_UNKNOWN,
                                  reply_serial=h.serial, destination=h.sender, signature="s",
                                  body=[f"{mirror.peer_name} is an upstream peer that busd's bridge does not import"])
            # Once the call is routed, so that monitors see it before its answer.
            self.bus.loop.call_soon(lambda: mirror.closed or self.bus.receive(mirror.peer, error,
                                                                              parse_header(error), None))

    def from_home(self, home: Home, head: bytes, body: Any, fds: list[int] | SharedFds | None) -> None:
        """A signal from the local owner of an exported name (by the home peer's rules), or a stray call."""
        message = head + body if body else head
        h = parse_header(message, validate_body=False)
        if h.type == METHOD_CALL and not h.no_reply_expected:
            close_fds(fds)
            reply = build_message(ERROR, home.next_serial(), error_name=errors.UNKNOWN_METHOD,
                                  reply_serial=h.serial, destination=h.sender, signature="s",
                                  body=[f"{home.peer.unique_name} is busd's bridge; it has no methods"])
            self.bus.receive(home.peer, reply, parse_header(reply), None)
            return
        sender = self.bus.peers.get(h.sender) if h.sender else None
        link = self.link
        if (h.type != SIGNAL or h.destination is not None or sender is None or link is None or link.closed
                or self.exported.isdisjoint(sender.names)):
            close_fds(fds)
            return
        link.send(readdressed(h, link.next_serial(), None, None)[0], memoryview(message)[h.body_start:]
                  if h.body_len else b"", fds)

    # ------------------------------------------------------------ status (dev.busd.Bridge1)

    def properties(self) -> dict[str, Variant]:
        link = self.link if self.connected else None
        upstream_unique = link.unique_name if link is not None else ""
        imported = {}
        for name, owner in self.imported.items():
            mirror = self.mirrors.get(owner)
            if mirror is not None and self.bus.registry.owner(name) is mirror.peer:
                imported[name] = (owner, mirror.peer.unique_name)
        exported = {name: (upstream_unique, self.export_owners[name].unique_name)
                    for name in self.exported if name in self.export_owners}
        waiting = sorted(name for name in self.export_owners if name not in self.exported) if link else []
        return {
            "Upstream": Variant("s", self.upstream_address),
            "Connected": Variant("b", link is not None),
            "UpstreamUniqueName": Variant("s", upstream_unique),
            "ImportPatterns": Variant("as", [str(p) for p in self.settings.imports]),
            "ExportPatterns": Variant("as", [str(p) for p in self.settings.exports]),
            "Imported": Variant("a{s(ss)}", dict(sorted(imported.items()))),
            "Exported": Variant("a{s(ss)}", dict(sorted(exported.items()))),
            "ExportsWaiting": Variant("as", waiting),
            "Subscriptions": Variant("a{su}", dict(self.subscriptions.counts)),
            "Connects": Variant("u", self.connects),
            "LastError": Variant("s", self.last_error),
            "Nodes": Variant("a{s(bdas)}", {}),  # a federation's (nats_federation.py)
        }


def join_bus(bus: "Bus", observer: BusObserver, home: Home, properties: Callable[[], dict[str, Variant]],
             owner_changed: Callable[[str, "Peer | None"], None]) -> None:
    """How a bridge or a federation starts on the bus: observe it, serve dev.busd.Bridge1 from `properties`,
    attach its home peer, and take in the match rules and names that exist already (one started by a reload)."""
    bus.add_observer(observer)
    bus.driver.add_interface(BRIDGE_INTERFACE, bridge_interface_xml(), properties)
    bus.attach_virtual_peer(home)
    for owner in bus.matches.owners():
        for rule in bus.matches.rules(owner):
            observer.match_added(owner, rule)
    for name in bus.registry.names():
        owner_changed(name, bus.registry.owner(name))


def _departure_rule(unique_name: str) -> str:
    return f"{NAME_OWNER_CHANGED_RULE},arg0='{unique_name}'"


def _ignore(h: Header, buf: bytes) -> None:
    pass


def listed(patterns: tuple) -> str:
    return ", ".join(str(p) for p in patterns) or "nothing"


__all__ = ["BRIDGE_INTERFACE", "Bridge", "bridge_interface_xml", "join_bus", "listed"]
