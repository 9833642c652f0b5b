"""The policy engine without a bus: against a plain transcription of dbus-daemon's rule loops, and its edges.

The reference below follows bus/policy.c line by line (the optimizer, then the
last matching rule wins, default deny) with none of busd's indexing or caching;
hypothesis feeds both the same rules and messages. The live tests in
test_policy.py show the same behaviour on real buses.
"""

from __future__ import annotations

import os
import pwd
from types import SimpleNamespace
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from busd.bus import policy as policy_module
from busd.bus.policy import AllowEverything, ConfigPolicy, describe_rule
from busd.launcher.policy import compile_policy
from busd.config.builtin import builtin_session_config
from busd.config.loader import load_config, load_config_text
from busd.config.model import MAX_MESSAGE_UNIX_FDS, BusConfig, Policy, PolicyRule

from buses import SESSION_CONFIG

TYPES = {"method_call": 1, "method_return": 2, "error": 3, "signal": 4}


# ---------------------------------------------------------------- the reference: bus/policy.c, transcribed

def _starts_with_words(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _reference_optimize(rules: list[PolicyRule], kind: str) -> list[PolicyRule]:
    """bus_client_policy_optimize: a rule with no type/path/interface/member/error/name drops those before it."""
    kept: list[PolicyRule] = []
    for rule in rules:
        if kind == "own":
            wildcard = rule.own is None and rule.own_prefix is None
        else:
            p = "send_" if kind == "send" else "receive_"
            name = (rule.send_destination or rule.send_destination_prefix) if kind == "send" else rule.receive_sender
            wildcard = all(getattr(rule, p + f) is None for f in ("type", "path", "interface", "member", "error")) \
                and name is None
        if wildcard:
            kept = []
        kept.append(rule)
    return kept


def reference_check(rules: list[PolicyRule], kind: str, msg, names: set[str], requested_reply: bool, nfds: int,
                    eavesdropping: bool = False) -> bool:
    """bus_client_policy_check_can_send / _receive."""
    p = "send_" if kind == "send" else "receive_"
    allowed = False
    for rule in _reference_optimize([r for r in rules if r.kind == kind], kind):
        if getattr(rule, p + "type") is not None and TYPES[getattr(rule, p + "type")] != msg.type:
            continue
        if kind == "receive":
            if eavesdropping and rule.allow and not rule.eavesdrop:
                continue
            if not eavesdropping and not rule.allow and rule.eavesdrop:
                continue
        if msg.reply_serial:
            if not requested_reply and rule.allow and rule.requested_reply and not rule.eavesdrop:
                continue
            if requested_reply and not rule.allow and not rule.requested_reply:
                continue
        path, interface, member, error = (getattr(rule, p + f) for f in ("path", "interface", "member", "error"))
        if path is not None and msg.path is not None and msg.path != path:
            continue
        if interface is not None and ((msg.interface is None and rule.allow) or
                                      (msg.interface is not None and msg.interface != interface)):
            continue
        if member is not None and msg.member is not None and msg.member != member:
            continue
        if error is not None and msg.error_name is not None and msg.error_name != error:
            continue
        if kind == "send":
            if rule.send_broadcast is not None:
                broadcast = msg.destination is None and msg.type == TYPES["signal"]
                if broadcast != rule.send_broadcast:
                    continue
            if rule.send_destination is not None and rule.send_destination not in names:
                continue
            if rule.send_destination_prefix is not None and \
                    not any(_starts_with_words(n, rule.send_destination_prefix) for n in names):
                continue
        elif rule.receive_sender is not None and rule.receive_sender not in names:
            continue
        if (rule.min_fds > 0 or rule.max_fds < MAX_MESSAGE_UNIX_FDS) and not rule.min_fds <= nfds <= rule.max_fds:
            continue
        allowed = rule.allow
    return allowed


def reference_own(rules: list[PolicyRule], name: str) -> bool:
    allowed = False
    for rule in _reference_optimize([r for r in rules if r.kind == "own"], "own"):
        if rule.own_prefix is not None:
            if not _starts_with_words(name, rule.own_prefix):
                continue
        elif rule.own is not None and rule.own != name:
            continue
        allowed = rule.allow
    return allowed


# ---------------------------------------------------------------- strategies over a small world, so things collide

NAMES = ["a.b", "a.b.c", "a.bc", ":1.1", "x.y"]
VALUES = {"type": list(TYPES), "path": ["/p", "/q"], "interface": ["a.I", "b.I"], "member": ["M", "N"],
          "error": ["e.A", "e.B"]}
fd_bounds = st.sampled_from([(0, MAX_MESSAGE_UNIX_FDS), (0, MAX_MESSAGE_UNIX_FDS), (1, MAX_MESSAGE_UNIX_FDS),
                             (0, 0), (0, 1), (2, 3)])


@st.composite
def _message_rule_fields(draw, prefix: str, name_fields: dict) -> dict:
    """Few constrained fields per rule (often none), so rules overlap and wipe each other."""
    chosen = draw(st.sets(st.sampled_from([*VALUES, *name_fields]), max_size=2))
    fields = {f"{prefix}{f}": draw(st.sampled_from(VALUES[f])) for f in chosen if f in VALUES}
    fields.update({name: draw(st.sampled_from(values)) for name, values in name_fields.items() if name in chosen})
    low, high = draw(fd_bounds)
    fields.update(allow=draw(st.booleans()), eavesdrop=draw(st.booleans()), min_fds=low, max_fds=high,
                  file="t.conf", line=draw(st.integers(1, 99)))
    fields[f"{prefix}requested_reply"] = draw(st.one_of(st.none(), st.booleans()))
    return fields


@st.composite
def send_rules(draw) -> PolicyRule:
    fields = draw(_message_rule_fields("send_", {"send_destination": NAMES,
                                                 "send_destination_prefix": ["a", "a.b", ":1"]}))
    if "send_destination" in fields and "send_destination_prefix" in fields:
        del fields["send_destination_prefix"]
    return PolicyRule(kind="send", send_broadcast=draw(st.one_of(st.none(), st.booleans())), **fields)


@st.composite
def receive_rules(draw) -> PolicyRule:
    return PolicyRule(kind="receive", **draw(_message_rule_fields("receive_", {"receive_sender": NAMES})))


@st.composite
def own_rules(draw) -> PolicyRule:
    how = draw(st.sampled_from(["any", "own", "prefix"]))
    return PolicyRule(allow=draw(st.booleans()), kind="own", own=draw(st.sampled_from(NAMES[:3])) if how == "own"
                      else None, own_prefix=draw(st.sampled_from(["a", "a.b"])) if how == "prefix" else None,
                      file="t.conf", line=1)


maybe = lambda values: st.one_of(st.none(), st.sampled_from(values))  # noqa: E731


@st.composite
def messages(draw) -> SimpleNamespace:
    kind = draw(st.sampled_from(list(TYPES.values())))
    return SimpleNamespace(
        type=kind, path=draw(maybe(VALUES["path"])), interface=draw(maybe(VALUES["interface"])),
        member=draw(maybe(VALUES["member"])), error_name=draw(maybe(VALUES["error"])), destination=None,
        reply_serial=draw(st.sampled_from([None, 7])) if kind in (2, 3) else None, describe=lambda: "a message")


def variants(msg: SimpleNamespace):
    """The message to and from various peers, broadcast or not, with and without fds: the parts a
    cache key could forget."""
    for destination in (None, "a.b"):
        for requested in (False, True):
            for nfds in (0, 1, 2):
                yield SimpleNamespace(**{**vars(msg), "destination": destination}), requested, nfds


any_rules = st.lists(st.one_of(send_rules(), receive_rules(), own_rules()), max_size=10)
checks = st.lists(st.tuples(messages(), st.sets(st.sampled_from(NAMES), max_size=3)), min_size=1, max_size=6)


def _config(default: list[PolicyRule], mandatory: list[PolicyRule] = ()) -> BusConfig:
    policies = [Policy(context="default", rules=tuple(default), file="t.conf", line=1)]
    if mandatory:
        policies.append(Policy(context="mandatory", rules=tuple(mandatory), file="t.conf", line=50))
    return BusConfig(listen=("unix:path=/x",), policies=tuple(policies))


@settings(max_examples=150, deadline=None)
@given(default=any_rules, mandatory=any_rules, probes=checks, small_cache=st.booleans())
def test_engine_agrees_with_the_reference(default, mandatory, probes, small_cache):
    with mock.patch.object(policy_module, "CACHE_LIMIT", 3 if small_cache else policy_module.CACHE_LIMIT):
        peer = compile_policy(_config(default, mandatory)).for_peer(1000, ())
        every = [*default, *mandatory]
        # Everything twice, so the second answers come from the cache (or a refilled one).
        for base, names in probes + probes:
            for msg, requested, nfds in variants(base):
                assert peer.can_send(msg, names, requested, nfds).allowed == \
                    reference_check(every, "send", msg, names, requested, nfds)
                for eavesdrop in (False, True):
                    assert peer.can_receive(msg, names, requested, nfds, eavesdrop).allowed == \
                        reference_check(every, "receive", msg, names, requested, nfds, eavesdrop)
                # may_eavesdrop False promises that no message can be eavesdropped.
                assert peer.may_eavesdrop or not peer.can_receive(msg, names, requested, nfds, True).allowed
        for name in [*NAMES, "a.b.c.d", "a"]:
            assert peer.can_own(name).allowed == reference_own(every, name)


ALLOW_ALL_RULES = load_config_text(SESSION_CONFIG.replace("{socket}", "/x").replace("{extra}", "")).policies[0].rules


@settings(max_examples=150, deadline=None)
@given(extra=st.lists(st.one_of(send_rules(), receive_rules()), max_size=3), mandatory=any_rules, probes=checks)
def test_an_unenforced_policy_allows_everything(extra, mandatory, probes):
    # `enforced` False lets the bus skip the checks: it must only be so when they all pass.
    compiled = compile_policy(_config([*ALLOW_ALL_RULES, *extra], mandatory))
    if compiled.enforced:
        return
    peer = compiled.for_peer(1000, ())
    for base, names in probes:
        for msg, requested, nfds in variants(base):
            assert peer.can_send(msg, names, requested, nfds).allowed
            assert peer.can_receive(msg, names, requested, nfds, True).allowed
            assert peer.can_receive(msg, names, requested, nfds, False).allowed


# ---------------------------------------------------------------- whole configurations

def _rules_text(body: str) -> BusConfig:
    return load_config_text(f"<busconfig><listen>unix:path=/x</listen>{body}</busconfig>")


@pytest.mark.parametrize("config", [
    pytest.param(builtin_session_config, id="busd session.conf"),
    pytest.param(lambda: load_config_text(SESSION_CONFIG.replace("{socket}", "/x").replace("{extra}", "")),
                 id="the test session config"),
    pytest.param(lambda: load_config("/usr/share/dbus-1/session.conf"), id="stock session.conf",
                 marks=pytest.mark.skipif(not os.path.exists("/usr/share/dbus-1/session.conf"),
                                          reason="no stock session.conf")),
])
def test_session_policies_are_not_enforced(config):
    assert not compile_policy(config()).enforced


@pytest.mark.parametrize("body", [
    '<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/>'
    '<deny send_interface="a.b"/></policy>',
    # The allow rules skip eavesdropping and unrequested replies:
    '<policy context="default"><allow send_destination="*"/><allow receive_type="*"/></policy>',
    '<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/></policy>'
    '<policy user="root"><deny send_type="signal"/></policy>',
    '<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/>'
    '<allow send_interface="a.b" log="true"/></policy>',
    '<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/>'
    '<allow send_broadcast="false"/></policy>',  # looks unconditional: wipes the allow-all before it
    # Allowing everything to one user leaves everyone else with nothing:
    '<policy user="root"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/></policy>',
])
def test_policies_that_check_something_are_enforced(body):
    assert compile_policy(_rules_text(body)).enforced


def test_a_mandatory_allow_all_overrides_earlier_denials():
    config = _rules_text('<policy context="default"><deny send_type="method_call"/></policy>'
                         '<policy group="root"><deny receive_type="signal"/></policy>'
                         '<policy context="mandatory"><allow send_destination="*" eavesdrop="true"/>'
                         '<allow eavesdrop="true"/></policy>')
    assert not compile_policy(config).enforced


def test_stock_system_policy_is_enforced_and_opens_the_driver():
    if not os.path.exists("/usr/share/dbus-1/system.conf"):
        pytest.skip("no stock system.conf here")
    compiled = compile_policy(load_config("/usr/share/dbus-1/system.conf"))
    assert compiled.enforced
    nobody = compiled.for_peer(65534, (65534,))
    get_id = SimpleNamespace(type=1, path="/org/freedesktop/DBus", interface="org.freedesktop.DBus", member="GetId",
                             error_name=None, destination="org.freedesktop.DBus", reply_serial=None)
    assert nobody.can_send(get_id, {"org.freedesktop.DBus"}, False, 0).allowed
    update = SimpleNamespace(**{**vars(get_id), "member": "UpdateActivationEnvironment"})
    verdict = nobody.can_send(update, {"org.freedesktop.DBus"}, False, 0)
    assert not verdict.allowed
    assert 'send_member="UpdateActivationEnvironment"' in str(verdict.rule)
    assert "/usr/share/dbus-1/system.conf:" in str(verdict.rule)


def test_at_console_rules():
    # busd sees nobody at the console: at_console="false" rules apply to all, "true" ones to none.
    compiled = compile_policy(_rules_text(
        '<policy context="default"><allow own="*"/></policy>'
        '<policy at_console="true"><deny own="a.True"/></policy>'
        '<policy at_console="false"><deny own="a.False"/></policy>'))
    peer = compiled.for_peer(1000, ())
    assert peer.can_own("a.True").allowed
    assert not peer.can_own("a.False").allowed
    # A connection without a uid (ANONYMOUS) gets neither user nor console rules, as in dbus-daemon.
    assert compiled.for_peer(None, ()).can_own("a.False").allowed


def test_peers_with_the_same_rules_share_one_compiled_policy():
    compiled = compile_policy(_rules_text(
        '<policy context="default"><allow own="*"/></policy>'
        '<policy group="root"><deny own="a.b"/></policy><policy user="root"><deny own="a.c"/></policy>'))
    assert compiled.for_peer(1000, (100, 5)) is compiled.for_peer(1001, (7,))  # no user or group rules
    assert compiled.for_peer(1000, (0,)) is compiled.for_peer(1000, (0, 100))  # only gid 0 has rules
    assert compiled.for_peer(0, ()) is not compiled.for_peer(1000, ())
    assert not compiled.for_peer(1000, (0,)).can_own("a.b").allowed
    assert compiled.for_peer(1000, ()).can_own("a.b").allowed


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody here")


def test_who_may_connect():
    nobody = _nobody()
    connect = lambda rules, uid: compile_policy(_rules_text(  # noqa: E731
        f'<policy context="default">{rules}</policy>')).allows_connection(uid)
    assert connect("", os.geteuid()).allowed  # the bus's own user
    assert not connect("", nobody.pw_uid).allowed
    assert connect('<allow user="*"/>', nobody.pw_uid).allowed
    assert not connect('<allow user="*"/><deny user="nobody"/>', nobody.pw_uid).allowed
    group = pwd.getpwuid(nobody.pw_uid).pw_gid
    assert connect(f'<allow group="{group}"/>', nobody.pw_uid).allowed
    denied = connect(f'<allow user="*"/><deny group="{group}"/>', nobody.pw_uid)
    assert not denied.allowed and f'group="{group}"' in denied.rule
    assert connect("", None).allowed  # no uid: the authentication mechanism decided
    unknown = 54321
    while True:
        try:
            pwd.getpwuid(unknown)
            unknown += 1
        except KeyError:
            break
    assert not connect('<allow user="*"/>', unknown).allowed  # no passwd entry: no groups: refused


def test_allow_everything_is_not_enforced():
    everything = AllowEverything()
    assert not everything.enforced
    peer = everything.for_peer(1000, ())
    assert peer.can_own("a.b").allowed
    assert everything.allows_connection(1000).allowed


def test_describe_rule_says_what_and_where():
    config = _rules_text('<policy context="default">\n<deny send_destination="*"/>\n'
                         '<allow send_interface="a.b" send_member="M" min_fds="1"/>\n'
                         '<allow own_prefix="a.b"/>\n<deny eavesdrop="true"/></policy>')
    texts = [describe_rule(rule) for rule in config.policies[0].rules]
    assert texts[0] == '<deny send_type="*"/> (<config>:2)'
    assert texts[1] == '<allow send_interface="a.b" send_member="M" min_fds="1"/> (<config>:3)'
    assert texts[2] == '<allow own_prefix="a.b"/> (<config>:4)'
    assert texts[3] == '<deny eavesdrop="true"/> (<config>:5)'


def test_compile_policy_takes_a_whole_config():
    assert isinstance(compile_policy(_rules_text("")), ConfigPolicy)
    # No rules at all: nothing may be sent, received or owned, as with dbus-daemon.
    peer = compile_policy(_rules_text("")).for_peer(1000, ())
    assert not peer.can_own("a.b").allowed


@pytest.mark.parametrize("body, uid, may", [
    ('<policy context="default"><allow receive_type="signal"/><allow receive_type="method_call"/></policy>', 1000,
     False),
    ('<policy context="default"><allow receive_type="signal"/></policy>'
     '<policy user="root"><allow eavesdrop="true"/></policy>', 1000, False),
    ('<policy context="default"><allow receive_type="signal"/></policy>'
     '<policy user="root"><allow eavesdrop="true"/></policy>', 0, True),
    ('<policy context="default"><allow receive_interface="a.b" eavesdrop="true"/></policy>', 1000, True),
    # A later unconditional rule wipes the eavesdropping allow before it (dbus-daemon's optimizer).
    ('<policy context="default"><allow receive_interface="a.b" eavesdrop="true"/>'
     '<deny receive_type="*"/></policy>', 1000, False),
])
def test_may_eavesdrop_says_whether_any_rule_can_let_a_peer_eavesdrop(body, uid, may):
    assert compile_policy(_rules_text(body)).for_peer(uid, ()).may_eavesdrop is may


def test_the_stock_system_policy_lets_no_one_eavesdrop():
    system = "/usr/share/dbus-1/system.conf"
    if not os.path.exists(system):
        pytest.skip("no stock system.conf")
    policy = compile_policy(load_config(system))
    assert not policy.for_peer(65534, ()).may_eavesdrop
    assert not policy.for_peer(0, ()).may_eavesdrop
    assert AllowEverything().for_peer(65534, ()).may_eavesdrop


def test_verdicts_on_peer_chosen_long_paths_and_many_names_are_not_cached():
    # Issue 13, #3 in the policy: the verdict caches are keyed on the path and the other peer's names.
    # 100 messages with distinct 1 MiB paths (or a peer owning 40 names under a rule's prefix) must not
    # leave 100 MiB behind, and the verdicts stay right.
    import tracemalloc

    compiled = compile_policy(_rules_text(
        '<policy context="default"><allow send_destination="*"/><deny send_path="/denied"/>'
        '<deny send_destination_prefix="org.denied"/><allow receive_sender="*"/></policy>'))
    peer = compiled.for_peer(1000, ())
    message = SimpleNamespace(type=1, path="/denied", interface="org.example.I", member="M", error_name=None,
                              destination="org.example.S", reply_serial=None)
    assert not peer.can_send(message, {"org.example.S"}, False, 0).allowed
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100):
            long_path = SimpleNamespace(**{**vars(message), "path": f"/p{i}/" + "x" * (1 << 20)})
            assert peer.can_send(long_path, {"org.example.S"}, False, 0).allowed
            assert peer.can_receive(long_path, {"org.example.S"}, False, 0, False).allowed
        many = {f"org.denied.N{i}" for i in range(40)}
        for i in range(100):
            assert not peer.can_send(SimpleNamespace(**{**vars(message), "path": f"/q{i}"}), many, False, 0).allowed
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 2 << 20, f"the policy kept {retained} bytes of peer-chosen keys"


