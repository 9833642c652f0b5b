"""What `busdctl web` knows of the bus: its peers, the traffic between them, the latest messages.

Pure state, no I/O: the web server feeds it what the driver says about peers and every message
the monitor sees (a busd.wire Header, the bytes as they arrived, the arrival time), and asks it for
the map (peers and the edges of the last WINDOW seconds), the messages seen since its last look,
and a pcapng capture of the messages it keeps.

Theory.  Peers are keyed by unique name, except the bus driver, which is its own well-known name.
A message's destination may be a well-known name: it is drawn to the owner the picture knows
(owners change with the driver's NameOwnerChanged, which the monitor sees as any other signal).
A method call is remembered by (sender, serial) until its reply comes back, which pairs them and
gives the call's latency. Replies do not make edges of their own: the call's edge stands for both.
The page's own connections (its monitor and the connection it calls through) are left out, so
that what it draws is the bus's traffic, not the page's questions.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from busd.wire.errors import ProtocolError
from busd.wire.message import ERROR, METHOD_CALL, METHOD_RETURN, SIGNAL, Header, read_body
from busd.wire.wellknown import DRIVER_NAME

from .pcapng import enhanced_packet, interface_description, section_header

WINDOW = 10.0  # seconds of traffic an edge's rate covers
KEEP_MESSAGES = 5000  # messages kept for the sequence diagram and the pcapng export
KEEP_BYTES = 64 * 1024 * 1024  # and at most this many of their bytes (a message may be up to 128 MiB)
KEEP_PENDING_CALLS = 10000  # calls waiting for a reply; the oldest are forgotten past this
SNAPLEN = 65536

TYPE_NAMES = {METHOD_CALL: "call", METHOD_RETURN: "return", ERROR: "error", SIGNAL: "signal"}

# What a peer is, for the map: the bus itself, a stand-in living inside the bus process (busd's bridge
# peers for another bus), this page's own connections, or an ordinary client.
DRIVER, BRIDGE, SELF, PEER = "driver", "bridge", "self", "peer"


@dataclass
class Peer:
    """One connection on the bus (or the driver), as the map shows it."""

    id: str  # unique name; the driver's is org.freedesktop.DBus
    names: set[str] = field(default_factory=set)
    pid: int | None = None
    uid: int | None = None
    user: str | None = None
    process: str | None = None
    kind: str = PEER
    quota: float | None = None  # the largest share of a limit it uses (0..1), when the bus reports it
    quota_resource: str = ""
    queued: int | None = None  # bytes queued to or from it, when the bus reports them
    stands_for: str = ""  # a bridge stand-in: the connection on the other bus it stands for
    gone: bool = False  # disconnected; drawn until its last traffic leaves the window

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "names": sorted(self.names), "pid": self.pid, "uid": self.uid, "user": self.user,
                "process": self.process, "kind": self.kind, "quota": self.quota,
                "quota_resource": self.quota_resource, "queued": self.queued, "stands_for": self.stands_for,
                "gone": self.gone}


@dataclass
class Record:
    """One message, as the sequence diagram and the filter see it."""

    id: int
    time: float
    type: str
    sender: str  # peer ids (unique names, or the driver's name), "" when unknown
    destination: str  # "" for a broadcast signal
    path: str
    interface: str
    member: str
    error_name: str
    serial: int
    reply_serial: int | None
    signature: str
    size: int
    reply_to: int | None = None  # for a reply or error: the id of the call it answers
    latency: float | None = None  # seconds from the call to this reply
    text: str = ""  # an error's message

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "time": self.time, "type": self.type, "sender": self.sender,
                "destination": self.destination, "path": self.path, "interface": self.interface,
                "member": self.member, "error_name": self.error_name, "serial": self.serial,
                "reply_serial": self.reply_serial, "signature": self.signature, "size": self.size,
                "reply_to": self.reply_to, "latency": self.latency, "text": self.text}


def matches(record: Record, words: list[str], names_of: dict[str, set[str]]) -> bool:
    """Whether every word of a filter is found (case-insensitively) in one of the message's
    sender, destination (or their well-known names), path, interface, member or error name.
    The page's filter box does the same in JavaScript."""
    if not words:
        return True
    fields = [record.sender, record.destination, record.path, record.interface, record.member, record.error_name,
              *names_of.get(record.sender, ()), *names_of.get(record.destination, ())]
    haystack = "\n".join(fields).lower()
    return all(word.lower() in haystack for word in words)


