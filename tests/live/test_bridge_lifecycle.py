"""Live tests of the bridge's life: the upstream down at start and restarted mid-run, two busd bridged, the XML
configuration and its reload, and settings busd refuses before it starts."""

import os
import subprocess
import sys

import pytest

from buses import SESSION_CONFIG, start_bus
from busclient import DBUS, DBUS_PATH, RawClient, start_bus_logged
from busd.wire.message import ERROR, METHOD_RETURN
from test_bridge_live import (CONNECTED, DOWN, SERVICE_INTERFACE, SERVICE_PATH, TIMEOUT, UP, Bridged,
                              bridge_properties, service_seen_from, through_bridge, wait_owned)

UP_SVC = f"{UP}.Restarted"
UP_SLOW = f"{UP}.Slow"
DOWN_KEPT = f"{DOWN}.Kept"
RAW_INTERFACE = "dev.busd.Test.Raw"
NO_REPLY = "org.freedesktop.DBus.Error.NoReply"


def config_listening_on(path: str, extra: str = "") -> str:
    return SESSION_CONFIG.replace("{socket}", path).replace("{extra}", extra)


@pytest.mark.live
def test_the_upstream_down_at_start_then_restarted_mid_run(tmp_path):
    socket_path = str(tmp_path / "upstream")
    address = f"unix:path={socket_path}"  # no guid=: a restarted bus has a new one
    local, logs = start_bus_logged("busd", args=(f"--upstream={address}", f"--import={UP}.*", f"--export={DOWN}.*",
                                                 "--log-level=info"))
    services: list = []
    try:
        logs.wait_for(r"bridge: cannot connect to upstream .*retrying with backoff", TIMEOUT)
        with RawClient(local.address) as observer, RawClient(local.address) as exporter, \
                RawClient(local.address) as subscriber, RawClient(local.address) as caller:
            state = bridge_properties(observer)
            assert state["Connected"] is False and state["LastError"]
            assert exporter.request_name(DOWN_KEPT) == 1
            subscriber.add_match(f"type='signal',sender='{UP_SVC}',member='Said'")

            up = start_bus("dbus-daemon", config_text=config_listening_on(socket_path))
            logs.wait_for(CONNECTED, TIMEOUT)
            services.append(service_seen_from(local, up, UP_SVC))
            with RawClient(up.address) as up_observer:
                wait_owned(up_observer, DOWN_KEPT)  # exported once connected
            slow = RawClient(up.address)
            assert slow.request_name(UP_SLOW) == 1
            wait_owned(observer, UP_SLOW)
            waiting = caller.call(UP_SLOW, "/", RAW_INTERFACE, "Hang")
            slow.wait_call("Hang")

            up.stop()  # mid-call
            slow.close()
            answer = caller.reply_to(waiting, TIMEOUT)
            assert (answer.type, answer.error_name) == (ERROR, NO_REPLY)
            logs.wait_for(r"bridge: lost upstream", TIMEOUT)
            wait_owned(observer, UP_SVC, owned=False)
            assert bridge_properties(observer)["Connected"] is False
            # busd keeps serving its own clients, and its own names stay.
            assert observer.driver_value("GetNameOwner", "s", [DOWN_KEPT]) == exporter.unique_name

            up = start_bus("dbus-daemon", config_text=config_listening_on(socket_path))
            logs.wait_for(CONNECTED, TIMEOUT)
            with RawClient(up.address) as up_observer:
                wait_owned(up_observer, DOWN_KEPT)  # the export is restored
            services.append(service_seen_from(local, up, UP_SVC))  # the import is back
            # The subscription is restored: the signal reaches the subscriber who asked before the restart.
            through_bridge(subscriber, UP_SVC)
            subscriber.call_wait(UP_SVC, SERVICE_PATH, SERVICE_INTERFACE, "Emit", "s", ["after the restart"])
            assert subscriber.wait_signal("Said", TIMEOUT).body == ["after the restart"]
            assert bridge_properties(observer)["Connects"] == 2
            up.stop()
    finally:
        for service in services:
            service.stop()
        local.stop()