def test_per_peer_policies_are_found_again_by_identity():
    """for_peer() remembers a (uid, groups) it was asked with: the same policy object comes back, and the
    same one as for those groups in another order or with groups no rule names; past the bound it starts
    over and still answers alike."""
    compiled = compile_policy(_rules_text('<policy context="default"><allow send_destination="*"/></policy>'
                                          '<policy group="root"><deny own="a.b"/></policy>'
                                          '<policy user="root"><deny own="a.c"/></policy>'))
    root = compiled.for_peer(0, (0, 5))
    assert compiled.for_peer(0, (0, 5)) is root
    assert compiled.for_peer(0, (5, 0)) is root  # (the groups no rule names do not make another)
    assert compiled.for_peer(0, [0, 5]) is root  # (a list is not remembered, but finds the same)
    other = compiled.for_peer(1000, (1000,))
    assert other is not root
    for uid in range(policy_module._IDENTITIES_LIMIT + 10):
        compiled.for_peer(uid + 2000, (uid + 2000,))
    assert len(compiled._by_identity) <= policy_module._IDENTITIES_LIMIT
    assert compiled.for_peer(0, (0, 5)) is root
    denied = (root.can_own("a.b"), root.can_own("a.c"))
    assert not any(verdict.allowed for verdict in denied) and all(verdict.rule for verdict in denied)
