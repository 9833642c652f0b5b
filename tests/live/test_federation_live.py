"""Live tests of busd's federation over NATS: a real nats-server on loopback, three busd nodes, stock clients.

Every node runs --import=dev.busd.Fed.* --export=dev.busd.Fed.*; node a also
exports dev.busd.Out.* (which nobody imports) and owns dev.busd.Private.* names
(which it does not export). Clients (gdbus, busctl, dbus-next, RawClient) know
nothing of the network. The NATS restart runs last: it is the module's end.

Ordering, not sleeping: a node publishes its subscriptions (heartbeat) before a
call its subscriber makes next, over one NATS connection, so once that call is
answered the callee node knows who listens (`through()`).
"""

import asyncio
import json
import os
import sys

import pytest

from busclient import DBUS, DBUS_PATH, run_async, start_bus_logged
from busd.wire.message import ERROR
from federation_nodes import FED, TIMEOUT, NatsServer, Node, eventually, origin_of
from test_bridge_live import (BRIDGE_INTERFACE, PROPERTIES, SERVICE_INTERFACE, SERVICE_PATH, SERVICE_UNKNOWN, Service,
                              tool, wait_owned)

SVC_A = f"{FED}.A"
SVC_C = f"{FED}.C"
OUT_A = "dev.busd.Out.A"  # exported by a, imported by nobody
PRIVATE_A = "dev.busd.Private.A"  # owned on a, not exported
NOBODY_UID = 65534
NO_REPLY = "org.freedesktop.DBus.Error.NoReply"
NOT_SUPPORTED = "org.freedesktop.DBus.Error.NotSupported"


@pytest.fixture(scope="module")
def server():
    nats = NatsServer()
    yield nats
    nats.stop()


@pytest.fixture(scope="module")
def trio(server):
    """Nodes a, b, c: a exports dev.busd.Out.* too."""
    a = Node(server, "a", exports=(f"{FED}.*", "dev.busd.Out.*"))
    b = Node(server, "b")
    c = Node(server, "c")
    for node, others in ((a, "bc"), (b, "ac"), (c, "ab")):
        node.wait_joined(*others)
    yield a, b, c
    for node in (a, b, c):
        node.stop()


@pytest.fixture(scope="module")
def service_a(trio):
    """A dbus-next service on a owning SVC_A, OUT_A and PRIVATE_A, once SVC_A is owned on b and c."""
    a, b, c = trio
    service = Service(a.bus, SVC_A, OUT_A, PRIVATE_A)
    for node in (b, c):
        with node.client() as observer:
            wait_owned(observer, SVC_A)
    yield service
    service.stop()


def through(client, name: str = SVC_A) -> None:
    """A call across the federation: what this node published before it has reached the callee's node."""
    assert client.call_wait(name, SERVICE_PATH, SERVICE_INTERFACE, "Echo", "s", ["barrier"]).value() == "barrier"


# ---------------------------------------------------------------- calls, errors, properties, introspection

