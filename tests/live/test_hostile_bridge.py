"""Hostile-peer suite, the bridge (issue 13 #9 and the stand-ins' credentials): busd only, dbus-daemon has no bridge.

A busd with the system policy of tests/live/test_hostile.py, bridged to an
upstream dbus-daemon: dev.busd.Up.* imported, dev.busd.Down.* exported. An
upstream client calls an exported name, so it has a stand-in here (a mirror).
The attacker, uid nobody on the local bus, addresses that stand-in: nothing of
it may reach the upstream caller (the bridge promises that what is not imported
is ServiceUnknown), while its calls to an imported name still cross, and the
exported service still answers and signals its caller. Then: local policy rules
for the daemon's own user (root here) must not apply to upstream callers, whose
stand-ins have no credentials.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Iterator

import pytest

from buses import start_bus
from busclient import LineWatcher, RawClient
from busd.wire.message import NO_REPLY_EXPECTED, SIGNAL
from test_bridge_live import CONNECTED, SERVICE_INTERFACE, SERVICE_PATH, Service, wait_owned
from test_hostile import SYSTEM_CONFIG, Bystander, attack

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacker runs as uid nobody: needs root")

UP_SVC = "dev.busd.Up.Svc"  # imported, served upstream by test_bridge_live's Service
DOWN_SVC = "dev.busd.Down.Svc"  # exported, owned here by the test
ROOT_ONLY = "dev.busd.Down.RootOnly"  # exported; only root may call it here
RAW = "dev.busd.Test.Raw"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
SERVICE_UNKNOWN = "org.freedesktop.DBus.Error.ServiceUnknown"
TIMEOUT = 10.0

# What a system.d file for the two local services and the imported one would say, plus one permissive
# rule found in the wild (Introspect of anything), so that a call to the stand-in passes the policy and
# meets the bridge.
LOCAL_POLICY = f"""
  <policy user="root">
    <allow own="{DOWN_SVC}"/>
    <allow own="{ROOT_ONLY}"/>
    <allow send_destination="{ROOT_ONLY}"/>
  </policy>
  <policy context="default">
    <allow send_destination="{DOWN_SVC}"/>
    <allow send_destination="{UP_SVC}"/>
    <allow send_interface="{INTROSPECTABLE}"/>
  </policy>
