"""org.freedesktop.DBus.Debug.Stats on busd against dbus-daemon 1.14: the same keys, types and values.

The same scenario runs on both daemons: one peer with two match rules owns a
name and queues for another, a second peer owns that one. GetStats,
GetConnectionStats and GetAllMatchRules must give every key dbus-daemon gives
(its ListMemPool* internals aside) with the same signature, and the same value
wherever the scenario fixes it; busd's own keys all start with "dev.busd.".
"""

from __future__ import annotations

import asyncio
import shutil

import pytest
from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus

from buses import start_bus
from busd.bus.stats import DAEMON_CONNECTION_KEYS, DAEMON_STATS_KEYS, PREFIX

pytestmark = [pytest.mark.live,
              pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="dbus-daemon is the reference")]

STATS = "org.freedesktop.DBus.Debug.Stats"
TIMEOUT = 30


async def _call(bus: MessageBus, member: str, signature: str = "", body: list | None = None,
                interface: str = "org.freedesktop.DBus") -> list:
    reply = await asyncio.wait_for(bus.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface=interface, member=member,
        signature=signature, body=body or [])), TIMEOUT)
    assert reply.message_type == MessageType.METHOD_RETURN, (member, reply.error_name, reply.body)
    return reply.body


async def _scenario(address: str) -> dict:
    a = await MessageBus(bus_address=address).connect()
    b = await MessageBus(bus_address=address).connect()
    try:
        await _call(a, "AddMatch", "s", ["type='signal',interface='org.example.A'"])
        await _call(a, "AddMatch", "s", ["type='signal',member='Tick'"])
        await _call(a, "AddMatch", "s", ["type='signal',member='Tock'"])
        await _call(a, "RemoveMatch", "s", ["type='signal',member='Tock'"])  # the peaks remember it
        await _call(b, "RequestName", "su", ["org.example.Second", 4])
        await _call(a, "RequestName", "su", ["org.example.First", 4])
        assert (await _call(a, "RequestName", "su", ["org.example.Second", 0]))[0] == 2  # queued
        [bus_stats] = await _call(a, "GetStats", interface=STATS)
        [conn_stats] = await _call(a, "GetConnectionStats", "s", [a.unique_name], interface=STATS)
        [rules] = await _call(a, "GetAllMatchRules", interface=STATS)
        return {"bus": bus_stats, "conn": conn_stats, "rules": rules, "a": a.unique_name, "b": b.unique_name}
    finally:
        a.disconnect()
        b.disconnect()


def _run(kind: str) -> dict:
    bus = start_bus(kind)
    try:
        return asyncio.run(_scenario(bus.address))
    finally:
        bus.stop()


@pytest.fixture(scope="module")
def answers() -> dict[str, dict]:
    return {kind: _run(kind) for kind in ("dbus-daemon", "busd")}


def _signatures(stats: dict) -> dict[str, str]:
    return {key: variant.signature for key, variant in stats.items()}


def test_get_stats_has_dbus_daemons_keys_and_types(answers: dict[str, dict]) -> None:
    reference = {k: t for k, t in _signatures(answers["dbus-daemon"]["bus"]).items()
                 if not k.startswith("ListMemPool")}
    ours = _signatures(answers["busd"]["bus"])
    assert reference == DAEMON_STATS_KEYS  # the table busd answers from is dbus-daemon 1.14's
    assert {k: t for k, t in ours.items() if not k.startswith(PREFIX)} == reference
    assert all(k in reference or k.startswith(PREFIX) for k in ours)


def test_get_connection_stats_has_dbus_daemons_keys_and_types(answers: dict[str, dict]) -> None:
    reference = _signatures(answers["dbus-daemon"]["conn"])
    ours = _signatures(answers["busd"]["conn"])
    assert reference == DAEMON_CONNECTION_KEYS
    assert {k: t for k, t in ours.items() if not k.startswith(PREFIX)} == reference


def test_values_the_scenario_fixes_are_equal(answers: dict[str, dict]) -> None:
    def values(kind: str, which: str, keys: tuple[str, ...]) -> dict:
        return {key: answers[kind][which][key].value for key in keys}

    bus_keys = ("ActiveConnections", "IncompleteConnections", "MatchRules", "PeakMatchRules",
                "PeakMatchRulesPerConnection", "BusNames", "PeakBusNames", "PeakBusNamesPerConnection")
    conn_keys = ("MatchRules", "PeakMatchRules", "BusNames", "PeakBusNames", "IncomingMessages", "IncomingFDs",
                 "PeakIncomingFDs", "OutgoingFDs", "PeakOutgoingFDs")
    assert values("busd", "bus", bus_keys) == values("dbus-daemon", "bus", bus_keys)
    assert values("busd", "conn", conn_keys) == values("dbus-daemon", "conn", conn_keys)
    expected = {"MatchRules": 2, "PeakMatchRules": 3, "BusNames": 3, "PeakBusNames": 3}
    assert {key: answers["busd"]["conn"][key].value for key in expected} == expected
    for kind in ("busd", "dbus-daemon"):
        assert answers[kind]["conn"]["UniqueName"].value == answers[kind]["a"]


def test_get_all_match_rules_is_the_same(answers: dict[str, dict]) -> None:
    def by_role(kind: str) -> dict[str, list[str]]:
        found = answers[kind]["rules"]
        return {"a": sorted(found[answers[kind]["a"]]), "b": sorted(found.get(answers[kind]["b"], []))}

    assert by_role("busd") == by_role("dbus-daemon")
    assert len(by_role("busd")["a"]) == 2


def test_busd_counts_its_own_totals(answers: dict[str, dict]) -> None:
    conn = answers["busd"]["conn"]
    # Hello, 4 AddMatch/RemoveMatch, 2 RequestName, GetStats and GetConnectionStats itself: 9 calls in,
    # their 8 replies plus NameAcquired/NameOwnerChanged signals out (the reply to this call is not yet sent).
    assert conn[PREFIX + "MessagesIn"].value == 9
    assert conn[PREFIX + "MessagesOut"].value >= 8
    assert conn[PREFIX + "BytesIn"].value > 0 and conn[PREFIX + "BytesOut"].value > 0
    assert conn[PREFIX + "PendingReplies"].value == 0