@pytest.mark.live
def test_a_bridge_between_two_busd_instances():
    up = start_bus("busd")
    bridged = Bridged(up)
    imported, exported = f"{UP}.Raw", f"{DOWN}.Raw"
    try:
        with RawClient(up.address) as up_service, RawClient(up.address) as up_client, \
                RawClient(bridged.local.address) as local_service, RawClient(bridged.local.address) as local_client:
            assert up_service.request_name(imported) == 1
            assert local_service.request_name(exported) == 1
            wait_owned(local_client, imported)
            wait_owned(up_client, exported)
            # Calls both ways, answered by raw services.
            for client, service, name in ((local_client, up_service, imported), (up_client, local_service, exported)):
                serial = client.call(name, "/", RAW_INTERFACE, "Ask", "s", [f"to {name}"])
                call = service.wait_call("Ask")
                assert call.body == [f"to {name}"]
                service.reply(call, "s", [f"from {name}"])
                assert client.reply_to(serial).value() == f"from {name}"
            # Signals both ways.
            local_client.add_match(f"type='signal',sender='{imported}',member='Note'")
            up_client.add_match(f"type='signal',sender='{exported}',member='Note'")
            serial = local_client.call(imported, "/", RAW_INTERFACE, "Barrier")  # see through_bridge()
            up_service.reply(up_service.wait_call("Barrier"))
            assert local_client.reply_to(serial).type == METHOD_RETURN
            up_service.emit("/", RAW_INTERFACE, "Note", "s", ["down"])
            local_service.emit("/", RAW_INTERFACE, "Note", "s", ["up"])
            assert local_client.wait_signal("Note", TIMEOUT).body == ["down"]
            assert up_client.wait_signal("Note", TIMEOUT).body == ["up"]
            # Upstream busd holds the bridge's subscription for the local rule.
            bridge = bridge_properties(local_client)["UpstreamUniqueName"]
            rules = up_client.call_wait(DBUS, DBUS_PATH, "org.freedesktop.DBus.Debug.Stats",
                                        "GetAllMatchRules").value()
            assert any(f"sender='{imported}'" in rule for rule in rules[bridge])
            # A call to the bridge's own name upstream reaches the one local service it exports for.
            serial = up_client.call(bridge, "/", RAW_INTERFACE, "Direct")
            call = local_service.wait_call("Direct")
            local_service.reply(call, "s", ["direct"])
            assert up_client.reply_to(serial).value() == "direct"
    finally:
        bridged.stop()
        up.stop()


TCP_CONFIG = SESSION_CONFIG.replace("unix:path={socket}", "tcp:host=127.0.0.1,port=0").replace(
    "<auth>EXTERNAL</auth>", "<auth>DBUS_COOKIE_SHA1</auth>")


@pytest.mark.live
def test_a_bridge_over_tcp_carries_calls_but_no_fds():
    up = start_bus("dbus-daemon", config_text=TCP_CONFIG)
    assert up.address.startswith("tcp:")
    bridged = Bridged(up)
    name = f"{UP}.Tcp"
    try:
        with RawClient(up.address, mechanisms=("DBUS_COOKIE_SHA1",)) as service, \
                RawClient(bridged.local.address) as caller:
            assert service.request_name(name) == 1
            wait_owned(caller, name)
            serial = caller.call(name, "/", RAW_INTERFACE, "Ask", "s", ["over tcp"])
            call = service.wait_call("Ask")
            service.reply(call, "s", [call.body[0]])
            assert caller.reply_to(serial).value() == "over tcp"
            read_end, write_end = os.pipe()
            try:
                reply = caller.call_wait(name, "/", RAW_INTERFACE, "TakeFd", "h", [0], fds=[read_end])
            finally:
                os.close(read_end)
                os.close(write_end)
            assert reply.error_name == "org.freedesktop.DBus.Error.NotSupported"
            assert bridge_properties(caller)["Upstream"] == up.address
    finally:
        bridged.stop()
        up.stop()


BRIDGE_ELEMENT = """<busd:bridge xmlns:busd="https://busd.dev/config" upstream="{upstream}">
    <busd:import name="{imports}"/>
    <busd:export name="{DOWN}.*"/>
  </busd:bridge>"""

BUSD_ONLY_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <include>{stock}</include>
  {bridge}
