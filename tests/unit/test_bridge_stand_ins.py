"""Unit tests of the bridge's stand-ins (mirrors) on an in-memory bus: what a local peer may send through one to
its upstream twin (issue 13 #9), and the credentials a stand-in shows (none: busd/bridge/mirror.py says why).

The bus is test_router_memory's (a Bus and MemoryLinks); the upstream connection is a FakeUpstream that records
what the bridge would send. tests/live/test_hostile_bridge.py checks the same end to end, as uid nobody.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from busd.bridge import BridgeSettings, NamePattern
from busd.bridge.bridge import Bridge
from busd.bus.router import Bus
from busd.wire.message import (
    ERROR, METHOD_CALL, METHOD_RETURN, NO_REPLY_EXPECTED, SIGNAL, Header, build_message, parse_header,
)
from test_router_memory import MemoryLink, bus  # noqa: F401 - bus is the fixture

SERVICE_UNKNOWN = "org.freedesktop.DBus.Error.ServiceUnknown"


class FakeUpstream:
    """Stands for the bridge's UpstreamLink: `sent` holds the headers of what the bridge sent upstream."""

    unique_name = ":9.1"
    closed = False
    can_pass_fds = False
    out_bytes = out_fds = 0

    def __init__(self) -> None:
        self.serial = 0
        self.sent: list[Header] = []

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def send(self, head: bytes, body: Any = b"", fds: list[int] | None = None) -> None:
        self.sent.append(parse_header(bytes(head) + bytes(body), validate_body=False))

    def hold_input(self) -> None:
        pass

    def release_input(self) -> None:
        pass

    def close(self, reason: str, notify: bool = True) -> None:
        self.closed = True

    def call(self, member: str, signature: str = "", body: list | tuple = (), handler: Any = None, **_: Any) -> int:
        return self.next_serial()  # the driver calls the bridge makes (AddMatch, NameHasOwner): not under test


@pytest.fixture
def bridged(bus: Bus):  # noqa: F811 - the fixture imported above
    bridge = Bridge(bus, BridgeSettings("unix:path=/nonexistent", imports=(NamePattern("org.up.*"),),
                                        exports=(NamePattern("org.down.*"),)))
    # Bridge.start() without its connecting task: the bridge watches the bus and has its own peer.
    bus.add_observer(bridge)
    bus.attach_virtual_peer(bridge.home)
    upstream = bridge.link = FakeUpstream()
    return bridge, upstream


def settle(bus: Bus) -> None:
    """Run what the bridge deferred to the next loop turn (its refusals), then flush."""
    bus.loop.run_until_complete(_turn())


async def _turn() -> None:
    pass


def caller_stand_in(bridge: Bridge, service: MemoryLink, upstream_name: str = ":9.7") -> str:
    """An upstream peer calls org.down.Svc, owned here by `service`: its stand-in's local unique name."""
    service.call_driver("RequestName", "su", ["org.down.Svc", 0])
    assert bridge.export_owners == {"org.down.Svc": service.peer}
    mirror = bridge._mirror(upstream_name)
    service.take()
    return mirror.peer_name


def test_a_stranger_cannot_reach_an_upstream_caller_through_its_stand_in(bridged, bus: Bus) -> None:  # noqa: F811
    bridge, upstream = bridged
    service, stranger = MemoryLink(bus, "service"), MemoryLink(bus, "stranger")
    service.hello(), stranger.hello()
    stand_in = caller_stand_in(bridge, service)
    stranger.send(SIGNAL, path="/", interface="org.x.Y", member="Forged", destination=stand_in)
    stranger.send(METHOD_CALL, path="/", interface="org.x.Y", member="Silent", destination=stand_in,
                  flags=NO_REPLY_EXPECTED)
    serial = stranger.send(METHOD_CALL, path="/", interface="org.x.Y", member="Hijack", destination=stand_in)
    settle(bus)
    assert upstream.sent == []
    [(error, body)] = stranger.take()
    assert (error.type, error.error_name, error.reply_serial, error.sender) == (ERROR, SERVICE_UNKNOWN, serial,
                                                                              stand_in)
    assert bus.replies.pending == {}
    assert bridge.refused == {stranger.unique_name}
    stranger.drop("gone")  # forgotten with the peer: the set does not grow with departed peers
    assert bridge.refused == set()


def test_the_exported_service_reaches_its_caller_and_answers_cross(bridged, bus: Bus) -> None:  # noqa: F811
    bridge, upstream = bridged
    service = MemoryLink(bus, "service")
    service.hello()
    stand_in = caller_stand_in(bridge, service)
    mirror = bridge.by_local_name[stand_in]
    service.send(SIGNAL, path="/", interface="org.x.Y", member="Response", destination=stand_in)
    service.send(METHOD_CALL, path="/", interface="org.x.Y", member="Callback", destination=stand_in)
    # A call from upstream, injected from the stand-in as the bridge does, and the service's answer to it.
    mirror.calls[41] = 5  # local serial 41 stands for the upstream caller's serial 5
    injected = build_message(METHOD_CALL, 41, path="/", interface="org.x.Y", member="Ask", destination="org.down.Svc")
    bus.receive(mirror.peer, injected, parse_header(injected), None)
    service.take()
    service.send(METHOD_RETURN, reply_serial=41, destination=stand_in)
    settle(bus)
    assert [(h.type, h.member, h.destination, h.reply_serial) for h in upstream.sent] == [
        (SIGNAL, "Response", ":9.7", None), (METHOD_CALL, "Callback", ":9.7", None),
        (METHOD_RETURN, None, ":9.7", 5)]


def test_anyone_reaches_an_upstream_owner_of_an_imported_name(bridged, bus: Bus) -> None:  # noqa: F811
    bridge, upstream = bridged
    stranger = MemoryLink(bus, "stranger")
    stranger.hello()
    bridge._set_import_owner("org.up.Svc", ":9.3")
    owner = bridge.mirrors[":9.3"].peer_name
    stranger.take()
    stranger.send(METHOD_CALL, path="/", interface="org.x.Y", member="ByName", destination="org.up.Svc")
    stranger.send(METHOD_CALL, path="/", interface="org.x.Y", member="ByOwner", destination=owner)
    settle(bus)
    assert [(h.member, h.destination) for h in upstream.sent] == [("ByName", "org.up.Svc"), ("ByOwner", ":9.3")]
    assert stranger.take() == []


def test_a_stand_in_has_no_credentials_and_the_bridge_has_the_daemons(bridged, bus: Bus) -> None:  # noqa: F811
    bridge, _ = bridged
    mirror = bridge._mirror(":9.7")
    creds = mirror.credentials
    assert (creds.uid, creds.gid, creds.pid, creds.groups) == (None, None, None, ())
    assert bridge.home.credentials.uid == os.getuid() and bridge.home.credentials.pid == os.getpid()
    asker = MemoryLink(bus, "asker")
    asker.hello()
    asker.call_driver("GetConnectionUnixUser", "s", [mirror.peer_name])
    asker.call_driver("GetConnectionCredentials", "s", [mirror.peer_name])
    (failed, _), (credentials, body) = asker.take()
    assert failed.error_name == "org.freedesktop.DBus.Error.Failed"
    assert credentials.type == METHOD_RETURN and body == [{}]