@pytest.mark.live
def test_stock_clients_call_a_service_on_another_node(trio, service_a):
    a, b, c = trio
    gdbus = ["gdbus", "call", "--session", "-d", SVC_A, "-o", SERVICE_PATH]
    assert tool(b.bus, *gdbus, "-m", f"{SERVICE_INTERFACE}.Echo", "over NATS").stdout.strip() == "('over NATS',)"
    failed = tool(b.bus, *gdbus, "-m", f"{SERVICE_INTERFACE}.Fail", "asked to", check=False)
    assert failed.returncode != 0 and "dev.busd.Test.Error.Asked" in failed.stderr and "asked to" in failed.stderr
    # Properties and introspection are calls like any other.
    assert tool(c.bus, "busctl", "--user", "get-property", SVC_A, SERVICE_PATH, SERVICE_INTERFACE,
                "Label").stdout.strip() == 's "initial"'
    tool(c.bus, "busctl", "--user", "set-property", SVC_A, SERVICE_PATH, SERVICE_INTERFACE, "Label", "s", "from c")
    assert tool(b.bus, "busctl", "--user", "get-property", SVC_A, SERVICE_PATH, SERVICE_INTERFACE,
                "Label").stdout.strip() == 's "from c"'
    introspected = tool(b.bus, "gdbus", "introspect", "--session", "-d", SVC_A, "-o", SERVICE_PATH).stdout
    assert SERVICE_INTERFACE in introspected and "Echo(" in introspected

    async def with_dbus_next():
        from dbus_next.aio import MessageBus
        bus = await MessageBus(bus_address=c.address).connect()
        try:
            node = await bus.introspect(SVC_A, SERVICE_PATH)
            proxy = bus.get_proxy_object(SVC_A, SERVICE_PATH, node).get_interface(SERVICE_INTERFACE)
            return await proxy.call_echo("dbus-next")
        finally:
            bus.disconnect()
    assert run_async(with_dbus_next()) == "dbus-next"


@pytest.mark.live
def test_an_imported_name_has_a_stand_in_with_the_remote_uid_and_node(trio, service_a):
    a, b, c = trio
    with b.client() as client:
        owner = client.driver_value("GetNameOwner", "s", [SVC_A])
        assert owner.startswith(":") and SVC_A in client.driver_value("ListNames")
        credentials = client.driver_value("GetConnectionCredentials", "s", [owner])
        assert credentials["UnixUserID"].value == NOBODY_UID != os.getuid()
        assert credentials["dev.busd.FederationNode"].value == "a"
        assert "ProcessID" not in credentials
        status = {key: variant.value for key, variant in
                  client.call_wait(DBUS, DBUS_PATH, PROPERTIES, "GetAll", "s", [BRIDGE_INTERFACE]).value().items()}
        assert status["Connected"] is True and status["UpstreamUniqueName"] == "b"
        assert status["Imported"][SVC_A][1] == owner and status["Imported"][SVC_A][0].startswith("a/:")
        assert set(status["Nodes"]) == {"a", "b", "c"} and SVC_A in status["Nodes"]["a"][2]


@pytest.mark.live
def test_a_remote_caller_is_a_stand_in_and_callbacks_reach_it(trio):
    """A raw service on c sees b's caller as a stand-in (remote uid, node b), answers it, and errors cross too."""
    a, b, c = trio
    with c.client() as service, b.client() as caller:
        assert service.request_name(SVC_C) == 1
        wait_owned(caller, SVC_C)
        serial = caller.call(SVC_C, "/raw", "dev.busd.Test.Raw", "Hello", "s", ["hi"])
        call = service.wait_call("Hello", TIMEOUT)
        assert call.body == ["hi"] and call.sender != caller.unique_name
        credentials = service.driver_value("GetConnectionCredentials", "s", [call.sender])
        assert credentials["UnixUserID"].value == NOBODY_UID
        assert credentials["dev.busd.FederationNode"].value == "b"
        service.reply(call, "s", ["hello back"])
        assert caller.reply_to(serial, TIMEOUT).value() == "hello back"
        serial = caller.call(SVC_C, "/raw", "dev.busd.Test.Raw", "Hello", "s", ["again"])
        service.error(service.wait_call("Hello", TIMEOUT), "dev.busd.Test.Error.Refused", "not now")
        reply = caller.reply_to(serial, TIMEOUT)
        assert reply.type == ERROR and reply.error_name == "dev.busd.Test.Error.Refused" and reply.body == ["not now"]


@pytest.mark.live
def test_names_outside_the_patterns_do_not_cross(trio, service_a):
    a, b, c = trio
    with b.client() as client:
        names = client.driver_value("ListNames")
        assert PRIVATE_A not in names and OUT_A not in names
        for name in (PRIVATE_A, OUT_A):  # not exported; exported but imported by nobody
            reply = client.call_wait(name, SERVICE_PATH, SERVICE_INTERFACE, "Echo", "s", ["x"])
            assert reply.error_name == SERVICE_UNKNOWN
    with a.client() as client:  # on its own node the service has all three
        assert {SVC_A, OUT_A, PRIVATE_A} <= set(client.driver_value("ListNames"))


