"""busdctl web without a bus: the picture built from messages (edges, rates, call/reply pairing, owners,
the page's own traffic left out, the filter, the pcapng export), --listen parsing, and the token guard
of the HTTP server (aiohttp's in-process test server: every request without the token gets 403)."""

from __future__ import annotations

import asyncio
import struct
import sys
from types import SimpleNamespace

import pytest

from busd.wire.message import ERROR, METHOD_CALL, METHOD_RETURN, NO_REPLY_EXPECTED, SIGNAL, build_message, parse_header
from busd.wire.wellknown import DRIVER_NAME, DRIVER_PATH, DRIVER_INTERFACE
from busdctl.errors import CommandError, UsageError
from busdctl.web import is_loopback, parse_listen
from busdctl.web_model import BRIDGE, DRIVER, SELF, BusPicture, matches

CLIENT, SERVICE, PAGE = ":1.1", ":1.2", ":1.9"


def seen(picture: BusPicture, at: float, mtype: int, serial: int, **fields) -> None:
    raw = build_message(mtype, serial, **fields)
    picture.observe(parse_header(raw), raw, at)


def call(picture: BusPicture, at: float, serial: int, sender: str = CLIENT, destination: str = "org.example.Demo",
         member: str = "Add", flags: int = 0) -> None:
    seen(picture, at, METHOD_CALL, serial, sender=sender, destination=destination, path="/org/example/Demo",
         interface="org.example.Demo", member=member, signature="ii", body=[1, 2], flags=flags)


def owned(picture: BusPicture, name: str, owner: str) -> None:
    seen(picture, 0.0, SIGNAL, 1, sender=DRIVER_NAME, path=DRIVER_PATH, interface=DRIVER_INTERFACE,
         member="NameOwnerChanged", signature="sss", body=[name, "", owner])


def test_calls_to_a_well_known_name_make_an_edge_to_its_owner_with_a_rate():
    picture = BusPicture(window=10.0)
    owned(picture, SERVICE, SERVICE)
    owned(picture, "org.example.Demo", SERVICE)
    for serial in range(1, 6):
        call(picture, 100.0 + serial, serial)
    edges = picture.map(now=106.0)["edges"]
    assert edges == [{"from": CLIENT, "to": SERVICE, "kind": "call", "count": 5, "rate": 0.5}]
    peers = {peer["id"]: peer for peer in picture.map(now=106.0)["peers"]}
    assert peers[SERVICE]["names"] == ["org.example.Demo"] and peers[DRIVER_NAME]["kind"] == DRIVER
    assert picture.map(now=113.5)["edges"][0]["count"] == 2  # older than the window: forgotten
    assert picture.map(now=200.0)["edges"] == []


def test_a_reply_is_paired_with_its_call_and_takes_its_member():
    picture = BusPicture()
    owned(picture, "org.example.Demo", SERVICE)
    call(picture, 10.0, 7)
    seen(picture, 10.25, METHOD_RETURN, 3, sender=SERVICE, destination=CLIENT, reply_serial=7, signature="i", body=[3])
    call(picture, 11.0, 8, member="Fail")
    seen(picture, 11.5, ERROR, 4, sender=SERVICE, destination=CLIENT, reply_serial=8,
         error_name="org.example.Error.Broken", signature="s", body=["broken on purpose"])
    first, reply, second, error = picture.take_new()[-4:]
    assert (reply.reply_to, reply.latency, reply.member, reply.type) == (first.id, 0.25, "Add", "return")
    assert (error.reply_to, error.member, error.text) == (second.id, "Fail", "broken on purpose")
    assert picture.take_new() == []
    # Only the calls make edges: the replies belong to them.
    assert [(e["from"], e["to"]) for e in picture.map(now=12.0)["edges"]] == [(CLIENT, SERVICE)]


def test_a_call_expecting_no_reply_is_not_kept_waiting():
    picture = BusPicture()
    call(picture, 1.0, 1, flags=NO_REPLY_EXPECTED)
    seen(picture, 1.5, METHOD_RETURN, 2, sender=SERVICE, destination=CLIENT, reply_serial=1)
    assert picture.take_new()[-1].reply_to is None


