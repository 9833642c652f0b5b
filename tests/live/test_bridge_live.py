"""Live tests of the bridge: a real dbus-daemon upstream, busd bridged to it, real clients on both sides.

Run as a script (`test_bridge_live.py --serve NAME...`) this module is the test
service: a dbus-next process on $DBUS_SESSION_BUS_ADDRESS that owns NAMEs and
serves SERVICE_INTERFACE at SERVICE_PATH.

Ordering, not sleeping: a local AddMatch is answered before the bridge's
upstream AddMatch is applied, but the bridge sends upstream in order over one
connection. So once a local call through the bridge has been answered, every
subscription asked for before it is in place upstream. `through_bridge()` is
that barrier.
"""

# No `from __future__ import annotations`: dbus-next reads D-Bus types from the annotations of the service.

import json
import os
import re
import subprocess
import sys

import pytest

from buses import RunningBus, start_bus
from busd.wire.message import METHOD_CALL, METHOD_RETURN, NO_REPLY_EXPECTED, SIGNAL
from busclient import DBUS, DBUS_PATH, LineWatcher, RawClient, start_bus_logged, watch_name

UP = "dev.busd.Up"  # imported: --import=dev.busd.Up.*
DOWN = "dev.busd.Down"  # exported: --export=dev.busd.Down.*
UP_SVC = f"{UP}.Svc"
DOWN_SVC = f"{DOWN}.Svc"
UP_PRIVATE = "dev.busd.Private.Up"  # owned upstream, never imported
DOWN_PRIVATE = "dev.busd.Private.Down"  # owned here, never exported
SERVICE_PATH = "/dev/busd/Test"
SERVICE_INTERFACE = "dev.busd.Test.Bridge"
BRIDGE_INTERFACE = "dev.busd.Bridge1"
PROPERTIES = "org.freedesktop.DBus.Properties"
SERVICE_UNKNOWN = "org.freedesktop.DBus.Error.ServiceUnknown"
CONNECTED = r"bridge: connected to upstream"
TIMEOUT = 10.0


# ---------------------------------------------------------------- the test service (this file as a script)

def make_interface():
    from dbus_next import DBusError
    from dbus_next.service import ServiceInterface, dbus_property, method, signal

    class BridgeTest(ServiceInterface):
        def __init__(self):
            super().__init__(SERVICE_INTERFACE)
            self.label = "initial"

        @method()
        def Echo(self, text: "s") -> "s":
            return text

        @method()
        def Fail(self, text: "s"):
            raise DBusError("dev.busd.Test.Error.Asked", text)

        @method()
        def ReadFd(self, fd: "h") -> "s":
            with os.fdopen(fd, "rb") as f:
                return f.read().decode()

        @method()
        def MakeFd(self, text: "s") -> "h":
            read_end, write_end = os.pipe()
            os.write(write_end, text.encode())
            os.close(write_end)
            return read_end

        @method()
        def Emit(self, text: "s"):
            self.Said(text)

        @signal()
        def Said(self, text) -> "s":
            return text

        @dbus_property()
        def Label(self) -> "s":
            return self.label

        @Label.setter
        def Label(self, value: "s"):
            self.label = value

    return BridgeTest()


async def serve(names: list) -> None:
    from dbus_next import RequestNameReply
    from dbus_next.aio import MessageBus
    bus = await MessageBus(bus_address=os.environ["DBUS_SESSION_BUS_ADDRESS"], negotiate_unix_fd=True).connect()
    bus.export(SERVICE_PATH, make_interface())
    for name in names:
        if await bus.request_name(name) != RequestNameReply.PRIMARY_OWNER:
            raise SystemExit(f"could not own {name}")
    print("ready", bus.unique_name, flush=True)
    await bus.wait_for_disconnect()


class Service:
    """A service process on `bus` owning `names`; `unique_name` is its connection's name there."""

    def __init__(self, bus: RunningBus, *names: str):
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", *names],
                                        env=bus.client_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True)
        self.output = LineWatcher(self.process.stdout)
        self.unique_name = self.output.wait_for(r"^ready ", TIMEOUT).split()[1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=TIMEOUT)


# ---------------------------------------------------------------- helpers shared with the other bridge tests