@pytest.mark.live
def test_unix_fds_are_refused_with_a_clear_error(trio, service_a):
    a, b, c = trio
    read_end, write_end = os.pipe()
    try:
        with b.client() as client:
            reply = client.call_wait(SVC_A, SERVICE_PATH, SERVICE_INTERFACE, "ReadFd", "h", [0], fds=[read_end])
            assert reply.error_name == NOT_SUPPORTED and "file descriptors" in reply.body[0]
    finally:
        os.close(read_end)
        os.close(write_end)


# ---------------------------------------------------------------- signals

@pytest.mark.live
def test_signals_cross_only_to_nodes_with_a_subscriber_filtered_by_arguments(trio, service_a, server):
    """b listens for Said('yes'), c for Said('marker'): 'no' crosses to nobody, each other signal to one node."""
    a, b, c = trio
    seen: list[tuple[str, str]] = []

    async def spy_and_emit():
        import nats
        nc = await nats.connect(server.url)
        got_marker = asyncio.Event()

        async def on_signal(msg):
            node = msg.subject.split(".")[-2]
            seen.append((node, "marker" if b"marker" in msg.data else "yes" if b"yes" in msg.data else "no"))
            if node == "c":
                got_marker.set()
        await nc.subscribe("busd.fed.t.node.*.signal", cb=on_signal)
        await nc.flush()
        await asyncio.get_running_loop().run_in_executor(None, emit_three)
        await asyncio.wait_for(got_marker.wait(), TIMEOUT)
        await nc.close()

    with b.client() as on_b, c.client() as on_c, a.client() as emitter:
        said = f"type='signal',sender='{SVC_A}',interface='{SERVICE_INTERFACE}',member='Said'"
        on_b.add_match(f"{said},arg0='yes'")
        on_c.add_match(f"{said},arg0='marker'")
        through(on_b)
        through(on_c)

        def emit_three():
            for text in ("no", "yes", "marker"):
                emitter.call_wait(SVC_A, SERVICE_PATH, SERVICE_INTERFACE, "Emit", "s", [text]).value()
        run_async(spy_and_emit())
        assert on_b.wait_for(lambda m: m.is_signal("Said"), TIMEOUT).body == ["yes"]
        assert on_c.wait_for(lambda m: m.is_signal("Said"), TIMEOUT).body == ["marker"]
        # Published in emission order over a's one connection: nothing else crossed before the marker.
        assert seen == [("b", "yes"), ("c", "marker")]


@pytest.mark.live
def test_signals_cross_both_ways_to_stock_subscribers(trio, service_a):
    """A subscriber on c gets a service on a's signal, and one on a gets a raw service on c's."""
    a, b, c = trio
    with c.client() as listener:
        listener.add_match(f"type='signal',sender='{SVC_A}'")
        through(listener)
        with b.client() as caller:
            caller.call_wait(SVC_A, SERVICE_PATH, SERVICE_INTERFACE, "Emit", "s", ["to c"]).value()
        signal = listener.wait_for(lambda m: m.is_signal("Said"), TIMEOUT)
        assert signal.body == ["to c"] and signal.sender == listener.driver_value("GetNameOwner", "s", [SVC_A])
    with c.client() as service, a.client() as listener:
        assert service.request_name(f"{SVC_C}.Emitter") == 1
        wait_owned(listener, f"{SVC_C}.Emitter")
        listener.add_match(f"type='signal',sender='{SVC_C}.Emitter',member='Tick'")
        # A call from a to c's service orders a's subscription before what c's service sends next.
        serial = listener.call(f"{SVC_C}.Emitter", "/raw", "dev.busd.Test.Raw", "Sync")
        service.reply(service.wait_call("Sync", TIMEOUT))
        listener.reply_to(serial, TIMEOUT)
        service.emit("/raw", "dev.busd.Test.Raw", "Tick", "u", [7])
        assert listener.wait_for(lambda m: m.is_signal("Tick"), TIMEOUT).body == [7]