def test_broadcasts_count_on_the_sender_and_unicast_signals_make_edges():
    picture = BusPicture(window=2.0)
    for serial in range(4):
        seen(picture, 5.0, SIGNAL, serial + 1, sender=SERVICE, path="/a", interface="org.example.Demo", member="Tick")
    seen(picture, 5.0, SIGNAL, 9, sender=SERVICE, destination=CLIENT, path="/a", interface="org.example.Demo",
         member="Direct")
    drawn = picture.map(now=5.5)
    assert {p["id"]: p["broadcasts"] for p in drawn["peers"]}[SERVICE] == 2.0
    assert drawn["edges"] == [{"from": SERVICE, "to": CLIENT, "kind": "signal", "count": 1, "rate": 0.5}]


def test_the_pages_own_traffic_is_left_out_and_owners_follow_the_driver():
    picture = BusPicture()
    picture.set_own(PAGE)
    owned(picture, "org.example.Demo", SERVICE)
    call(picture, 1.0, 1, sender=PAGE)
    assert picture.take_new()[-1].member == "NameOwnerChanged"  # the driver's signal is traffic; the call is not
    assert all(p["kind"] != SELF for p in picture.map(now=2.0)["peers"])
    seen(picture, 2.0, SIGNAL, 2, sender=DRIVER_NAME, path=DRIVER_PATH, interface=DRIVER_INTERFACE,
         member="NameOwnerChanged", signature="sss", body=["org.example.Demo", SERVICE, CLIENT])
    assert picture.resolve("org.example.Demo") == CLIENT and picture.peers[CLIENT].names == {"org.example.Demo"}
    seen(picture, 3.0, SIGNAL, 3, sender=DRIVER_NAME, path=DRIVER_PATH, interface=DRIVER_INTERFACE,
         member="NameOwnerChanged", signature="sss", body=[SERVICE, SERVICE, ""])
    assert picture.peers[SERVICE].gone
    picture.map(now=3.0)  # it had no traffic: gone from the map at once
    assert SERVICE not in picture.peers


def test_a_peer_living_in_the_bus_process_is_a_bridge_stand_in():
    picture = BusPicture()
    picture.bus_pid = 42
    picture.peer(":1.5")
    picture.peer(":1.6")
    assert picture.new_peers == [":1.5", ":1.6"]
    picture.set_facts(":1.5", 42, 0, "root", "busd")
    picture.set_facts(":1.6", 43, 0, "root", "python3")
    assert picture.peers[":1.5"].kind == "peer"  # dbus-broker's launcher has its driver's pid too
    picture.set_bridged()  # the bus has dev.busd.Bridge1
    assert (picture.peers[":1.5"].kind, picture.peers[":1.6"].kind) == (BRIDGE, "peer")
    picture.peer(":1.7")
    picture.set_stand_in(":1.7", "upstream:1.40")
    assert (picture.peers[":1.7"].kind, picture.peers[":1.7"].stands_for) == (BRIDGE, "upstream:1.40")


def test_a_peer_that_left_stays_while_its_traffic_is_drawn():
    picture = BusPicture(window=10.0)
    owned(picture, "org.example.Demo", SERVICE)
    call(picture, 100.0, 1, sender=":1.50")  # a short-lived client, as busdctl call is
    seen(picture, 100.5, SIGNAL, 2, sender=DRIVER_NAME, path=DRIVER_PATH, interface=DRIVER_INTERFACE,
         member="NameOwnerChanged", signature="sss", body=[":1.50", ":1.50", ""])
    drawn = picture.map(now=101.0)
    assert {p["id"]: p["gone"] for p in drawn["peers"]}[":1.50"] is True
    assert [(e["from"], e["to"]) for e in drawn["edges"]] == [(":1.50", SERVICE)]
    assert ":1.50" not in {p["id"] for p in picture.map(now=111.0)["peers"]}