class Bridged:
    """An upstream bus and a busd bridged to it, with the busd's log lines."""

    def __init__(self, up: RunningBus, *extra_args: str, imports: tuple = (f"{UP}.*",),
                 exports: tuple = (f"{DOWN}.*",), local_config: str = ""):
        self.up = up
        args = [f"--upstream={up.address}", "--log-level=info", *extra_args]
        args += [f"--import={name}" for name in imports] + [f"--export={name}" for name in exports]
        self.local, self.logs = start_bus_logged("busd", local_config, args=tuple(args))
        try:
            self.logs.wait_for(CONNECTED, TIMEOUT)
        except BaseException:
            self.local.stop()
            raise

    def stop(self) -> list[str]:
        """Stop busd; its log lines, checked for crashes (an exception in a callback does not stop busd)."""
        self.local.stop()
        lines = self.logs.wait_eof()
        crashes = [line for line in lines if "Traceback" in line or "Exception in" in line]
        assert not crashes, "\n".join(lines)
        return lines


def bridge_properties(client: RawClient) -> dict:
    reply = client.call_wait(DBUS, DBUS_PATH, PROPERTIES, "GetAll", "s", [BRIDGE_INTERFACE])
    return {key: variant.value for key, variant in reply.value().items()}


def name_owner_changed(name: str, owned: bool):
    return lambda m: (m.is_signal("NameOwnerChanged") and m.sender == DBUS and m.body[0] == name
                      and bool(m.body[2]) == owned)


def wait_owned(client: RawClient, name: str, owned: bool = True) -> None:
    """Wait until `name` has an owner on `client`'s bus (or none): asks first, then waits for the change."""
    watch_name(client, name)
    if client.driver_value("NameHasOwner", "s", [name]) != owned:
        client.wait_for(name_owner_changed(name, owned), TIMEOUT, f"{name} {'owned' if owned else 'gone'}")


def through_bridge(client: RawClient, name: str = UP_SVC) -> None:
    """A call through the bridge and its answer: everything the bridge sent upstream before it has arrived."""
    assert client.call_wait(name, SERVICE_PATH, SERVICE_INTERFACE, "Echo", "s", ["barrier"]).value() == "barrier"


def upstream_rules_of(up: RawClient, connection: str) -> list:
    """The match rules `connection` holds on the upstream dbus-daemon (Debug.Stats)."""
    rules = up.call_wait(DBUS, DBUS_PATH, "org.freedesktop.DBus.Debug.Stats", "GetAllMatchRules").value()
    return rules.get(connection, [])


def tool(bus: RunningBus, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), env=bus.client_env(), capture_output=True, text=True, timeout=TIMEOUT,
                            stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, f"{argv} exited with {result.returncode}: {result.stderr}"
    return result


def pipe_with(text: str) -> int:
    read_end, write_end = os.pipe()
    os.write(write_end, text.encode())
    os.close(write_end)
    return read_end


def read_fd(fd: int) -> str:
    with os.fdopen(fd, "rb") as f:
        return f.read().decode()


# ---------------------------------------------------------------- fixtures: one bridged pair per module

@pytest.fixture(scope="module")
def pair():
    up = start_bus("dbus-daemon")
    try:
        bridged = Bridged(up)
    except BaseException:
        up.stop()
        raise
    yield bridged
    bridged.stop()
    up.stop()


def service_seen_from(seen_from: RunningBus, runs_on: RunningBus, *names: str) -> Service:
    """A Service on `runs_on` owning `names`, once the first of them has an owner on `seen_from` too."""
    service = Service(runs_on, *names)
    with RawClient(seen_from.address) as observer:
        wait_owned(observer, names[0])
    return service


@pytest.fixture(scope="module")
def up_service(pair):
    """A service upstream owning UP_SVC (imported) and UP_PRIVATE (not), once UP_SVC is visible here."""
    service = service_seen_from(pair.local, pair.up, UP_SVC, UP_PRIVATE)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def down_service(pair):
    """A service here owning DOWN_SVC (exported) and DOWN_PRIVATE (not), once DOWN_SVC is visible upstream."""
    service = service_seen_from(pair.up, pair.local, DOWN_SVC, DOWN_PRIVATE)
    yield service
    service.stop()


@pytest.fixture
def local(pair):
    with RawClient(pair.local.address) as client:
        yield client


@pytest.fixture
def upstream(pair):
    with RawClient(pair.up.address) as client:
        yield client


# ---------------------------------------------------------------- imports