# ---------------------------------------------------------------- names: queues and node loss

@pytest.mark.live
def test_two_nodes_exporting_one_name_queue_and_hand_over(trio):
    a, b, c = trio
    shared = f"{FED}.Shared"
    with a.client() as first, c.client() as observer:
        assert first.request_name(shared) == 1
        eventually(lambda: origin_of(observer, shared) == "a", "c sees a own the shared name")
        with b.client() as second:
            wait_owned(second, shared)
            assert second.request_name(shared) == 2  # IN_QUEUE: behind a's owner, as on one bus
            assert origin_of(second, shared) == "a"
            first.release_name(shared)
            second.wait_for(lambda m: m.is_signal("NameAcquired") and m.body == [shared], TIMEOUT)
            eventually(lambda: origin_of(observer, shared) == "b", "c sees b own the shared name next")
            eventually(lambda: origin_of(first, shared) == "b", "a sees b own the shared name next")


@pytest.mark.live
def test_a_killed_node_loses_its_names_and_its_callers_get_no_reply(server, trio):
    a, b, c = trio
    d = Node(server, "d")
    slow = f"{FED}.Slow"
    try:
        with d.client() as service, b.client() as caller:
            assert service.request_name(slow) == 1
            wait_owned(caller, slow)
            serial = caller.call(slow, "/raw", "dev.busd.Test.Raw", "NeverAnswered")
            service.wait_call("NeverAnswered", TIMEOUT)  # the call is pending on d
            d.kill()
            reply = caller.reply_to(serial, TIMEOUT)
            assert reply.error_name == NO_REPLY
            wait_owned(caller, slow, owned=False)
            b.logs.wait_for(r"federation: node d left: no heartbeat", TIMEOUT)
    finally:
        if d.bus.process.poll() is None:
            d.stop()


@pytest.mark.live
def test_a_call_to_a_node_that_is_gone_fails_at_once(trio, server):
    """d says goodbye (SIGTERM): its names leave b at once, and nothing waits for a timeout."""
    a, b, c = trio
    d = Node(server, "d2")
    name = f"{FED}.Leaving"
    with d.client() as service, b.client() as caller:
        assert service.request_name(name) == 1
        wait_owned(caller, name)
        d.stop()
        wait_owned(caller, name, owned=False)
        assert caller.call_wait(name, "/raw", "dev.busd.Test.Raw", "Any").error_name == SERVICE_UNKNOWN


# ---------------------------------------------------------------- busdctl, and the NATS server restarted (last)

@pytest.mark.live
def test_busdctl_bridge_shows_the_federation(trio, service_a):
    a, b, c = trio
    busdctl = [sys.executable, "-m", "busdctl", f"--address={b.address}"]
    state = json.loads(tool(b.bus, *busdctl, "--json=short", "bridge").stdout)
    assert state["Connected"] is True and set(state["Nodes"]) >= {"a", "b", "c"}
    assert SVC_A in state["Nodes"]["a"][2] and SVC_A in state["Imported"]
    text = tool(b.bus, *busdctl, "bridge").stdout
    assert "UpstreamUniqueName=b" in text
    assert any(line.split()[:2] == ["node", "a"] and SVC_A in line for line in text.splitlines())