class BusPicture:
    """Peers, edges and recent messages of one bus, updated from the monitor and the driver."""

    def __init__(self, window: float = WINDOW, keep: int = KEEP_MESSAGES, keep_bytes: int = KEEP_BYTES) -> None:
        self.window = window
        self.peers: dict[str, Peer] = {DRIVER_NAME: Peer(DRIVER_NAME, {DRIVER_NAME}, kind=DRIVER)}
        self.owners: dict[str, str] = {DRIVER_NAME: DRIVER_NAME}  # well-known name -> peer id
        self.own: set[str] = set()  # this page's connections: their traffic is left out
        self.bus_pid: int | None = None
        self.bridged = False  # the bus is a busd with a bridge (or federation): its own peer is a stand-in too
        self._ids = itertools.count(1)
        self._messages: deque[tuple[Record, bytes]] = deque()
        self._keep, self._keep_bytes, self._kept_bytes = keep, keep_bytes, 0
        self._unsent: list[Record] = []
        self._calls: dict[tuple[str, int], Record] = {}
        # Traffic counted per second of arrival (a flood costs a counter, not an entry per message), and
        # the totals of the seconds still in the window.
        self._seconds: deque[_Second] = deque()
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._broadcast_counts: Counter[str] = Counter()
        self.new_peers: list[str] = []
        """Unique names seen for the first time, whose credentials nobody has asked for yet."""
        self.seen = 0  # messages seen, the page's own included

    # ------------------------------------------------------------ peers

    def peer(self, peer_id: str) -> Peer:
        """The peer with this id, made (and queued for a credentials look-up) on first sight."""
        found = self.peers.get(peer_id)
        if found is None:
            found = self.peers[peer_id] = Peer(peer_id, kind=SELF if peer_id in self.own else PEER)
            self.new_peers.append(peer_id)
        return found

    def set_facts(self, peer_id: str, pid: int | None, uid: int | None, user: str | None,
                  process: str | None) -> None:
        found = self.peers.get(peer_id)
        if found is None:
            return  # it left before the driver answered
        found.pid, found.uid, found.user, found.process = pid, uid, user, process
        self._mark_bridge_home(found)

    def _mark_bridge_home(self, found: Peer) -> None:
        if self.bridged and found.kind == PEER and found.pid is not None and found.pid == self.bus_pid:
            found.kind = BRIDGE  # a peer inside busd's own process: the bridge's home

    def set_bridged(self) -> None:
        """The bus runs a bridge: a peer in the bus's own process is then the bridge's. (Not before: on
        dbus-broker the driver reports its launcher's pid, which the launcher's own connection has too.)"""
        self.bridged = True
        for found in self.peers.values():
            self._mark_bridge_home(found)

    def set_stand_in(self, peer_id: str, stands_for: str) -> None:
        """`peer_id` is busd's bridge stand-in for `stands_for`, a connection of the bus on the other side."""
        found = self.peers.get(peer_id)
        if found is not None and found.kind != SELF:
            found.kind, found.stands_for = BRIDGE, stands_for

    def set_own(self, peer_id: str) -> None:
        self.own.add(peer_id)
        self.peer(peer_id).kind = SELF

    def owner_changed(self, name: str, old: str, new: str) -> None:
        """NameOwnerChanged: `name` moved from `old` to `new` ("" for none)."""
        if name.startswith(":"):
            if not new:
                if name in self.peers:
                    self.peers[name].gone = True  # kept while its last traffic is drawn
                for key in [key for key in self._calls if key[0] == name]:
                    del self._calls[key]
            else:
                self.peer(name)
            return
        if old and old in self.peers:
            self.peers[old].names.discard(name)
        if new:
            self.peer(new).names.add(name)
            self.owners[name] = new
        else:
            self.owners.pop(name, None)

    def set_quota(self, peer_id: str, fraction: float | None, resource: str, queued: int | None) -> None:
        found = self.peers.get(peer_id)
        if found is not None:
            found.quota, found.quota_resource, found.queued = fraction, resource, queued

    def resolve(self, name: str | None) -> str:
        """The peer id a sender or destination names ("" for none or an unknown well-known name)."""
        if not name:
            return ""
        if name.startswith(":"):
            return name
        return self.owners.get(name, "")

    # ------------------------------------------------------------ messages

    def observe(self, h: Header, raw: bytes, timestamp: float) -> None:
        """One message the monitor saw (a link.Tap): recorded, unless it is the page's own traffic."""
        self.seen += 1
        sender, destination = self.resolve(h.sender), self.resolve(h.destination)
        if h.type == SIGNAL and h.sender == DRIVER_NAME and h.member == "NameOwnerChanged":
            self._name_owner_changed(h, raw)
        if sender in self.own or destination in self.own:
            return
        for peer_id in (sender, destination):
            if peer_id:
                self.peer(peer_id)
        record = Record(next(self._ids), timestamp, TYPE_NAMES.get(h.type, str(h.type)), sender, destination,
                        h.path or "", h.interface or "", h.member or "", h.error_name or "", h.serial,
                        h.reply_serial, h.signature or "", len(raw))
        if h.type == METHOD_CALL:
            if not h.no_reply_expected:
                if len(self._calls) >= KEEP_PENDING_CALLS:
                    del self._calls[next(iter(self._calls))]
                self._calls[(sender, h.serial)] = record
            self._count(timestamp, (sender, destination, "call"))
        elif h.type in (METHOD_RETURN, ERROR):
            call = self._calls.pop((destination, h.reply_serial or 0), None)
            if call is not None:
                record.reply_to, record.latency = call.id, max(0.0, timestamp - call.time)
                record.path, record.interface, record.member = call.path, call.interface, call.member
            if h.type == ERROR:
                record.text = _error_text(h, raw)
        elif destination:
            self._count(timestamp, (sender, destination, "signal"))
        else:
            self._second(timestamp).broadcasts[sender] += 1
            self._broadcast_counts[sender] += 1
        self._keep_message(record, raw)
        self._unsent.append(record)

    def _keep_message(self, record: Record, raw: bytes) -> None:
        self._messages.append((record, raw))
        self._kept_bytes += len(raw)
        while len(self._messages) > self._keep or (self._kept_bytes > self._keep_bytes and len(self._messages) > 1):
            _, dropped = self._messages.popleft()
            self._kept_bytes -= len(dropped)

    def _name_owner_changed(self, h: Header, raw: bytes) -> None:
        try:
            name, old, new = read_body(raw, h)
        except (ProtocolError, ValueError, TypeError):
            return
        self.owner_changed(name, old, new)

    def _count(self, timestamp: float, key: tuple[str, str, str]) -> None:
        if key[0] and key[1]:
            self._second(timestamp).edges[key] += 1
            self._counts[key] += 1

    def _second(self, timestamp: float) -> _Second:
        second = int(timestamp)
        if not self._seconds or self._seconds[-1].second < second:
            self._seconds.append(_Second(second))
        return self._seconds[-1]  # (a message stamped a little earlier than the last counts with it)

    def _forget_before(self, since: float) -> None:
        while self._seconds and self._seconds[0].second < since:
            gone = self._seconds.popleft()
            self._counts -= gone.edges  # Counter subtraction keeps only positive counts
            self._broadcast_counts -= gone.broadcasts

    # ------------------------------------------------------------ what the page asks for

    def take_new(self) -> list[Record]:
        """The messages seen since the last call."""
        new, self._unsent = self._unsent, []
        return new

    def map(self, now: float | None = None) -> dict[str, Any]:
        """Peers and the edges of the last `window` seconds, each with its count and rate per second."""
        now = time.time() if now is None else now
        self._forget_before(now - self.window)
        active = {peer_id for key in self._counts for peer_id in key[:2]} | set(self._broadcast_counts)
        for peer_id in [p.id for p in self.peers.values() if p.gone and p.id not in active]:
            del self.peers[peer_id]
        edges = [{"from": source, "to": target, "kind": kind, "count": count, "rate": count / self.window}
                 for (source, target, kind), count in sorted(self._counts.items())
                 if source in self.peers and target in self.peers]
        peers = []
        for peer in self.peers.values():
            if peer.kind == SELF:
                continue
            entry = peer.to_json()
            entry["broadcasts"] = self._broadcast_counts.get(peer.id, 0) / self.window
            peers.append(entry)
        return {"peers": peers, "edges": edges, "window": self.window}

    def names_of(self) -> dict[str, set[str]]:
        return {peer.id: peer.names for peer in self.peers.values()}

    def recent(self, limit: int) -> list[Record]:
        return [record for record, _ in list(self._messages)[-limit:]]

    def pcapng(self, words: list[str], application: str, system: str, address: str) -> bytes:
        """The kept messages that match the filter `words`, as a pcapng capture (as busdctl capture writes)."""
        names_of = self.names_of()
        parts = [section_header(application, system), interface_description(SNAPLEN, address)]
        parts += [enhanced_packet(raw, record.time, SNAPLEN) for record, raw in self._messages
                  if matches(record, words, names_of)]
        return b"".join(parts)


@dataclass
class _Second:
    """The traffic of one second: edge key -> messages, and sender -> broadcast signals."""

    second: int
    edges: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    broadcasts: Counter[str] = field(default_factory=Counter)


def _error_text(h: Header, raw: bytes) -> str:
    if not (h.signature or "").startswith("s"):
        return ""
    try:
        body = read_body(raw, h)
    except (ProtocolError, ValueError, TypeError):
        return ""
    return body[0] if body and isinstance(body[0], str) else ""