@pytest.mark.live
def test_an_imported_name_is_owned_here_by_a_stand_in(pair, up_service, local):
    owner = local.driver_value("GetNameOwner", "s", [UP_SVC])
    assert owner.startswith(":")
    assert local.driver_value("NameHasOwner", "s", [UP_SVC]) is True
    names = local.driver_value("ListNames")
    assert UP_SVC in names and UP_PRIVATE not in names
    # The stand-in is a process on another bus: no credentials here (busd/bridge/mirror.py says why).
    assert local.driver_error("GetConnectionUnixProcessID", "s", [owner]) == \
        "org.freedesktop.DBus.Error.UnixProcessIdUnknown"
    assert local.driver_error("GetConnectionUnixUser", "s", [owner]) == "org.freedesktop.DBus.Error.Failed"
    assert local.driver_value("GetConnectionCredentials", "s", [owner]) == {}


@pytest.mark.live
def test_busctl_and_gdbus_here_call_a_service_upstream(pair, up_service):
    local = pair.local
    out = tool(local, "busctl", f"--address={local.address}", "call", UP_SVC, SERVICE_PATH, SERVICE_INTERFACE,
               "Echo", "s", "through the bridge").stdout
    assert out.strip() == 's "through the bridge"'
    out = tool(local, "gdbus", "call", "--address", local.address, "--dest", UP_SVC, "--object-path",
               SERVICE_PATH, "--method", f"{SERVICE_INTERFACE}.Echo", "gdbus too").stdout
    assert out.strip() == "('gdbus too',)"
    failed = tool(local, "gdbus", "call", "--address", local.address, "--dest", UP_SVC, "--object-path",
                  SERVICE_PATH, "--method", f"{SERVICE_INTERFACE}.Fail", "on purpose", check=False)
    assert failed.returncode != 0
    assert "dev.busd.Test.Error.Asked: on purpose" in failed.stderr


@pytest.mark.live
def test_busctl_and_gdbus_upstream_call_a_service_here(pair, down_service):
    up = pair.up
    out = tool(up, "busctl", f"--address={up.address}", "call", DOWN_SVC, SERVICE_PATH, SERVICE_INTERFACE,
               "Echo", "s", "exported").stdout
    assert out.strip() == 's "exported"'
    out = tool(up, "gdbus", "call", "--address", up.address, "--dest", DOWN_SVC, "--object-path",
               SERVICE_PATH, "--method", f"{SERVICE_INTERFACE}.Echo", "from upstream").stdout
    assert out.strip() == "('from upstream',)"
    failed = tool(up, "busctl", f"--address={up.address}", "call", DOWN_SVC, SERVICE_PATH, SERVICE_INTERFACE,
                  "Fail", "s", "exported failure", check=False)
    assert failed.returncode == 1 and "exported failure" in failed.stderr


@pytest.mark.live
def test_errors_cross_with_their_name_and_text(pair, up_service, down_service, local, upstream):
    reply = local.call_wait(UP_SVC, SERVICE_PATH, SERVICE_INTERFACE, "Fail", "s", ["upstream said no"])
    assert (reply.error_name, reply.body) == ("dev.busd.Test.Error.Asked", ["upstream said no"])
    assert reply.sender == local.driver_value("GetNameOwner", "s", [UP_SVC])
    reply = upstream.call_wait(DOWN_SVC, SERVICE_PATH, SERVICE_INTERFACE, "Fail", "s", ["local said no"])
    assert (reply.error_name, reply.body) == ("dev.busd.Test.Error.Asked", ["local said no"])
    reply = upstream.call_wait(DOWN_SVC, SERVICE_PATH, SERVICE_INTERFACE, "NoSuchMethod")
    assert reply.error_name == "org.freedesktop.DBus.Error.UnknownMethod"


@pytest.mark.live
def test_introspection_and_properties_cross_both_ways(pair, up_service, down_service):
    for bus, name in ((pair.local, UP_SVC), (pair.up, DOWN_SVC)):
        xml = tool(bus, "gdbus", "introspect", "--address", bus.address, "--dest", name, "--object-path",
                   SERVICE_PATH, "--xml").stdout
        assert f'<interface name="{SERVICE_INTERFACE}">' in xml and '<method name="MakeFd">' in xml
        assert re.search(r'<property name="Label" type="s" access="readwrite"\s*/?>', xml)
        listing = tool(bus, "busctl", f"--address={bus.address}", "introspect", name, SERVICE_PATH,
                       SERVICE_INTERFACE).stdout
        assert re.search(r"^\.Label\s+property\s+s\s", listing, re.M), listing
        tool(bus, "busctl", f"--address={bus.address}", "set-property", name, SERVICE_PATH, SERVICE_INTERFACE,
             "Label", "s", f"set via {bus.kind}")
        got = tool(bus, "busctl", f"--address={bus.address}", "get-property", name, SERVICE_PATH,
                   SERVICE_INTERFACE, "Label").stdout
        assert got.strip() == f's "set via {bus.kind}"'


