"""busdctl policy check and dump, online (dev.busd.Policy1) and offline (--config-file), against what the bus does.

Each case sends a real message to a running busd and asks busdctl about the
same message both ways: the verdict and the deciding rule's file:line must be
the ones the bus used (its AccessDenied text names the rule). Audit mode lets
a denied message through, logs "would deny", counts it in the metrics and
makes busdctl status warn.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus

from buses import START_TIMEOUT, start_bus

pytestmark = [pytest.mark.live,
              pytest.mark.skipif(os.geteuid() != 0, reason="dev.busd.Policy1 answers root and the bus's user; "
                                                            "the stock system.conf drops privileges")]

STOCK = "/usr/share/dbus-1/system.conf"
TIMEOUT = 30
SERVICE = "org.example.Guarded"
SECRET = '<policy user="root"><deny send_interface="org.example.Secret" send_member="Read"/></policy>'


def busdctl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "busdctl", *args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)


def check(where: list[str], *fields: str) -> dict:
    """busdctl policy check --json; its exit status must agree with the verdict."""
    result = busdctl("policy", "check", "--json=short", *where, *fields)
    assert result.returncode in (0, 1), result.stderr
    answer = json.loads(result.stdout)
    assert result.returncode == (0 if answer["allowed"] else 1)
    return answer


async def send(address: str, **fields) -> Message:
    bus = await MessageBus(bus_address=address).connect()
    try:
        return await asyncio.wait_for(bus.call(Message(**fields)), TIMEOUT)
    finally:
        bus.disconnect()


def denied_by(reply: Message) -> str | None:
    """The file:line an AccessDenied names, None if the call was not denied."""
    if reply.message_type != MessageType.ERROR:
        return None
    assert reply.error_name == "org.freedesktop.DBus.Error.AccessDenied", reply.body
    return re.search(r"\(([^()]+:\d+)\)\)$", reply.body[0]).group(1)


@pytest.fixture(scope="module")
def stock_bus():
    """busd on the stock system.conf (it drops to messagebus), on a socket of the test's own."""
    if not os.path.exists(STOCK):
        pytest.skip(f"{STOCK} is not installed")
    workdir = tempfile.mkdtemp(prefix="busd-policy-")
    try:
        bus = start_bus("busd", config_text=f"<busconfig><include>{STOCK}</include>{LET_ROOT_ASK}</busconfig>",
                        args=(f"--address=unix:path={workdir}/bus",))
    except Exception:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    yield bus
    bus.stop()
    shutil.rmtree(workdir, ignore_errors=True)


DRIVER = ["--destination=org.freedesktop.DBus"]
# The stock policy lets nobody call the bus on interfaces it does not know, as for BecomeMonitor: an
# administrator allows root to ask (README: "A policy you can ask"); it changes no other rule's verdict.
LET_ROOT_ASK = ('<policy user="root"><allow send_destination="org.freedesktop.DBus" '
                'send_interface="dev.busd.Policy1"/></policy>')


@pytest.mark.parametrize("interface, member, signature, body", [
    ("org.freedesktop.DBus", "UpdateActivationEnvironment", "a{ss}", [{"A": "b"}]),  # denied for everyone
    ("org.freedesktop.DBus.Debug.Stats", "GetStats", "", []),  # the root policy allows it
    ("org.freedesktop.DBus", "GetId", "", []),  # anyone may talk to the bus
])
def test_stock_system_conf_online_and_offline_agree_with_the_bus(stock_bus, interface, member, signature, body):
    reply = asyncio.run(send(stock_bus.address, destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                             interface=interface, member=member, signature=signature, body=body))
    actual = denied_by(reply)
    fields = ["--uid=0", *DRIVER, f"--interface={interface}", f"--member={member}", "--path=/org/freedesktop/DBus"]
    online = check([f"--address={stock_bus.address}"], *fields)
    offline = check([f"--config-file={STOCK}"], *fields)
    for answer in (online, offline):
        assert answer["allowed"] == (actual is None)
        assert answer["decided_by"] == "send"
        if actual is not None:
            assert answer["origin"] == actual
        else:
            assert answer["origin"].startswith(STOCK + ":")
    assert online["origin"] == offline["origin"] and online["mode"] == offline["mode"] == "enforce"


