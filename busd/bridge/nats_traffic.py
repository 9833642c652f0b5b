"""A federation's traffic: calls, replies and signals between the local bus's stand-ins and the other nodes.

The theory is in busd/bridge/nats_federation.py. Calls are NATS requests to the
callee node's SUBJECT.node.<node>.call carrying the whole D-Bus message (its
header re-addressed, without a sender) and the caller's node and unique name in
a short prefix of the payload (frame(): NATS headers cost a parse per message
in nats-py); the reply travels back as the NATS reply, to the caller node's
SUBJECT.node.<node>.reply.<token> (one subscription takes every reply; the token
says whose). Signals go to SUBJECT.node.<node>.signal, only to the nodes whose
heartbeat asks for them.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from ..bus import errors
from ..bus.ports import Credentials, SharedFds
from ..wire.errors import ProtocolError
from ..wire.message import ERROR, METHOD_CALL, METHOD_RETURN, SIGNAL, Header, build_message, parse_header, read_body
from ..wire.wellknown import DRIVER_NAME
from .link import close_fds
from .mirror import Home, Mirror, MirrorHost, VirtualConnection, inject
from .nats_link import Msg, NatsLink
from .nats_roster import Claim, Owner, Roster
from .readdress import readdressed

if TYPE_CHECKING:
    from ..bus.peer import Peer
    from ..bus.router import Bus

log = logging.getLogger("busd.bridge")



def frame(node: str, sender: str, message: bytes) -> bytes:
    """A call or signal as it crosses: the node it comes from, its sender's unique name there, the message."""
    return b"".join((node.encode(), b"\0", sender.encode(), b"\0", message))


def unframe(data: bytes) -> tuple[tuple[str, str], bytes] | None:
    """((node, sender), message) of a frame(), or None for anything else."""
    first = data.find(b"\0")
    second = data.find(b"\0", first + 1) if first > 0 else -1
    if second < 0 or data[first + 1:first + 2] != b":":
        return None
    try:
        origin = (data[:first].decode(), data[first + 1:second].decode())
    except UnicodeDecodeError:
        return None
    return origin, data[second + 1:]


class StandIn(Mirror):
    """The local stand-in for a connection on another node: it owns imported names, or calls exported ones."""

    def __init__(self, host: MirrorHost, node: str, unique_name: str, uid: int):
        super().__init__(host, unique_name)
        self.node = node
        self.label = f"node {node} {unique_name}"
        self.credentials = Credentials(uid=uid, origin=node)  # --remote-uid: never busd's own uid
        self.caller = False  # it has called this node (it stays until its peer leaves its node)


class FederationNode(Protocol):
    """What the traffic needs of the node it serves (busd.bridge.nats_federation.Federation is one)."""

    @property
    def bus(self) -> "Bus": ...

    @property
    def node(self) -> str:
        """This node's name."""

    @property
    def subject(self) -> str:
        """The federation's subject prefix."""

    @property
    def connected(self) -> bool: ...

    @property
    def nats(self) -> NatsLink: ...

    @property
    def roster(self) -> Roster: ...

    @property
    def claims(self) -> dict[str, Claim]: ...

    @property
    def export_owners(self) -> dict[str, "Peer"]: ...

    @property
    def stand_ins(self) -> dict[Owner, StandIn]: ...

    @property
    def answers(self) -> dict[tuple[StandIn, int], str]:
        """(stand-in, serial of a call injected from it) -> the NATS subject its reply goes to."""

    @property
    def crossed(self) -> set[str]:
        """Local peers other nodes have stand-ins for (callers), told to the others when they leave."""

    def stand_in_for(self, node: str, unique_name: str) -> StandIn: ...

    def spawn(self, coroutine: Coroutine) -> None: ...

    def send(self, subject: str, data: bytes, reply: str = "") -> bool:
        """Publish now (no task)."""

    def beat(self) -> None:
        """Send this node's heartbeat now."""


