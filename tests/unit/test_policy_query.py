"""Asking a compiled policy about a message, and audit mode, without a bus."""

from __future__ import annotations

import logging

import pytest

from busd.bus.policy_audit import AuditPolicy
from busd.bus.policy_query import PolicyQuery, PolicyQueryError, check, dump
from busd.config.loader import load_config_text
from busd.launcher.policy import compile_policy, policy_mode

RULES = """<busconfig><listen>unix:path=/x</listen>
<policy context="default">
  <allow send_destination="org.example.Open"/>
  <deny send_type="method_call" send_interface="org.example.Closed"/>
  <allow receive_type="method_call"/>
</policy>
<policy user="root"><deny send_path="/" send_member="Forbidden"/></policy>
{extra}</busconfig>"""


def _config(extra: str = ""):
    return load_config_text(RULES.replace("{extra}", extra))


def test_the_deciding_rule_and_its_line() -> None:
    policy = compile_policy(_config())
    # (with an interface: a deny rule naming one also matches calls without, as in dbus-daemon)
    allowed = check(policy, PolicyQuery(uid=1000, gids=(), destination="org.example.Open", interface="org.example.Api",
                                        member="Get", receiver_uid=1000, receiver_gids=()))
    assert allowed["allowed"] and allowed["decided_by"] == "receive"
    assert allowed["send"]["origin"].endswith(":3") and allowed["receive"]["origin"].endswith(":5")
    denied = check(policy, PolicyQuery(uid=1000, gids=(), destination="org.example.Open",
                                       interface="org.example.Closed", member="Get"))
    assert (denied["allowed"], denied["decided_by"], denied["origin"][-2:]) == (False, "send", ":4")
    root = check(policy, PolicyQuery(uid=0, gids=(), destination="org.example.Open", member="Forbidden"))
    assert not root["allowed"] and root["origin"].endswith(":7")
    nobody = check(policy, PolicyQuery(uid=1000, gids=(), destination="org.example.Other", interface="org.example.Api",
                                       member="Get"))
    assert (nobody["allowed"], nobody["rule"], nobody["origin"]) == (False, "", "")  # the default deny


def test_a_query_that_is_no_message_says_what_is_missing() -> None:
    policy = compile_policy(_config())
    with pytest.raises(PolicyQueryError, match="needs --member"):
        check(policy, PolicyQuery(uid=0, destination="org.example.Open"))
    with pytest.raises(PolicyQueryError, match="unknown message type"):
        check(policy, PolicyQuery(uid=0, type="call", member="X"))
    with pytest.raises(PolicyQueryError, match="unknown query field"):
        PolicyQuery.from_dict({"uid": 0, "colour": "red"})


def test_dump_lists_contexts_in_evaluation_order() -> None:
    contexts = dump(compile_policy(_config()))
    assert [c["context"] for c in contexts] == ["default", "user=0", "mandatory"]
    assert [r["kind"] for r in contexts[0]["rules"]] == ["send", "send", "receive"]


def test_audit_mode_logs_and_lets_through_but_keeps_eavesdropping_and_answers_as_the_rules(caplog) -> None:
    config = _config('<busd:policy xmlns:busd="https://busd.dev/config" mode="audit"/>')
    assert policy_mode(config) == "audit"
    with caplog.at_level(logging.WARNING, logger="busd.policy"):
        policy = compile_policy(config)
    assert isinstance(policy, AuditPolicy) and "POLICY AUDIT MODE IS ON" in caplog.text
    query = PolicyQuery(uid=1000, gids=(), destination="org.example.Open", interface="org.example.Closed",
                        member="Get")
    h = query.header()
    with caplog.at_level(logging.WARNING, logger="busd.policy"):
        verdict = policy.for_peer(1000, ()).can_send(h, {"org.example.Open"}, False, 0)
    assert verdict.allowed and "policy audit: would deny" in caplog.text
    assert not policy.for_peer(1000, ()).can_receive(h, set(), False, 0, True).allowed  # eavesdropping
    assert check(policy, query)["allowed"] is False  # the query answers what the rules say
    assert policy_mode(_config('<busd:policy xmlns:busd="https://busd.dev/config" mode="loud"/>')) == "enforce"
