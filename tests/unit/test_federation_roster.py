"""Unit tests of the federation's pure parts: the roster (heartbeats -> owners, queues, expiry, interest) and the
nats:// settings (no NATS, no bus)."""

from __future__ import annotations

import json

import pytest

from busd.bridge.nats_roster import Claim, HeartbeatError, Roster, heartbeat
from busd.bridge.settings import NOBODY_UID, BridgeConfigError, bridge_settings
from busd.wire.message import SIGNAL, build_message, parse_header, read_body


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def beat(node: str, claims: dict[str, tuple[float, str]], interest: tuple[str, ...] = (), instance: str = "i") -> bytes:
    return heartbeat(node, f"{node}-{instance}", {name: Claim(*value) for name, value in claims.items()}, interest)


def test_the_earliest_claim_owns_a_name_and_the_others_queue_in_claim_order():
    roster = Roster("me")
    roster.heard(beat("b", {"org.x.A": (2.0, ":1.5")}))
    roster.heard(beat("c", {"org.x.A": (1.0, ":1.9")}))
    mine = {"org.x.A": Claim(3.0, ":1.2")}
    assert roster.queues(mine)["org.x.A"] == [("c", ":1.9"), ("b", ":1.5"), ("me", ":1.2")]
    assert roster.primaries(mine) == {"org.x.A": ("c", ":1.9")}
    # Equal stamps: the node name decides, so every node agrees.
    other = Roster("b")
    other.heard(beat("a", {"org.x.T": (5.0, ":1.1")}))
    assert other.primaries({"org.x.T": Claim(5.0, ":1.3")}) == {"org.x.T": ("a", ":1.1")}


def test_every_node_computes_the_same_owners_from_the_same_heartbeats():
    claims = {"a": {"org.x.S": (3.0, ":1.1"), "org.x.Only": (1.0, ":1.1")},
              "b": {"org.x.S": (2.0, ":1.4")}, "c": {"org.x.S": (2.5, ":1.2")}}
    views = []
    for me in claims:
        roster = Roster(me)
        for node, theirs in claims.items():
            if node != me:
                roster.heard(beat(node, theirs))
        views.append(roster.primaries({name: Claim(*value) for name, value in claims[me].items()}))
    assert views[0] == views[1] == views[2] == {"org.x.S": ("b", ":1.4"), "org.x.Only": ("a", ":1.1")}


def test_a_new_claim_comes_after_every_claim_heard_even_from_a_clock_ahead():
    roster = Roster("me")
    roster.heard(beat("b", {"org.x.A": (4e12, ":1.5")}))  # a clock far in the future
    assert roster.claim_time("org.x.A") > 4e12
    assert roster.claim_time("org.x.Free") < 4e12


def test_a_silent_node_expires_and_a_restarted_one_is_new():
    clock = Clock()
    roster = Roster("me", clock)
    assert roster.heard(beat("b", {"org.x.A": (1.0, ":1.5")})) == ("b", True, True)
    assert roster.heard(beat("b", {"org.x.A": (1.0, ":1.5")})) == ("b", False, False)
    assert roster.heard(beat("b", {}, instance="again")) == ("b", True, True)
    clock.now += 2.0
    roster.heard(beat("c", {}))
    clock.now += 2.0
    assert roster.expire(3.5) == ["b"]
    assert set(roster.nodes) == {"c"}


def test_a_heartbeat_lists_the_callers_other_nodes_have_stand_ins_for():
    roster = Roster("me")
    roster.heard(heartbeat("b", "b-1", {}, (), {":1.4", ":1.9"}))
    assert roster.nodes["b"].callers == {":1.4", ":1.9"}
    roster.heard(heartbeat("b", "b-1", {}, ()))
    assert roster.nodes["b"].callers == frozenset()


def test_broken_heartbeats_are_refused():
    roster = Roster("me")
    for data in (b"not json", json.dumps({"node": "x"}).encode(), json.dumps([1, 2]).encode()):
        with pytest.raises(HeartbeatError):
            roster.heard(data)


def test_signals_go_only_to_nodes_whose_rules_match_arguments_included():
    roster = Roster("me")
    said = "type='signal',sender='org.x.A',member='Said'"
    roster.heard(beat("b", {}, (f"{said},arg0='yes'",)))
    roster.heard(beat("c", {}, ("type='signal',member='Other'", "not a rule")))
    roster.heard(beat("d", {}, (said,)))

    def signal(text: str):
        message = build_message(SIGNAL, 1, path="/x", interface="org.x.I", member="Said", sender=":1.7",
                                signature="s", body=[text])
        h = parse_header(message)
        return h, lambda: read_body(message, h)

    h, args = signal("yes")
    assert sorted(roster.interested(h, ["org.x.A"], args)) == ["b", "d"]
    h, args = signal("no")
    assert roster.interested(h, ["org.x.A"], args) == ["d"]
    assert roster.interested(h, ["org.x.Other"], args) == []