class Traffic:
    """The messages crossing between this node's bus and the other nodes."""

    def __init__(self, fed: FederationNode):
        self.fed = fed
        # Calls sent, by the token ending their reply subject: (stand-in, local caller, the caller's serial).
        # One subscription (SUBJECT.node.<node>.reply.*) takes every answer: no future or task per call.
        self.pending: dict[int, tuple[StandIn, str, int]] = {}
        self.token = 0


    def from_mirror(self, stand_in: Mirror, head: bytes, body: Any, fds: list[int] | SharedFds | None) -> None:
        """A message for a remote peer: a call or signal to its node, or the answer to a call it made."""
        close_fds(fds)  # none arrive: a stand-in cannot take fds (the bus answered NotSupported)
        assert isinstance(stand_in, StandIn)
        message = head + body if body else head
        h = parse_header(message, validate_body=False)
        if h.type == SIGNAL and h.sender == DRIVER_NAME:
            return  # the local driver's NameAcquired and NameLost are for the stand-in alone
        if h.type in (METHOD_CALL, SIGNAL) and not stand_in.imported and not self._serves_remote(h.sender):
            self.answer_error(stand_in, h, errors.SERVICE_UNKNOWN,
                               f"{stand_in.peer_name} is {stand_in.label}, which owns no imported name")
            return
        payload = memoryview(message)[h.body_start:] if h.body_len else b""
        if h.type == METHOD_CALL or h.type == SIGNAL:
            destination = h.destination
            if destination is None or destination[0] == ":":
                destination = stand_in.upstream_name
            data = frame(self.fed.node, h.sender, readdressed(h, 1, destination, None)[0] + payload)
            self.fed.crossed.add(h.sender)
            where = f"{self.fed.subject}.node.{stand_in.node}"
            if h.type == SIGNAL:
                self.fed.send(f"{where}.signal", data)
            elif h.no_reply_expected:
                self.fed.send(f"{where}.call", data)
            elif not self.fed.connected:
                self.answer_error(stand_in, h, errors.NO_REPLY,
                                   f"busd node {self.fed.node} has no NATS connection now; try again")
            else:
                self._request(stand_in, h, f"{where}.call", data)
            return
        reply_to = self.fed.answers.pop((stand_in, h.reply_serial), None)
        if reply_to is not None:
            self.fed.send(reply_to, readdressed(h, 1, None, 1)[0] + payload)

    def _serves_remote(self, local_name: str | None) -> bool:
        """Is `local_name` the local owner of an exported name (whose remote callers it may call back)?"""
        peer = self.fed.bus.peers.get(local_name) if local_name else None
        return peer is not None and not peer.names.isdisjoint(self.fed.export_owners)

    def _request(self, stand_in: StandIn, h: Header, subject: str, data: bytes) -> None:
        """One call across; its answer comes to on_reply(), by the token ending the reply subject."""
        nc = self.fed.nats.nc
        if nc is not None and len(data) > nc.max_payload:
            self.answer_error(stand_in, h, errors.LIMITS_EXCEEDED,
                              f"the {len(data)}-byte call is over the NATS server's max_payload ({nc.max_payload})")
            return
        self.token = token = self.token + 1
        self.pending[token] = (stand_in, h.sender, h.serial)
        if not self.fed.send(subject, data, f"{self.fed.subject}.node.{self.fed.node}.reply.{token}"):
            del self.pending[token]
            self.answer_error(stand_in, h, errors.NO_REPLY, "busd could not send the call over NATS (its log says why)")

    async def on_reply(self, msg: Msg) -> None:
        """The answer to a call across (or NATS's word that nobody took it): to the caller, from the stand-in."""
        try:
            token = int(msg.subject.rpartition(".")[2])
        except ValueError:
            return
        entry = self.pending.pop(token, None)
        if entry is None or entry[0].closed:
            return
        stand_in, caller, serial = entry
        if msg.headers and msg.headers.get("Status") == "503":  # no responders: the node is gone
            self._error_to(stand_in, caller, serial, errors.SERVICE_UNKNOWN,
                           f"busd node {stand_in.node} does not answer: it left the federation")
            return
        try:
            reply = parse_header(msg.data)
        except ProtocolError as exc:
            self._error_to(stand_in, caller, serial, errors.FAILED, f"node {stand_in.node} sent a broken reply: {exc}")
            return
        if reply.type in (METHOD_RETURN, ERROR):
            inject(self.fed.bus, stand_in, msg.data, reply, None, caller, serial)

    def forget(self, stand_in: StandIn | None = None, reason: str = "") -> None:
        """Calls waiting on `stand_in` (None: on every node, NATS is gone) will not be answered from here.

        With a reason their callers get NoReply now; without, the stand-in left and the bus answers them."""
        for token, (waiting_on, caller, serial) in list(self.pending.items()):
            if stand_in is None or waiting_on is stand_in:
                del self.pending[token]
                if reason:
                    self._error_to(waiting_on, caller, serial, errors.NO_REPLY, reason)

    def answer_error(self, conn: VirtualConnection, h: Header, name: str, text: str) -> None:
        """An error to a local caller from `conn`, once the call is routed (monitors see the call first)."""
        if h.type == METHOD_CALL and not h.no_reply_expected:
            self._error_to(conn, h.sender, h.serial, name, text)

    def _error_to(self, conn: VirtualConnection, caller: str, serial: int, name: str, text: str) -> None:
        if conn.closed:
            return
        error = build_message(ERROR, conn.next_serial(), error_name=name, reply_serial=serial,
                              destination=caller, signature="s", body=[text])
        self.fed.bus.loop.call_soon(lambda: conn.closed or self.fed.bus.receive(conn.peer, error, parse_header(error), None))

    def from_home(self, home: Home, head: bytes, body: Any, fds: list[int] | SharedFds | None) -> None:
        """A signal from the local owner of an exported name: to the nodes with a subscriber for it."""
        close_fds(fds)
        message = head + body if body else head
        h = parse_header(message, validate_body=False)
        if h.type == METHOD_CALL:
            self.answer_error(home, h, errors.UNKNOWN_METHOD, f"{home.peer_name} is busd's federation; "
                                                                "it has no methods")
            return
        sender = self.fed.bus.peers.get(h.sender) if h.sender else None
        if h.type != SIGNAL or h.destination is not None or sender is None or not self.fed.connected:
            return
        names = [name for name in sender.names if name in self.fed.claims]
        if not names:
            return
        nodes = self.fed.roster.interested(h, names, lambda: read_body(message, h))
        if not nodes:
            return
        data = frame(self.fed.node, h.sender, readdressed(h, 1, None, None)[0]
                     + (memoryview(message)[h.body_start:] if h.body_len else b""))
        for node in nodes:
            self.fed.send(f"{self.fed.subject}.node.{node}.signal", data)

    # ------------------------------------------------------------ messages from other nodes

    @staticmethod
    def _received(msg: Msg) -> tuple[Owner, bytes, Header] | None:
        """A frame()'s origin, message and parsed header; None for anything else (logged)."""
        framed = unframe(msg.data)
        if framed is None:
            return None
        origin, data = framed
        try:
            return origin, data, parse_header(data)
        except ProtocolError as exc:
            log.warning("federation: a broken message from node %s on %s: %s", origin[0], msg.subject, exc)
            return None

    async def on_call(self, msg: Msg) -> None:
        received = self._received(msg)
        if received is None:
            return
        origin, data, h = received
        if h.type != METHOD_CALL or h.destination is None:
            return
        if origin[0] not in self.fed.roster.nodes:
            self.fed.beat()  # a node we have not heard yet: it learns about us sooner
        destination = h.destination
        if destination[0] == ":":
            known = destination in self.fed.crossed  # a local caller's callback from the node it called
        else:
            known = destination in self.fed.claims and destination in self.fed.export_owners
        if not known:
            if msg.reply and not h.no_reply_expected:
                text = f"The name {destination} is not exported by busd node {self.fed.node}"
                error = build_message(ERROR, 1, error_name=errors.SERVICE_UNKNOWN, reply_serial=h.serial,
                                      signature="s", body=[text])
                self.fed.send(msg.reply, error)
            return
        stand_in = self.fed.stand_in_for(*origin)
        stand_in.caller = True
        serial = stand_in.next_serial()
        if msg.reply and not h.no_reply_expected:
            self.fed.answers[(stand_in, serial)] = msg.reply
        inject(self.fed.bus, stand_in, data, h, None, destination, None, serial)

    async def on_signal(self, msg: Msg) -> None:
        received = self._received(msg)
        if received is None:
            return
        origin, data, h = received
        stand_in = self.fed.stand_ins.get(origin)
        if h.type != SIGNAL or stand_in is None:
            return
        destination = h.destination
        if destination is not None:  # to a local caller, from the service it called
            if destination not in self.fed.crossed:
                return
        elif not stand_in.imported:
            return
        inject(self.fed.bus, stand_in, data, h, None, destination, None)


__all__ = ["FederationNode", "StandIn", "Traffic", "frame", "unframe"]