@pytest.mark.live
def test_the_nats_server_restarted_mid_run(trio, service_a, server):
    """A short outage: nodes reconnect by themselves. A long one (past the TTL): names leave, then come back,
    and a subscription made before the outage still gets its signals."""
    a, b, c = trio
    server.restart()
    for node in (a, b, c):
        node.logs.wait_for(rf"federation: node {node.name} connected to NATS .* again", TIMEOUT)
    with c.client() as client:
        wait_owned(client, SVC_A)
        assert client.call_wait(SVC_A, SERVICE_PATH, SERVICE_INTERFACE, "Echo", "s", ["after"],
                                timeout=TIMEOUT).value() == "after"
        client.add_match(f"type='signal',sender='{SVC_A}',member='Said'")
        through(client)
        with server.stopped():
            c.logs.wait_for(r"federation: node c lost NATS", TIMEOUT)
            wait_owned(client, SVC_A, owned=False)  # a's heartbeats stopped: its names left c
            assert client.call_wait(SVC_A, SERVICE_PATH, SERVICE_INTERFACE, "Echo", "s", ["x"]).error_name == \
                SERVICE_UNKNOWN
        wait_owned(client, SVC_A)
        through(client)
        with a.client() as emitter:
            emitter.call_wait(SVC_A, SERVICE_PATH, SERVICE_INTERFACE, "Emit", "s", ["back"]).value()
        assert client.wait_for(lambda m: m.is_signal("Said"), TIMEOUT).body == ["back"]


@pytest.mark.live
def test_local_policy_applies_to_remote_callers_by_their_uid(server, trio):
    """A node whose policy denies user nobody a name: remote callers (uid 65534) are denied, local root is not."""
    a, b, c = trio
    guarded = f"{FED}.Guarded"
    policy = (f'<policy user="nobody"><deny send_destination="{guarded}"/></policy>')
    p = Node(server, "p", extra_config=policy)
    try:
        with p.client() as service, b.client() as remote, p.client() as local:
            assert service.request_name(guarded) == 1
            wait_owned(remote, guarded)
            reply = remote.call_wait(guarded, "/raw", "dev.busd.Test.Raw", "Hello")
            assert reply.error_name == "org.freedesktop.DBus.Error.AccessDenied"
            serial = local.call(guarded, "/raw", "dev.busd.Test.Raw", "Hello")
            service.reply(service.wait_call("Hello", TIMEOUT))
            assert local.reply_to(serial, TIMEOUT).type != ERROR
    finally:
        p.stop()


@pytest.mark.live
def test_nats_authentication_and_the_plaintext_warning():
    """A nats-server that wants a user and password: the right ones in the URL join (the log masks the password),
    wrong ones are refused and retried; NATS down at start; a nats:// URL off this machine is warned about."""
    secured = NatsServer(-1, "--user", "busd", "--pass", "s3cret")
    try:
        good = Node(secured, "good", url=f"nats://busd:s3cret@127.0.0.1:{secured.port}")
        good.stop()
        bus, logs = start_bus_logged("busd", args=(f"--upstream=nats://busd:wrong@127.0.0.1:{secured.port}",
                                                   "--node-name=bad", "--log-level=info"))
        try:
            line = logs.wait_for(r"federation: cannot connect to NATS", TIMEOUT)
            assert "wrong" not in line and "***" in line and "retrying" in line and "uthorization" in line
        finally:
            bus.stop()
    finally:
        secured.stop()
    # NATS down when the node starts: it says so once, and joins when NATS comes up.
    later = NatsServer()
    later.stop()
    bus, logs = start_bus_logged("busd", args=(f"--upstream={later.url}", "--node-name=early", "--log-level=info"))
    try:
        logs.wait_for(r"federation: cannot connect to NATS", TIMEOUT)
        later.start()
        logs.wait_for(r"federation: node early connected to NATS", TIMEOUT)
    finally:
        bus.stop()
        later.stop()
    bus, logs = start_bus_logged("busd", args=("--upstream=nats://192.0.2.1:4222", "--node-name=far"))
    try:
        line = logs.wait_for(r"is not on this machine and not TLS", TIMEOUT)
        assert "tls://" in line
    finally:
        bus.stop()