@pytest.mark.live
def test_fds_cross_both_ways(pair, up_service, down_service, local, upstream):
    for client, name in ((local, UP_SVC), (upstream, DOWN_SVC)):
        assert client.unix_fd
        fd = pipe_with(f"sent to {name}")
        try:
            reply = client.call_wait(name, SERVICE_PATH, SERVICE_INTERFACE, "ReadFd", "h", [0], fds=[fd])
        finally:
            os.close(fd)
        assert reply.value() == f"sent to {name}"
        reply = client.call_wait(name, SERVICE_PATH, SERVICE_INTERFACE, "MakeFd", "s", [f"made by {name}"])
        assert reply.signature == "h" and len(reply.fds) == 1
        assert read_fd(reply.fds.pop()) == f"made by {name}"


# ---------------------------------------------------------------- signals

@pytest.mark.live
def test_upstream_signals_reach_local_subscribers_and_the_subscription_follows_local_rules(
        pair, up_service, local, upstream):
    bridge_name = bridge_properties(local)["UpstreamUniqueName"]
    rule = f"type='signal',sender='{UP_SVC}',interface='{SERVICE_INTERFACE}',member='Said'"
    assert not any(UP_SVC in r for r in upstream_rules_of(upstream, bridge_name))
    with RawClient(pair.local.address) as second:
        local.add_match(rule)
        second.add_match(rule)
        through_bridge(local)
        held = [r for r in upstream_rules_of(upstream, bridge_name) if f"sender='{UP_SVC}'" in r]
        assert len(held) == 1, held  # two local rules, one upstream subscription
        assert bridge_properties(local)["Subscriptions"][held[0]] == 2

        local.call_wait(UP_SVC, SERVICE_PATH, SERVICE_INTERFACE, "Emit", "s", ["hello subscribers"])
        owner = local.driver_value("GetNameOwner", "s", [UP_SVC])
        for client in (local, second):
            signal = client.wait_signal("Said", TIMEOUT)
            assert (signal.sender, signal.path, signal.body) == (owner, SERVICE_PATH, ["hello subscribers"])
    # `second` disconnected: its share goes; RemoveMatch of the last local rule drops the upstream one.
    through_bridge(local)
    assert bridge_properties(local)["Subscriptions"].get(held[0]) == 1
    local.call_driver("RemoveMatch", "s", [rule]).value()
    through_bridge(local)
    assert not any(UP_SVC in r for r in upstream_rules_of(upstream, bridge_name))
    assert held[0] not in bridge_properties(local)["Subscriptions"]


@pytest.mark.live
def test_gdbus_monitor_here_sees_an_upstream_signal_and_upstream_sees_ours(pair, up_service, down_service, local):
    for bus, name, trigger in ((pair.local, UP_SVC, pair.local), (pair.up, DOWN_SVC, pair.up)):
        monitor = subprocess.Popen(["gdbus", "monitor", "--address", bus.address, "--dest", name],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   text=True)
        output = LineWatcher(monitor.stdout)
        try:
            # gdbus subscribes before it watches the name, so once it reports the owner its rule is in place.
            output.wait_for(rf"The name {re.escape(name)} is owned by", TIMEOUT)
            with RawClient(trigger.address) as client:
                if bus is pair.local:
                    through_bridge(client)
                client.call_wait(name, SERVICE_PATH, SERVICE_INTERFACE, "Emit", "s", [f"seen on {bus.kind}"])
            output.wait_for(rf"{SERVICE_INTERFACE}\.Said \('seen on {bus.kind}',\)", TIMEOUT)
        finally:
            monitor.terminate()
            monitor.wait(timeout=TIMEOUT)


