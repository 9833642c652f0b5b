"""A federation of busd nodes over NATS: names, calls, replies and signals of chosen names shared between buses.

Theory. Each busd in a federation is a *node* with one NATS connection. It is
the bridge (busd/bridge/__init__.py) with NATS where the upstream bus was, and
the same import/export patterns, stand-in peers (mirror.Mirror), re-addressing
(readdress) and subscriptions (subscriptions.Subscriptions):

- Names. A local name matching --export, owned by a local client, is *claimed*:
  the node's heartbeat (nats_roster) lists it with its local owner. Every node
  computes the owner of each claimed name from the heartbeats it has heard (the
  earliest claim; the rest queue), so they agree. A claimed name matching
  --import whose owner is on another node is owned here by a stand-in for that
  remote connection (node, unique name). A node whose heartbeats stop for TTL
  seconds is gone: its stand-ins leave, their callers get NoReply from the bus.
- Calls are NATS requests to SUBJECT.node.<callee node>.call carrying the D-Bus
  message (re-addressed, no sender) with the caller's node and unique name in
  front of it; the callee node injects it from a stand-in for the caller, and
  the reply the bus routes to that stand-in is the NATS reply. A node that is
  gone answers no request: the caller gets ServiceUnknown at once. Serials and
  reply tracking stay per side: each bus checks the replies it delivers.
- Signals. Local match rules that could match a signal from an imported name
  become the node's *interest* (rules in its heartbeat). A signal from the local
  owner of a claimed name crosses only to the nodes with an interest rule that
  matches it (arguments included), and is injected there from the stand-in of
  its sender; local rules pick the recipients.
- Remote peers have the uid --remote-uid here (65534 unless configured, never
  busd's): local <policy> rules apply to them. Unix fds never cross: a stand-in
  takes none, so the bus answers NotSupported.

Subjects: busd.fed.<federation>.{state,hello,gone,bye} for everyone, and
busd.fed.<federation>.node.<node>.{call,signal,ping,reply.<token>} for one node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from ..bus.match import MatchRule
from ..bus.observers import BusObserver
from ..bus.ownership import IN_QUEUE, NameEvent
from ..bus.ports import SharedFds
from ..wire.marshal import Variant
from ..wire.message import SIGNAL
from .bridge import BRIDGE_INTERFACE, join_bus, listed
from .mirror import Home, Mirror, VirtualConnection, reassign_import
from .nats_link import Msg, NatsLink
from .nats_roster import HEARTBEAT, TTL, Claim, HeartbeatError, Owner, Roster, heartbeat
from .nats_traffic import StandIn, Traffic
from .settings import BridgeSettings, matches_any
from .subscriptions import Subscriptions

if TYPE_CHECKING:
    from ..bus.peer import Peer
    from ..bus.router import Bus

log = logging.getLogger("busd.bridge")

RTT_EVERY = 5  # heartbeats between round-trip measurements


class Federation(BusObserver):
    """This bus as one node of a federation over NATS, as `settings` describe it."""

    link = None  # MirrorHost's D-Bus upstream link: there is none, so stand-ins take no fds and queue nothing

    def __init__(self, bus: "Bus", settings: BridgeSettings):
        self.bus = bus
        self.settings = settings
        self.node = settings.node_name
        self.subject = f"busd.fed.{settings.federation}"
        self.instance = os.urandom(8).hex()
        self.roster = Roster(self.node)
        self.home = Home(self)
        self.stand_ins: dict[Owner, StandIn] = {}
        self.by_local_name: dict[str, StandIn] = {}
        self.imported: dict[str, Owner] = {}  # imported name -> its owner on another node
        self.export_owners: dict[str, "Peer"] = {}  # local names matching --export -> their local owner
        self.claims: dict[str, Claim] = {}  # this node's claims (names in its heartbeat)
        self.subscriptions = Subscriptions(settings.imports, self._remote_name_of)
        self.answers: dict[tuple[StandIn, int], str] = {}  # (stand-in, serial of an injected call) -> NATS reply
        self.crossed: set[str] = set()  # local peers other nodes have stand-ins for (callers)
        self.rtt: dict[str, float] = {}  # node -> round-trip time in ms
        self.nats = NatsLink(settings, self._up, self._down)
        self.traffic = Traffic(self)
        self.tasks: set[asyncio.Task] = set()
        self.beat_due = False
        self.stopped = False

    @property
    def connected(self) -> bool:
        return self.nats.connected

    # ------------------------------------------------------------ starting and stopping

    def start(self) -> None:
        join_bus(self.bus, self, self.home, self.properties, self._export_owner_changed)
        self.spawn(self.nats.run())
        self.spawn(self._tick())
        log.info("federation: node %s started for %s in federation %s (import %s; export %s)", self.node,
                 self.nats.shown, self.settings.federation, listed(self.settings.imports),
                 listed(self.settings.exports))

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for task in list(self.tasks):
            task.cancel()
        self.spawn(self._leave())
        for stand_in in list(self.stand_ins.values()):
            stand_in.drop("the federation stopped")
        bus = self.bus
        bus.remove_observer(self)
        bus.driver.remove_interface(BRIDGE_INTERFACE)
        for name in list(self.export_owners):
            self._export_owner_changed(name, None)
        self.home.drop("the federation stopped")
        log.info("federation: node %s stopped", self.node)

    async def _leave(self) -> None:
        """Say goodbye (the others drop our names at once instead of after TTL), then close."""
        nc = self.nats.nc
        if nc is not None and self.nats.connected:
            try:
                await nc.publish(f"{self.subject}.bye", self.node.encode())
                await nc.flush(timeout=1)
            except Exception:  # leaving anyway
                pass
        await self.nats.close()

    def spawn(self, coroutine: Any) -> None:
        task = self.bus.loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def virtual_closed(self, conn: VirtualConnection) -> None:
        """A stand-in left the bus (its peer left, its node left, or everything at shutdown)."""
        if conn is self.home:
            self.stop()
            return
        if not isinstance(conn, StandIn) or self.stand_ins.get((conn.node, conn.upstream_name)) is not conn:
            return
        del self.stand_ins[(conn.node, conn.upstream_name)]
        if conn.peer_name is not None:
            self.by_local_name.pop(conn.peer_name, None)
        for name in conn.imported:
            if self.imported.get(name) == (conn.node, conn.upstream_name):
                del self.imported[name]
        for key in [key for key in self.answers if key[0] is conn]:
            del self.answers[key]
        self.traffic.forget(conn)

    # MirrorHost: NATS has no input to hold; a full local recipient holds back nothing across the network.
    def pause_upstream(self, conn: VirtualConnection) -> None:
        pass

    def resume_upstream(self, conn: VirtualConnection) -> None:
        pass

    # ------------------------------------------------------------ NATS up and down, heartbeats

    def _up(self, first: bool) -> None:
        nc = self.nats.nc
        if first:
            log.info("federation: node %s connected to NATS %s", self.node, self.nats.shown)
            self.spawn(self._subscribe(nc))
        else:  # as loud as the loss it ends; nats-py has subscribed again
            log.warning("federation: node %s connected to NATS %s again; restoring names and subscriptions",
                        self.node, self.nats.shown)
            self._announce()

    def _down(self, reason: str) -> None:
        self.traffic.forget(reason=f"busd node {self.node} lost NATS during the call: {reason}")
        log.warning("federation: node %s lost NATS %s: %s; other nodes' names leave here in %g s unless it "
                    "is back", self.node, self.nats.shown, reason, TTL)

    async def _subscribe(self, nc: Any) -> None:
        mine = f"{self.subject}.node.{self.node}"
        await nc.subscribe(f"{self.subject}.state", cb=self._on_state)
        await nc.subscribe(f"{self.subject}.hello", cb=self._on_hello)
        await nc.subscribe(f"{self.subject}.gone", cb=self._on_gone)
        await nc.subscribe(f"{self.subject}.bye", cb=self._on_bye)
        await nc.subscribe(f"{mine}.call", cb=self.traffic.on_call)
        await nc.subscribe(f"{mine}.signal", cb=self.traffic.on_signal)
        await nc.subscribe(f"{mine}.ping", cb=self._on_ping)
        await nc.subscribe(f"{mine}.reply.*", cb=self.traffic.on_reply)
        self._announce()

    def _announce(self) -> None:
        """Ask every node for its heartbeat now (a newcomer, or back from a NATS outage), and send ours."""
        self.send(f"{self.subject}.hello", self.node.encode())
        self.beat()

    def beat(self) -> None:
        """Send this node's heartbeat now (ahead of anything sent after it: NATS keeps one sender's order)."""
        self.beat_due = False
        self.send(f"{self.subject}.state",
                  heartbeat(self.node, self.instance, self.claims, self.subscriptions, self.crossed))

    def _beat_soon(self) -> None:
        """Our state changed: one heartbeat for however many changes this loop turn brings."""
        if not self.beat_due and self.connected:
            self.beat_due = True
            self.bus.loop.call_soon(self._beat_if_due)

    def _beat_if_due(self) -> None:
        if self.beat_due:
            self.beat()

    def send(self, subject: str, data: bytes, reply: str = "") -> bool:
        return self.nats.send(subject, data, reply)

    async def _tick(self) -> None:
        beats = 0
        while True:
            await asyncio.sleep(HEARTBEAT)
            beats += 1
            if self.connected:
                self.beat()
            gone = self.roster.expire()
            for node in gone:
                log.warning("federation: node %s left: no heartbeat for %g s", node, TTL)
                self._node_left(node)
            if gone:
                self._resolve()
            if beats % RTT_EVERY == 1 and self.connected:
                self.spawn(self._measure())

    async def _measure(self) -> None:
        nc = self.nats.nc
        for node in list(self.roster.nodes):
            start = time.perf_counter()
            try:
                await nc.request(f"{self.subject}.node.{node}.ping", b"", timeout=2)
            except Exception:
                self.rtt.pop(node, None)
                continue
            self.rtt[node] = (time.perf_counter() - start) * 1000

    async def _on_ping(self, msg: Msg) -> None:
        if msg.reply:
            self.send(msg.reply, b"")

    async def _on_hello(self, msg: Msg) -> None:
        if msg.data.decode(errors="replace") != self.node:
            self._beat_soon()

    async def _on_state(self, msg: Msg) -> None:
        try:
            node, fresh, changed = self.roster.heard(msg.data)
        except HeartbeatError as exc:
            log.debug("federation: ignoring a message on %s: %s", msg.subject, exc)
            return
        if node == self.node:
            self.roster.forget(node)
            if json.loads(msg.data).get("instance") != self.instance:
                log.warning("federation: another busd calls itself node %s too; give each --node-name its own",
                            node)
            return
        if fresh:
            log.info("federation: node %s joined", node)
            self._beat_soon()
        if changed:
            self._resolve()
        self._forget_callers(node)

    def _forget_callers(self, node: str) -> None:
        """Stand-ins of `node`'s callers that its heartbeat no longer lists left (their 'gone' may have been
        lost in a NATS outage). A heartbeat sent after a call lists its caller: NATS keeps one sender's order."""
        callers = self.roster.nodes[node].callers
        for (owner_node, unique_name), stand_in in list(self.stand_ins.items()):
            if (owner_node == node and stand_in.caller and not stand_in.imported
                    and unique_name not in callers):
                stand_in.drop("its node no longer lists it")

    async def _on_bye(self, msg: Msg) -> None:
        """A node stopped (SIGTERM): its names leave now, not after TTL."""
        node = msg.data.decode(errors="replace")
        if node != self.node and self.roster.forget(node):
            log.info("federation: node %s left", node)
            self._node_left(node)
            self._resolve()

    def _node_left(self, node: str) -> None:
        self.rtt.pop(node, None)
        for (owner_node, _name), stand_in in list(self.stand_ins.items()):
            if owner_node == node:
                stand_in.drop(f"node {node} left the federation")

    async def _on_gone(self, msg: Msg) -> None:
        """A peer left its node: its stand-ins here leave too."""
        try:
            node, unique_name = json.loads(msg.data)
        except (ValueError, TypeError):
            return
        stand_in = self.stand_ins.get((node, unique_name))
        if stand_in is not None:
            stand_in.drop("it left its node")

    # ------------------------------------------------------------ names

    def _resolve(self) -> None:
        """Every imported name to the owner the heartbeats give it."""
        primaries = self.roster.primaries(self.claims)
        for name in set(self.imported) | set(primaries):
            if not matches_any(self.settings.imports, name):
                continue
            owner = primaries.get(name)
            self._set_import_owner(name, None if owner is None or owner[0] == self.node else owner)
        # Stand-ins that own nothing and never called us are no one's business here any more.
        for stand_in in list(self.stand_ins.values()):
            if not stand_in.imported and not stand_in.caller:
                stand_in.drop("it owns no imported name now")

    def _set_import_owner(self, name: str, owner: Owner | None) -> None:
        old = self.imported.get(name)
        if old == owner:
            return
        stand_in = self.stand_in_for(*owner) if owner is not None else None
        previous = self.stand_ins.get(old) if old is not None else None
        code = reassign_import(self.bus, self.imported, name, owner, stand_in, previous)
        if stand_in is None:
            log.info("federation: imported %s has no owner in the federation any more", name)
        elif code == IN_QUEUE and name in self.claims:
            # Both nodes claimed it; the nodes agree the other's claim came first: ours waits behind it.
            local = self.bus.registry.owner(name)
            self.bus.emit_name_events(self.bus.registry.yield_to(name, stand_in.peer))
            log.warning("federation: %s is owned by node %s, which claimed it first; local owner %s waits "
                        "behind it", name, owner[0], local.unique_name)
        elif code == IN_QUEUE and old is None:
            log.warning("federation: imported %s (node %s) waits here behind its local owner %s", name, owner[0],
                        self.bus.registry.owner(name).unique_name)
        else:
            log.info("federation: imported %s (node %s, owner %s there, %s here)", name, owner[0], owner[1],
                     stand_in.peer.unique_name)

    def stand_in_for(self, node: str, unique_name: str) -> StandIn:
        stand_in = self.stand_ins.get((node, unique_name))
        if stand_in is None:
            stand_in = StandIn(self, node, unique_name, self.settings.remote_uid)
            self.stand_ins[(node, unique_name)] = stand_in
            stand_in.peer_name = self.bus.attach_virtual_peer(stand_in).unique_name
            self.by_local_name[stand_in.peer_name] = stand_in
        return stand_in

    def _remote_name_of(self, local_name: str) -> str | None:
        stand_in = self.by_local_name.get(local_name)
        return stand_in.upstream_name if stand_in is not None else None

    def _export_owner_changed(self, name: str, owner: "Peer | None") -> None:
        if not matches_any(self.settings.exports, name):
            return
        if owner is not None and isinstance(owner.conn, VirtualConnection):
            owner = None  # an imported name, or one held by a stand-in: never claimed back
        previous = self.export_owners.get(name)
        if owner is previous:
            return
        if owner is not None:
            self.export_owners[name] = owner
            self.claims[name] = Claim(self.roster.claim_time(name), owner.unique_name)
            if previous is None:
                self.bus.matches.add(self.home.peer, MatchRule(type=SIGNAL, sender=name))
            log.info("federation: exporting %s (local owner %s)", name, owner.unique_name)
        else:
            del self.export_owners[name]
            self.claims.pop(name, None)
            if self.home.peer is not None:
                self.bus.matches.remove(self.home.peer, MatchRule(type=SIGNAL, sender=name))
            log.info("federation: no longer exporting %s: its local owner let it go", name)
        self._beat_soon()
        self._resolve()

    # ------------------------------------------------------------ local hooks

    def names_changed(self, events: list[NameEvent]) -> None:
        for event in events:
            if event.kind != "owner_changed":
                continue
            if event.name[0] == ":":
                if event.new_owner is None:
                    if self.subscriptions.peer_left(event.old_owner):
                        self._beat_soon()
                    if event.name in self.crossed:
                        self.crossed.discard(event.name)
                        self.send(f"{self.subject}.gone", json.dumps([self.node, event.name]).encode())
                continue
            if self.settings.exports:
                self._export_owner_changed(event.name, event.new_owner)

    def match_added(self, peer: "Peer", rule: MatchRule) -> None:
        if isinstance(peer.conn, VirtualConnection):
            return
        if self.subscriptions.add(peer, rule) is not None:
            # Now, not later: a call the subscriber makes next crosses after this heartbeat (NATS keeps order).
            self.beat()

    def match_removed(self, peer: "Peer", rule: MatchRule) -> None:
        if self.subscriptions.remove(peer, rule) is not None:
            self._beat_soon()

    # MirrorHost: what the bus routes to the stand-ins and to the home goes out as traffic.
    def from_mirror(self, stand_in: Mirror, head: bytes, body: Any, fds: list[int] | SharedFds | None) -> None:
        self.traffic.from_mirror(stand_in, head, body, fds)

    def from_home(self, home: Home, head: bytes, body: Any, fds: list[int] | SharedFds | None) -> None:
        self.traffic.from_home(home, head, body, fds)

    # ------------------------------------------------------------ status (dev.busd.Bridge1)

    def properties(self) -> dict[str, Variant]:
        primaries = self.roster.primaries(self.claims)
        imported = {}
        for name, owner in self.imported.items():
            stand_in = self.stand_ins.get(owner)
            if stand_in is not None and self.bus.registry.owner(name) is stand_in.peer:
                imported[name] = (f"{owner[0]}/{owner[1]}", stand_in.peer.unique_name)
        exported = {name: (self.node, claim.owner) for name, claim in self.claims.items()
                    if primaries.get(name, (None,))[0] == self.node}
        waiting = sorted(name for name in self.claims if name not in exported)
        nodes = {self.node: (self.connected, 0.0, sorted(self.claims))}
        for node, state in self.roster.nodes.items():
            nodes[node] = (True, round(self.rtt.get(node, -1.0), 3), sorted(state.claims))
        return {
            "Upstream": Variant("s", self.nats.shown),
            "Connected": Variant("b", self.connected),
            "UpstreamUniqueName": Variant("s", self.node),
            "ImportPatterns": Variant("as", [str(p) for p in self.settings.imports]),
            "ExportPatterns": Variant("as", [str(p) for p in self.settings.exports]),
            "Imported": Variant("a{s(ss)}", dict(sorted(imported.items()))),
            "Exported": Variant("a{s(ss)}", dict(sorted(exported.items()))),
            "ExportsWaiting": Variant("as", waiting),
            "Subscriptions": Variant("a{su}", dict(self.subscriptions.counts)),
            "Connects": Variant("u", self.nats.connects),
            "LastError": Variant("s", self.nats.last_error),
            "Nodes": Variant("a{s(bdas)}", dict(sorted(nodes.items()))),
        }


__all__ = ["Federation", "StandIn"]