</busconfig>
"""


@pytest.mark.live
def test_the_xml_bridge_lives_in_a_busd_only_file_that_includes_the_stock_one(tmp_path, reference_bus):
    stock = tmp_path / "stock.conf"
    stock.write_text(config_listening_on(str(tmp_path / "local")))
    element = BRIDGE_ELEMENT.replace("{upstream}", reference_bus.address).replace("{DOWN}", DOWN)
    # dbus-daemon refuses elements it does not know, whatever their namespace: the stock file must not have one.
    inline = tmp_path / "inline.conf"
    inline.write_text(config_listening_on(str(tmp_path / "inline"), element.replace("{imports}", f"{UP}.*")))
    refused = subprocess.run(["dbus-daemon", f"--config-file={inline}", "--nofork", "--print-address"],
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert refused.returncode != 0 and "not allowed inside <busconfig>" in refused.stderr
    top = tmp_path / "busd.conf"
    top.write_text(BUSD_ONLY_CONFIG.replace("{stock}", str(stock)).replace(
        "{bridge}", element.replace("{imports}", f"{UP}.First")))
    local, logs = start_bus_logged("busd", args=(f"--config-file={top}", "--log-level=info"))
    # start_bus_logged wrote its own config; --config-file given again wins (argparse keeps the last).
    try:
        logs.wait_for(CONNECTED, TIMEOUT)
        with RawClient(local.address) as client:
            state = bridge_properties(client)
            assert (state["ImportPatterns"], state["ExportPatterns"]) == ([f"{UP}.First"], [f"{DOWN}.*"])
            # ReloadConfig with other imports restarts the bridge on the new settings.
            top.write_text(BUSD_ONLY_CONFIG.replace("{stock}", str(stock)).replace(
                "{bridge}", element.replace("{imports}", f"{UP}.Second")))
            client.call_driver("ReloadConfig").value()
            logs.wait_for(r"bridge: configuration changed; restarting the bridge", TIMEOUT)
            logs.wait_for(CONNECTED, TIMEOUT)
            assert bridge_properties(client)["ImportPatterns"] == [f"{UP}.Second"]
            # A reload that breaks the bridge element fails and keeps the running bridge.
            top.write_text(BUSD_ONLY_CONFIG.replace("{stock}", str(stock)).replace(
                "{bridge}", element.replace("{imports}", ":1.5")))
            reply = client.call_driver("ReloadConfig")
            assert reply.type == ERROR and "unique names cannot cross" in reply.body[0]
            assert bridge_properties(client)["ImportPatterns"] == [f"{UP}.Second"]
    finally:
        local.stop()


@pytest.mark.live
def test_the_session_upstream_is_the_environments_and_never_busd_itself(tmp_path, reference_bus, monkeypatch):
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", reference_bus.address)
    local, logs = start_bus_logged("busd", args=("--upstream=session", f"--import={UP}.*", "--log-level=info"))
    try:
        logs.wait_for(CONNECTED, TIMEOUT)
        with RawClient(local.address) as client:
            assert bridge_properties(client)["Upstream"] == reference_bus.address
    finally:
        local.stop()
    own_socket = str(tmp_path / "self")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={own_socket}")
    local, logs = start_bus_logged("busd", args=("--upstream=session", f"--import={UP}.*",
                                                 f"--address=unix:path={own_socket}"))
    try:
        logs.wait_for(r"bridge: cannot connect to upstream .* is this bus itself", TIMEOUT)
    finally:
        local.stop()


def busd_refuses(*args: str) -> str:
    command = [sys.executable, "-m", "busd", "--print-address", "--address=unix:path=/nonexistent/never", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result
    assert result.stdout == ""
    return result.stderr


@pytest.mark.parametrize("args, complaint", [
    (("--import=dev.busd.Up.Svc",), "--import and --export need --upstream"),
    (("--upstream=unixexec:path=/bin/true", "--import=dev.busd.X"), "no address the bridge can connect to"),
    (("--upstream=nonsense", "--import=dev.busd.X"), "is not a D-Bus address"),
    (("--upstream=session", "--import=:1.5"), "unique names cannot cross"),
    (("--upstream=session", "--export=dev.*.X"), "is not a well-known bus name"),
    (("--upstream=session", "--export=org.freedesktop.DBus"), "belongs to each bus itself"),
])
def test_busd_refuses_a_bridge_that_cannot_work_before_it_starts(args, complaint):
    stderr = busd_refuses(*args)
    assert "busd: invalid bridge configuration:" in stderr and complaint in stderr, stderr


def test_busd_refuses_two_bridge_elements(tmp_path):
    element = BRIDGE_ELEMENT.replace("{upstream}", "session").replace("{imports}", f"{UP}.*").replace(
        "{DOWN}", DOWN)
    config = tmp_path / "two.conf"
    config.write_text(config_listening_on(str(tmp_path / "s"), element + element))
    stderr = busd_refuses(f"--config-file={config}")
    assert f"{config}:" in stderr and "only one <busd:bridge> is supported" in stderr, stderr