@pytest.mark.live
def test_each_upstream_owner_has_its_own_stand_in(pair, local):
    first, second = f"{UP}.First", f"{UP}.Second"
    one, two = service_seen_from(pair.local, pair.up, first), service_seen_from(pair.local, pair.up, second)
    try:
        owners = {name: local.driver_value("GetNameOwner", "s", [name]) for name in (first, second)}
        assert owners[first] != owners[second]
        # A rule for one sender does not take the other's signals, as upstream.
        local.add_match(f"type='signal',sender='{first}',member='Said'")
        through_bridge(local, first)
        local.call_wait(second, SERVICE_PATH, SERVICE_INTERFACE, "Emit", "s", ["from second"])
        local.call_wait(first, SERVICE_PATH, SERVICE_INTERFACE, "Emit", "s", ["from first"])
        signal = local.wait_signal("Said", TIMEOUT)
        assert (signal.sender, signal.body) == (owners[first], ["from first"])
    finally:
        one.stop()
        two.stop()
    # Gone upstream, gone here.
    wait_owned(local, first, owned=False)
    wait_owned(local, second, owned=False)


@pytest.mark.live
def test_a_signal_upstream_addresses_to_the_bridge_reaches_local_subscribers(pair, local):
    """Like a portal's Response: the service answers the bridge's connection, local rules pick who gets it."""
    name = f"{UP}.Portal"
    with RawClient(pair.up.address) as service:
        assert service.request_name(name) == 1
        wait_owned(local, name)
        local.add_match(f"type='signal',sender='{name}',member='Response'")
        serial = local.call(name, "/request/1", "dev.busd.Test.Raw", "Ask")
        call = service.wait_call("Ask")  # from the bridge's connection, the local caller's stand-in upstream
        service.emit("/request/1", "dev.busd.Test.Raw", "Response", "u", [0], destination=call.sender)
        service.reply(call)
        signal = local.wait_signal("Response", TIMEOUT)
        assert (signal.path, signal.body, signal.destination) == ("/request/1", [0], None)
        assert local.reply_to(serial).type == METHOD_RETURN


# ---------------------------------------------------------------- exports

@pytest.mark.live
def test_an_exported_name_comes_and_goes_upstream_with_its_local_owner(pair, upstream):
    name = f"{DOWN}.Transient"
    watch_name(upstream, name)
    with RawClient(pair.local.address) as owner:
        assert owner.request_name(name) == 1
        upstream.wait_for(name_owner_changed(name, True), TIMEOUT, f"{name} exported")
        assert owner.release_name(name) == 1
        upstream.wait_for(name_owner_changed(name, False), TIMEOUT, f"{name} released")
        assert owner.request_name(name) == 1
        upstream.wait_for(name_owner_changed(name, True), TIMEOUT, f"{name} exported again")
    upstream.wait_for(name_owner_changed(name, False), TIMEOUT, f"{name} gone with its owner")


@pytest.mark.live
def test_an_upstream_caller_appears_here_and_leaving_is_seen(pair, local):
    name = f"{DOWN}.Watcher"
    with RawClient(pair.local.address) as service, RawClient(pair.up.address) as caller:
        assert service.request_name(name) == 1
        wait_owned(caller, name)
        serial = caller.call(name, "/", "dev.busd.Test.Raw", "Hi")
        call = service.wait_call("Hi")
        stand_in = call.sender
        assert stand_in.startswith(":") and stand_in not in (caller.unique_name, local.unique_name)
        service.reply(call, "s", ["hello"])
        assert caller.reply_to(serial).value() == "hello"
        watch_name(local, stand_in)
        assert local.driver_value("NameHasOwner", "s", [stand_in])
    local.wait_for(name_owner_changed(stand_in, False), TIMEOUT, f"{stand_in} leaving")


@pytest.mark.live
def test_an_upstream_caller_gets_noreply_when_the_local_service_leaves_without_answering(pair):
    name = f"{DOWN}.Quitter"
    with RawClient(pair.up.address) as caller:
        with RawClient(pair.local.address) as service:
            assert service.request_name(name) == 1
            wait_owned(caller, name)
            serial = caller.call(name, "/", "dev.busd.Test.Raw", "Wait")
            service.wait_call("Wait")
        answer = caller.reply_to(serial, TIMEOUT)
        assert answer.error_name == "org.freedesktop.DBus.Error.NoReply"