def test_nats_settings_from_the_command_line_and_xml_defaults():
    chosen = bridge_settings("nats://127.0.0.1:4222,nats://10.0.0.2:4222", ["org.x.*"], ["org.y.*"],
                             node_name="n1")
    assert chosen.is_federation and chosen.federation == "busd" and chosen.node_name == "n1"
    assert chosen.remote_uid == NOBODY_UID and chosen.credentials == ""
    assert not bridge_settings("session").is_federation


@pytest.mark.parametrize("kwargs, says", [
    ({"upstream": "nats://"}, "names no host"),
    ({"upstream": "nats://h:99999"}, "out of range"),
    ({"upstream": "nats://h:1,unix:path=/x"}, "is not a NATS URL"),
    ({"upstream": "nats://h:1", "node_name": "a.b"}, "part of NATS subjects"),
    ({"upstream": "nats://h:1", "federation": "x*"}, "part of NATS subjects"),
    ({"upstream": "nats://h:1", "remote_uid": 0}, "not root's 0"),
    ({"upstream": "nats://h:1", "credentials": "/nonexistent.creds"}, "does not exist"),
    ({"upstream": "session", "node_name": "n"}, "needs --upstream=nats://"),
    ({"node_name": "n"}, "need --upstream=nats://"),
])
def test_nats_settings_that_cannot_work_say_why(kwargs, says):
    with pytest.raises(BridgeConfigError, match=says):
        bridge_settings(**kwargs)


def test_a_name_yields_to_the_owner_the_nodes_agreed_on():
    """NameRegistry.yield_to: the queued stand-in becomes primary; the local owner waits behind it, or leaves."""
    from busd.bus.ownership import DO_NOT_QUEUE, NameRegistry
    registry = NameRegistry()
    registry.request("org.x.S", "local", 0)
    registry.request("org.x.S", "other", 0)
    registry.request("org.x.S", "stand-in", 0)
    events = registry.yield_to("org.x.S", "stand-in")
    assert [(e.kind, e.old_owner, e.new_owner) for e in events] == [
        ("lost", "local", "stand-in"), ("owner_changed", "local", "stand-in"), ("acquired", "local", "stand-in")]
    assert registry.queued_owners("org.x.S") == ["stand-in", "local", "other"]
    assert registry.yield_to("org.x.S", "stand-in") == []  # already primary
    registry.request("org.x.T", "alone", DO_NOT_QUEUE)
    registry.request("org.x.T", "stand-in", 0)
    registry.yield_to("org.x.T", "stand-in")
    assert registry.queued_owners("org.x.T") == ["stand-in"] and "org.x.T" not in registry.all_names_of("alone")


def test_a_frame_carries_the_origin_before_the_message_and_nothing_else_unframes():
    from busd.bridge.nats_traffic import frame, unframe
    message = build_message(SIGNAL, 1, path="/x", interface="org.x.I", member="M", signature="s", body=["a:b"])
    assert unframe(frame("node-1", ":1.42", message)) == (("node-1", ":1.42"), message)
    for junk in (b"", message, b"node\0org.x.Name\0" + message, b"\0:1.1\0" + message, b"n\xff\0:1.1\0"):
        assert unframe(junk) is None


def test_the_xml_element_takes_the_federation_options_and_the_command_line_wins(tmp_path):
    from busd.config.loader import load_config
    creds = tmp_path / "node.creds"
    creds.write_text("SUAEXAMPLESEED\n")
    path = tmp_path / "bus.conf"
    path.write_text(f"""<busconfig><listen>unix:path=/x</listen>
  <busd:bridge xmlns:busd="https://busd.dev/config" upstream="nats://127.0.0.1:4222" federation="home"
               node-name="kitchen" credentials="{creds}" remote-uid="4242">
    <busd:import name="org.x.*"/><busd:export name="org.x.*"/>
  </busd:bridge></busconfig>""")
    extensions = load_config(str(path)).extensions
    chosen = bridge_settings(extensions=extensions)
    assert (chosen.federation, chosen.node_name, chosen.credentials, chosen.remote_uid) == \
        ("home", "kitchen", str(creds), 4242)
    assert [str(p) for p in chosen.imports] == ["org.x.*"]
    assert bridge_settings(extensions=extensions, node_name="garage", remote_uid=5000).node_name == "garage"
    path.write_text(path.read_text().replace('upstream="nats://127.0.0.1:4222"', 'upstream="session"'))
    with pytest.raises(BridgeConfigError, match="is for a federation"):
        bridge_settings(extensions=load_config(str(path)).extensions)


def test_without_the_nats_client_busd_says_what_to_install(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nats" else real(name, *a))
    with pytest.raises(BridgeConfigError, match=r"pip install 'busd\[nats\]'"):
        bridge_settings("nats://127.0.0.1:4222", ["org.x.*"])
    assert bridge_settings("session", ["org.x.*"]) is not None  # a bus upstream needs no NATS