def test_the_filter_and_the_capture_keep_the_same_messages():
    picture = BusPicture()
    owned(picture, "org.example.Demo", SERVICE)
    call(picture, 1.0, 1)
    call(picture, 2.0, 2, member="Echo")
    records = picture.recent(10)
    names_of = picture.names_of()
    assert [r.member for r in records if matches(r, ["demo", "ADD"], names_of)] == ["Add"]
    assert [r.member for r in records if matches(r, [], names_of)] == ["NameOwnerChanged", "Add", "Echo"]
    capture = picture.pcapng(["Echo"], "busdctl test", "Linux", "unix:path=/x")
    blocks = []
    offset = 0
    while offset < len(capture):
        kind, length = struct.unpack_from("<II", capture, offset)
        blocks.append((kind, capture[offset:offset + length]))
        offset += length
    assert [kind for kind, _ in blocks] == [0x0A0D0D0A, 1, 6]
    assert b"Echo" in blocks[2][1] and b"Add" not in blocks[2][1]


def test_the_kept_messages_are_bounded_in_number_and_in_bytes():
    picture = BusPicture(keep=3, keep_bytes=10_000)
    for serial in range(1, 6):
        call(picture, float(serial), serial)
    assert [r.serial for r in picture.recent(10)] == [3, 4, 5]
    seen(picture, 6.0, SIGNAL, 6, sender=SERVICE, path="/a", interface="org.example.Big", member="Blob",
         signature="ay", body=[b"x" * 20_000])
    assert [r.member for r in picture.recent(10)] == ["Blob"]  # the newest stays, however big


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("8080", ("127.0.0.1", 8080)), (":0", ("127.0.0.1", 0)),
    ("[::1]:9000", ("::1", 9000)), ("0.0.0.0:80", ("0.0.0.0", 80)),
])
def test_listen_addresses(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:http", "127.0.0.1:70000", "localhost:"])
def test_bad_listen_addresses_say_what_to_give(text):
    with pytest.raises(UsageError, match="HOST:PORT"):
        parse_listen(text)


def test_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_a_connection_is_as_full_as_its_fullest_queue_or_its_users_quota():
    from busdctl.web_numbers import fill

    mib = 1024 * 1024
    assert fill({"queued_in_bytes": None, "queued_out_bytes": None, "quota_used": None}) == (None, "")
    assert fill({"queued_in_bytes": 0, "queued_out_bytes": 127 * mib // 2, "quota_used": 0.02,
                 "quota_line": "Connections"}) == (0.5, "outgoing queue")
    assert fill({"queued_in_bytes": 0, "queued_out_bytes": 0, "quota_used": 0.9,
                 "quota_line": "MatchRules"}) == (0.9, "its user's MatchRules")


def test_without_aiohttp_web_says_what_to_install(monkeypatch):
    from busdctl.web import web

    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "busdctl.web_server", raising=False)
    ctx = SimpleNamespace(options=SimpleNamespace(listen=None))
    with pytest.raises(CommandError, match=r"pip install 'busd\[web\]'"):
        asyncio.run(web(ctx, []))  # type: ignore[arg-type]


def test_every_request_without_the_token_is_refused():
    pytest.importorskip("aiohttp")
    from aiohttp.test_utils import TestClient, TestServer

    from busdctl.web_server import WebSession, make_app

    session = WebSession(bus=None, picture=BusPicture())  # type: ignore[arg-type]  # no request here reaches the bus

    async def check() -> None:
        async with TestClient(TestServer(make_app(session))) as client:
            for path in ("/", "/static/app.js", "/api/services", "/capture.pcapng", "/events"):
                assert (await client.get(path)).status == 403, path
                assert (await client.get(path, params={"token": session.token[:-1]})).status == 403, path
            page = await client.get("/", params={"token": session.token})
            assert page.status == 200 and f'data-token="{session.token}"' in await page.text()
            assert "default-src 'self'" in page.headers["Content-Security-Policy"]
            asset = await client.get("/static/app.js", headers={"X-Busd-Token": session.token})
            assert asset.status == 200 and asset.content_type == "text/javascript"
            assert (await client.get("/static/../web.py", params={"token": session.token})).status == 404

    asyncio.run(check())