@pytest.mark.live
def test_a_local_service_may_call_back_its_upstream_caller(pair):
    name = f"{DOWN}.Callback"
    with RawClient(pair.local.address) as service, RawClient(pair.up.address) as caller:
        assert service.request_name(name) == 1
        wait_owned(caller, name)
        serial = caller.call(name, "/", "dev.busd.Test.Raw", "Register")
        call = service.wait_call("Register")
        back = service.call(call.sender, "/client", "dev.busd.Test.Raw", "Notify", "s", ["called back"])
        incoming = caller.wait_call("Notify")
        assert incoming.body == ["called back"] and incoming.sender == pair_bridge_name(caller, name)
        caller.reply(incoming, "s", ["ok"])
        assert service.reply_to(back).value() == "ok"
        service.reply(call)
        assert caller.reply_to(serial).type == METHOD_RETURN


@pytest.mark.live
def test_only_answers_and_exported_services_reach_an_upstream_caller(pair):
    """Issue 13 #9: the stand-in of an upstream caller is no way upstream for other local peers.

    A stranger's call gets ServiceUnknown, its signal and no-reply call are dropped; the service
    the caller called still answers and calls back; the caller sees only what that service sent.
    """
    name = f"{DOWN}.Guarded"
    with RawClient(pair.local.address) as service, RawClient(pair.up.address) as caller, \
            RawClient(pair.local.address) as stranger:
        assert service.request_name(name) == 1
        wait_owned(caller, name)
        serial = caller.call(name, "/", "dev.busd.Test.Raw", "Register")
        call = service.wait_call("Register")
        stand_in = call.sender
        stranger.send(SIGNAL, destination=stand_in, path="/", interface="dev.busd.Test.Raw", member="Forged")
        stranger.call(stand_in, "/", "dev.busd.Test.Raw", "Silent", flags=NO_REPLY_EXPECTED)
        refused = stranger.call_wait(stand_in, "/", "dev.busd.Test.Raw", "Hijack")
        assert refused.error_name == SERVICE_UNKNOWN and refused.sender == stand_in
        service.reply(call, "s", ["registered"])
        assert caller.reply_to(serial).value() == "registered"
        service.emit("/", "dev.busd.Test.Raw", "Done", destination=stand_in)
        caller.wait_signal("Done", TIMEOUT)  # sent after all of the stranger's: anything of it came first
        assert [m.member for m in caller.drain() if m.member in ("Forged", "Silent", "Hijack")] == []
        pair.logs.wait_for(rf"bridge: refusing .*sender={re.escape(stranger.unique_name)}\b", TIMEOUT)


def pair_bridge_name(client: RawClient, exported: str) -> str:
    return client.driver_value("GetNameOwner", "s", [exported])


# ---------------------------------------------------------------- what must not cross

@pytest.mark.live
def test_names_that_are_not_bridged_do_not_exist_on_the_other_side(pair, up_service, down_service, local, upstream):
    assert local.driver_value("NameHasOwner", "s", [UP_PRIVATE]) is False
    assert upstream.driver_value("NameHasOwner", "s", [DOWN_PRIVATE]) is False
    reply = local.call_wait(UP_PRIVATE, SERVICE_PATH, SERVICE_INTERFACE, "Echo", "s", ["x"])
    assert reply.error_name == SERVICE_UNKNOWN
    reply = upstream.call_wait(DOWN_PRIVATE, SERVICE_PATH, SERVICE_INTERFACE, "Echo", "s", ["x"])
    assert reply.error_name == SERVICE_UNKNOWN


@pytest.mark.live
def test_broadcasts_of_other_peers_do_not_leak_either_way(pair, up_service, down_service, local, upstream):
    rule = f"type='signal',interface='{SERVICE_INTERFACE}',member='Said'"  # no sender: catches everything
    local.add_match(rule)
    upstream.add_match(rule)
    through_bridge(local)
    with RawClient(pair.up.address) as stranger_up, RawClient(pair.local.address) as stranger_here:
        stranger_up.emit(SERVICE_PATH, SERVICE_INTERFACE, "Said", "s", ["upstream stranger"])
        stranger_up.sync()  # dispatched upstream before anything the service emits below
        stranger_here.emit(SERVICE_PATH, SERVICE_INTERFACE, "Said", "s", ["local stranger"])
        stranger_here.sync()
        local.call_wait(UP_SVC, SERVICE_PATH, SERVICE_INTERFACE, "Emit", "s", ["imported"])
        local.call_wait(DOWN_SVC, SERVICE_PATH, SERVICE_INTERFACE, "Emit", "s", ["exported"])
    here = [local.wait_signal("Said", TIMEOUT).body[0] for _ in range(3)]
    assert here == ["local stranger", "imported", "exported"]  # local peers, and the imported service
    there = [upstream.wait_signal("Said", TIMEOUT).body[0] for _ in range(3)]
    assert there == ["upstream stranger", "imported", "exported"]  # upstream peers, and the exported service
    for client in (local, upstream):
        assert not [m.body for m in client.drain() if m.is_signal("Said")]
    local.call_driver("RemoveMatch", "s", [rule]).value()
    upstream.call_driver("RemoveMatch", "s", [rule]).value()