"""


@contextmanager
def bridged_system_bus() -> Iterator[tuple]:
    """(upstream dbus-daemon, local busd with the system policy bridged to it, busd's log lines)."""
    up = start_bus("dbus-daemon")
    try:
        args = (f"--upstream={up.address}", "--log-level=info", "--import=dev.busd.Up.*", "--export=dev.busd.Down.*")
        read_fd, write_fd = os.pipe()
        saved = os.dup(2)
        try:  # busd inherits our stderr: point fd 2 at a pipe just while it is spawned
            os.dup2(write_fd, 2)
            local = start_bus("busd", LOCAL_POLICY, config_text=SYSTEM_CONFIG, args=args)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(write_fd)
        logs = LineWatcher(os.fdopen(read_fd, errors="replace"))
        try:
            os.chmod(local.workdir, 0o755)  # mkdtemp made it 0700: nobody must reach the socket
            logs.wait_for(CONNECTED, TIMEOUT)
            yield up, local, logs
        finally:
            local.stop()
            lines = logs.wait_eof()
            crashes = [line for line in lines if "Traceback" in line or "Exception in" in line]
            assert not crashes, "\n".join(lines)
    finally:
        up.stop()


@contextmanager
def upstream_caller_of(up, local, name: str) -> Iterator[tuple]:
    """(local service owning `name`, upstream client, the call it made to `name`, its serial, its stand-in here)."""
    with RawClient(local.address) as service, RawClient(up.address) as caller:
        assert service.request_name(name) == 1
        wait_owned(caller, name)
        serial = caller.call(name, "/", RAW, "Register")
        call = service.wait_call("Register")
        yield service, caller, call, serial, call.sender


# ---------------------------------------------------------------- the attack (run as uid nobody)

def address_stand_in(channel, address: str, stand_in: str, imported: str) -> None:
    """#9: send to the stand-in of an upstream caller: a signal, a call expecting nothing, a call; then use an
    imported name, by its name and by its owner's unique name (both must cross)."""
    with RawClient(address) as client:
        client.send(SIGNAL, destination=stand_in, path="/", interface=RAW, member="Forged")
        client.call(stand_in, "/", INTROSPECTABLE, "Introspect", flags=NO_REPLY_EXPECTED)
        hijack = client.call_wait(stand_in, "/", INTROSPECTABLE, "Introspect", timeout=TIMEOUT)
        by_name = client.call_wait(imported, SERVICE_PATH, SERVICE_INTERFACE, "Echo", "s", ["by-name"])
        owner = client.driver_value("GetNameOwner", "s", [imported])
        by_owner = client.call_wait(owner, SERVICE_PATH, SERVICE_INTERFACE, "Echo", "s", ["by-owner"])
    channel.say(f"result name={client.unique_name} hijack={hijack.error_name or 'answered'} "
                f"by_name={by_name.error_name or by_name.value()} by_owner={by_owner.error_name or by_owner.value()}")


# ---------------------------------------------------------------- tests

@pytest.mark.live
def test_a_local_user_cannot_reach_an_upstream_caller_through_its_stand_in() -> None:
    with bridged_system_bus() as (up, local, logs):
        imported = Service(up, UP_SVC)
        try:
            with RawClient(local.address) as observer:
                wait_owned(observer, UP_SVC)
            with upstream_caller_of(up, local, DOWN_SVC) as (service, caller, call, serial, stand_in):
                bystander = Bystander(local)
                with attack(local, address_stand_in, stand_in, UP_SVC) as attacker:
                    result = attacker.result()
                summary = bystander.check()
                # What may reach the caller still does: the answer to its call, and its service's signal.
                service.reply(call, "s", ["registered"])
                assert caller.reply_to(serial).value() == "registered"
                service.emit("/", RAW, "Done", destination=stand_in)
                caller.wait_signal("Done", TIMEOUT)  # sent after the attacker left: what it sent came first
                leaked = [m.brief() for m in caller.drain() if m.member in ("Forged", "Introspect")]
        finally:
            imported.stop()
    # busd has stopped: every line it logged is in `logs`.
    report = f"attacker {result}; {summary}; reached the upstream caller: {leaked}"
    assert leaked == [], report
    assert result["hijack"] == SERVICE_UNKNOWN, report
    assert (result["by_name"], result["by_owner"]) == ("by-name", "by-owner"), report
    # One line names the attacker and why; its three messages to the stand-in do not make three.
    refusals = [line for line in logs.lines if re.search(rf"bridge: refusing .*sender={re.escape(result['name'])}\b",
                                                         line)]
    assert len(refusals) == 1, (report, logs.lines)


@pytest.mark.live
def test_local_rules_for_root_do_not_apply_to_upstream_callers() -> None:
    """A stand-in is not root: <policy user="root"> rules pass root's own calls and refuse the upstream caller's;
    services asking who called get no uid (busd/bridge/mirror.py says why the upstream bus's word is not taken)."""
    with bridged_system_bus() as (up, local, logs):
        with RawClient(local.address) as owner, RawClient(up.address) as caller:
            assert owner.request_name(ROOT_ONLY) == 1
            wait_owned(caller, ROOT_ONLY)
            with RawClient(local.address) as root:
                serial = root.call(ROOT_ONLY, "/", RAW, "FromRoot")
                owner.reply(owner.wait_call("FromRoot"))
                assert root.reply_to(serial).error_name is None  # the rule is in force for root here
            denied = caller.call_wait(ROOT_ONLY, "/", RAW, "FromUpstream")
            assert denied.error_name == "org.freedesktop.DBus.Error.AccessDenied", denied.body
        with upstream_caller_of(up, local, DOWN_SVC) as (service, caller, call, serial, stand_in):
            assert service.driver_error("GetConnectionUnixUser", "s", [stand_in]) == \
                "org.freedesktop.DBus.Error.Failed"
            assert service.driver_value("GetConnectionCredentials", "s", [stand_in]) == {}
            service.reply(call)
            assert caller.reply_to(serial).error_name is None