def test_stock_dump_lists_contexts_in_evaluation_order(stock_bus):
    online = json.loads(busdctl("policy", "dump", "--json=short", f"--address={stock_bus.address}").stdout)
    offline = json.loads(busdctl("policy", "dump", "--json=short",
                                 f"--config-file={os.path.join(stock_bus.workdir, 'bus.conf')}").stdout)
    assert online == offline
    assert [c["context"] for c in offline][0] == "default" and offline[-1]["context"] == "mandatory"
    assert any(c["context"] == "user=0" for c in offline)
    anyone = '<allow user="*"/>'
    assert offline[0]["rules"][0] == {"kind": "user", "rule": anyone, "origin": f"{STOCK}:{_line_of(STOCK, anyone)}"}
    root = next(c for c in offline if c["context"] == "user=0")
    assert root["rules"][-1]["rule"].endswith('send_interface="dev.busd.Policy1"/>')  # included last, listed last


def _line_of(path: str, text: str) -> int:
    return next(n for n, line in enumerate(open(path), 1) if text in line)


def _service_and_call(address: str, member: str) -> tuple[Message, str]:
    async def run() -> tuple[Message, str]:
        service = await MessageBus(bus_address=address).connect()
        service.add_message_handler(lambda m: Message.new_method_return(m, "s", ["secret"])
                                    if m.message_type == MessageType.METHOD_CALL and m.member == member else None)
        await service.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                   interface="org.freedesktop.DBus", member="RequestName", signature="su",
                                   body=[SERVICE, 4]))
        try:
            reply = await send(address, destination=SERVICE, path="/", interface="org.example.Secret",
                               member=member)
            return reply, service.unique_name
        finally:
            service.disconnect()
    return asyncio.run(run())


def test_crafted_rule_online_and_offline_name_the_rule_the_bus_used() -> None:
    bus = start_bus("busd", extra_config=SECRET)
    try:
        config = os.path.join(bus.workdir, "bus.conf")
        line = next(n for n, text in enumerate(open(config), 1) if "org.example.Secret" in text)
        reply, _ = _service_and_call(bus.address, "Read")
        assert denied_by(reply) == f"{config}:{line}"
        fields = ["--uid=0", f"--destination={SERVICE}", "--interface=org.example.Secret", "--member=Read"]
        offline = check([f"--config-file={config}"], *fields)
        assert (offline["allowed"], offline["origin"]) == (False, f"{config}:{line}")
        allowed = check([f"--config-file={config}"], *fields[:-1], "--member=List", "--receiver-uid=0")
        assert allowed["allowed"] and allowed["decided_by"] == "receive"
        reply, _ = _service_and_call(bus.address, "List")
        assert reply.message_type == MessageType.METHOD_RETURN
        # online: nobody owns the name now, so only the send side is checked
        online = check([f"--address={bus.address}"], *fields)
        assert (online["allowed"], online["origin"]) == (False, f"{config}:{line}")
    finally:
        bus.stop()


AUDIT = ('<busd:policy xmlns:busd="https://busd.dev/config" mode="audit"/>' + SECRET)


def test_audit_mode_delivers_logs_counts_and_warns(tmp_path) -> None:
    stderr = open(tmp_path / "stderr", "w+")
    metrics = tmp_path / "metrics"
    config = tmp_path / "bus.conf"
    from buses import SESSION_CONFIG
    config.write_text(SESSION_CONFIG.replace("{socket}", str(tmp_path / "bus")).replace("{extra}", AUDIT))
    read_fd, write_fd = os.pipe()
    process = subprocess.Popen([sys.executable, "-m", "busd", f"--config-file={config}", "--nofork",
                                f"--print-address={write_fd}", f"--metrics=unix:path={metrics}"],
                               pass_fds=(write_fd,), stderr=stderr, stdin=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as reader:
            import select
            assert select.select([reader], [], [], START_TIMEOUT)[0], "no address"
            address = reader.readline().strip()
        reply, _ = _service_and_call(address, "Read")
        assert reply.message_type == MessageType.METHOD_RETURN and reply.body == ["secret"]
        status = busdctl("status", f"--address={address}", "--no-pager")
        assert status.returncode == 0 and "PolicyMode=audit" in status.stdout
        assert "audit mode" in status.stderr
        answer = check([f"--address={address}"], "--uid=0", f"--destination={SERVICE}",
                       "--interface=org.example.Secret", "--member=Read")
        assert not answer["allowed"] and answer["mode"] == "audit"  # what the rules say, not what audit lets by
        import socket
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(metrics))
            text = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
        assert re.search(r'busd_policy_audit_would_deny_total\{.*org\.example|rule="[^"]*bus\.conf:\d+"', text)
        assert "busd_policy_audit_mode 1.0" in text
    finally:
        process.terminate()
        process.wait(TIMEOUT)
    stderr.seek(0)
    log = stderr.read()
    assert "POLICY AUDIT MODE IS ON" in log
    assert re.search(r"policy audit: would deny .*member=Read.* by send rule <deny .*bus\.conf:\d+\)", log)