@pytest.mark.live
def test_replies_reach_only_the_caller_waiting_for_them(pair):
    name = f"{UP}.Raw"
    with RawClient(pair.up.address) as service, RawClient(pair.local.address) as first, \
            RawClient(pair.local.address) as second:
        assert service.request_name(name) == 1
        wait_owned(first, name)
        # The same serial from two local callers: upstream they are two calls from the bridge.
        for client in (first, second):
            client.send(METHOD_CALL, serial=5000, destination=name, path="/", interface="dev.busd.Test.Raw",
                        member="Who")
        calls = [service.wait_call("Who"), service.wait_call("Who")]
        assert len({c.serial for c in calls}) == 2 and {c.sender for c in calls} == {calls[0].sender}
        service.reply(calls[1], "s", ["second"])
        service.reply(calls[0], "s", ["first"])
        assert first.reply_to(5000).value() == "first"
        assert second.reply_to(5000).value() == "second"
        for client in (first, second):
            assert not [m for m in client.drain() if m.reply_serial is not None]


# ---------------------------------------------------------------- busdctl bridge and the driver interface

@pytest.mark.live
def test_busdctl_bridge_shows_address_state_and_names(pair, up_service, down_service):
    local = pair.local
    out = tool(local, sys.executable, "-m", "busdctl", f"--address={local.address}", "bridge").stdout
    lines = out.splitlines()
    assert f"Upstream={pair.up.address}" in lines
    assert "Connected=yes" in lines
    assert f"ImportPatterns={UP}.*" in lines and f"ExportPatterns={DOWN}.*" in lines
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("dev.busd.")}
    assert rows[UP_SVC][:2] == ["import", up_service.unique_name]
    assert rows[DOWN_SVC][0] == "export" and rows[DOWN_SVC][2] == down_service.unique_name
    data = json.loads(tool(local, sys.executable, "-m", "busdctl", f"--address={local.address}", "--json=short",
                           "bridge").stdout)
    assert data["Connected"] is True and data["Imported"][UP_SVC][0] == up_service.unique_name
    with RawClient(local.address) as subscriber:
        subscriber.add_match(f"type='signal',sender='{UP_SVC}',member='Said'")
        verbose = tool(local, sys.executable, "-m", "busdctl", f"--address={local.address}", "--verbose",
                       "bridge").stdout
    assert f"  type='signal',member='Said',sender='{UP_SVC}' (for 1 local rule)" in verbose.splitlines()
    plain = tool(pair.up, sys.executable, "-m", "busdctl", f"--address={pair.up.address}", "bridge", check=False)
    assert plain.returncode == 1 and "runs no bridge" in plain.stderr


@pytest.mark.live
def test_the_driver_introspects_the_bridge_interface(pair, local):
    xml = local.call_wait(DBUS, DBUS_PATH, "org.freedesktop.DBus.Introspectable", "Introspect").value()
    assert f'<interface name="{BRIDGE_INTERFACE}">' in xml and '<property name="Connected" type="b"' in xml
    reply = local.call_wait(DBUS, DBUS_PATH, PROPERTIES, "Get", "ss", [BRIDGE_INTERFACE, "Connected"])
    assert reply.value().value is True
    reply = local.call_wait(DBUS, DBUS_PATH, PROPERTIES, "Set", "ssv", [BRIDGE_INTERFACE, "Connected",
                                                                       variant_bool(False)])
    assert reply.error_name == "org.freedesktop.DBus.Error.PropertyReadOnly"


def variant_bool(value: bool):
    from busd.wire.marshal import Variant
    return Variant("b", value)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        import asyncio
        asyncio.run(serve(sys.argv[2:]))
