"""Live tests of the busd_client SDK: real buses (busd and dbus-daemon), a peer process, both backends."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

import busd_client
from busd_client import (DBusError, Interface, MessageInfo, NameFlag, RequestNameReply, ReleaseNameReply,
                         method, signal)
from busd_client.errors import (ArgumentTypeError, Failed, InvalidArgs, NoReply, PropertyReadOnly, ServiceUnknown,
                                UnknownMethod, UnknownObject)
from buses import start_bus
# `backend` and `peer` are fixtures, imported so that pytest finds them here.
from test_sdk_peer import (CALLBACK_PATH, EXAMPLES, PEER_INTERFACE, PEER_NAME, PEER_PATH, WAIT, LineProcess,
                           PeerError, Point, Record, SdkTest1, backend, child_env, peer, run)  # noqa: F401

pytestmark = pytest.mark.live

STATS = "org.freedesktop.DBus.Debug.Stats"


async def own_rules(bus: busd_client.Bus) -> list[str]:
    """The match rules the bus holds for this connection (asked on the same connection, so every
    AddMatch/RemoveMatch sent before has been applied)."""
    rules = await bus.call_driver("GetAllMatchRules", interface=STATS)
    return sorted(rules.get(bus.unique_name, []))


def parse_rule(text: str) -> dict[str, str]:
    """key='value' pairs of a match rule string as the bus reports it."""
    pairs: dict[str, str] = {}
    position = 0
    while position < len(text):
        key_end = text.index("=", position)
        key = text[position:key_end].strip().lstrip(",")
        position = key_end + 1
        value = []
        while position < len(text) and text[position] != ",":
            if text[position] == "'":
                closing = text.index("'", position + 1)
                value.append(text[position + 1:closing])
                position = closing + 1
            elif text.startswith("\\'", position):
                value.append("'")
                position += 2
            else:
                value.append(text[position])
                position += 1
        pairs[key] = "".join(value)
        position += 1
    return pairs


# -- methods, structs, properties, signals through an introspected proxy -----------------

def test_proxy_methods_structs_and_multiple_results(any_bus, backend, peer):
    record = Record(id=2**40, name="röund trip", tags=["a", "b"], where=Point(x=-3, y=1.5),
                    path=[Point(x=1, y=2.0), Point(x=3, y=4.25)], extra={"depth": 3, "label": "x"})

    async def scenario():
        async with await busd_client.connect(any_bus.address, backend=backend) as bus:
            untyped = await bus.proxy(PEER_NAME, PEER_PATH)
            assert await untyped.Sum([1, 2, 3, 2**31 - 1]) == 6 + 2**31 - 1   # the Int64 result exceeds int32
            assert await untyped.Split("abc") == ("ABC", 3)
            # Introspection gives no Python types: structs arrive as tuples.
            assert await untyped.Echo(record) == (2**40, "röund trip", ["a", "b"], (-3, 1.5),
                                                  [(1, 2.0), (3, 4.25)], {"depth": 3, "label": "x"})
            typed = await bus.proxy(PEER_NAME, PEER_PATH, SdkTest1)
            echoed = await typed.Echo(record)
            assert isinstance(echoed, Record) and echoed == record
            assert await typed.WhoAmI() == bus.unique_name
            assert await bus.call(PEER_NAME, PEER_PATH, PEER_INTERFACE, "Sum", [5, 6], signature="ai") == 11
            assert await bus.call(PEER_NAME, PEER_PATH, None, "Split", "z") == ("Z", 1)

    run(scenario())


def test_properties_read_write_and_watch_one_property(any_bus, backend, peer):
    async def scenario():
        async with await busd_client.connect(any_bus.address, backend=backend) as bus:
            remote = await bus.proxy(PEER_NAME, PEER_PATH)
            assert await remote.Mode == "idle"
            assert await remote.get_all() == {"Mode": "idle", "Counter": 0}

            counter_changes: asyncio.Queue[int] = asyncio.Queue()
            mode_changes: asyncio.Queue[str] = asyncio.Queue()
            async with await remote.Counter.connect(counter_changes.put_nowait), \
                    await remote.connect_property("Mode", mode_changes.put_nowait):
                await remote.Mode.set("busy")
                assert await asyncio.wait_for(mode_changes.get(), WAIT) == "busy"
                assert await remote.Bump() == 1
                assert await asyncio.wait_for(counter_changes.get(), WAIT) == 1
                # The Mode slot saw only Mode's change, not Counter's.
                assert mode_changes.empty()
                assert await remote.Mode.get() == "busy"

                with pytest.raises(InvalidArgs, match="idle or busy"):
                    await remote.Mode.set("asleep")
                with pytest.raises(PropertyReadOnly):
                    await remote.Counter.set(5)
            assert bus.match_rules == {}

    run(scenario())


def test_signals_reach_slots_with_filters_and_metadata(any_bus, backend, peer):
    async def scenario():
        async with await busd_client.connect(any_bus.address, backend=backend) as bus:
            remote = await bus.proxy(PEER_NAME, PEER_PATH)
            everything: list[tuple[int, str]] = []
            only_b: list[tuple[int, str, str]] = []
            async_slot_done = asyncio.Event()
            async_seen: list[int] = []

            def slot_b(number: int, tag: str, info: MessageInfo) -> None:
                only_b.append((number, tag, info.sender))

            async def async_slot(number: int) -> None:   # takes fewer arguments than the signal has
                async_seen.append(number)
                if number == 2:
                    async_slot_done.set()

            end = asyncio.Event()
            subscriptions = [
                await remote.Ticked.connect(lambda number, tag: everything.append((number, tag))),
                await bus.connect_signal(PEER_NAME, PEER_PATH, PEER_INTERFACE, "Ticked", slot_b, arg1="b"),
                await bus.connect_signal(peer, None, None, "Ticked", async_slot, arg1="a"),
                await bus.connect_signal(None, PEER_PATH, PEER_INTERFACE, "Ticked",
                                         lambda number, tag: end.set(), arg1="end"),
            ]
            await remote.EmitTicks(3, "a")
            await remote.EmitTicks(2, "b")
            await remote.EmitTicks(1, "end")
            await asyncio.wait_for(end.wait(), WAIT)
            await asyncio.wait_for(async_slot_done.wait(), WAIT)
            assert everything == [(0, "a"), (1, "a"), (2, "a"), (0, "b"), (1, "b"), (0, "end")]
            assert only_b == [(0, "b", peer), (1, "b", peer)]
            assert async_seen == [0, 1, 2]
            for subscription in subscriptions:
                await subscription.aclose()
            assert await own_rules(bus) == []

    run(scenario())


# -- match rules: exact, shared, and never leaked ----------------------------------------

def test_match_rules_are_exact_shared_and_removed_in_a_loop(any_bus, backend, peer):
    async def scenario():
        async with await busd_client.connect(any_bus.address, backend=backend) as bus:
            baseline = await own_rules(bus)
            assert baseline == []

            def slot(*args):
                pass

            for round_number in range(40):
                tag = f"tag'{round_number}"   # an apostrophe must survive the rule quoting
                first = await bus.connect_signal(PEER_NAME, PEER_PATH, PEER_INTERFACE, "Ticked", slot, arg1=tag)
                second = await bus.connect_signal(PEER_NAME, PEER_PATH, PEER_INTERFACE, "Ticked", slot, arg1=tag)
                unique = await bus.connect_signal(peer, None, None, None, slot)
                rules = [parse_rule(rule) for rule in await own_rules(bus)]
                # One rule per distinct subscription, plus the one that follows the name's owner.
                assert sorted(rules, key=sorted_items) == sorted([
                    {"type": "signal", "sender": PEER_NAME, "path": PEER_PATH, "interface": PEER_INTERFACE,
                     "member": "Ticked", "arg1": tag},
                    {"type": "signal", "sender": peer},
                    {"type": "signal", "sender": "org.freedesktop.DBus", "path": "/org/freedesktop/DBus",
                     "interface": "org.freedesktop.DBus", "member": "NameOwnerChanged", "arg0": PEER_NAME},
                ], key=sorted_items)
                first.close()
                assert len(await own_rules(bus)) == 3   # still used by `second`
                with second, unique:
                    pass
                assert await own_rules(bus) == baseline
            assert bus.match_rules == {}

    run(scenario(), timeout=120)


def sorted_items(rule: dict[str, str]) -> list[tuple[str, str]]:
    return sorted(rule.items())


# -- errors, both ways, and timeouts -----------------------------------------------------

class Callback(Interface, name="dev.busd.SdkCallback1"):
    @method()
    def Twice(self, value: int) -> int:
        if value < 0:
            raise InvalidArgs(f"{value} is negative")
        return 2 * value

    @signal()
    def Doubled(self, value: int) -> None: ...


def test_errors_travel_both_ways(any_bus, backend, peer):
    async def scenario():
        async with await busd_client.connect(any_bus.address, backend=backend) as bus:
            remote = await bus.proxy(PEER_NAME, PEER_PATH)
            with pytest.raises(PeerError) as refused:
                await remote.Refuse("not today")
            assert (refused.value.name, refused.value.message) == ("dev.busd.SdkTest.Error.Refused", "not today")
            with pytest.raises(DBusError) as custom:
                await remote.Fail("com.example.Error.Custom", "custom text")
            assert (custom.value.name, custom.value.message) == ("com.example.Error.Custom", "custom text")
            with pytest.raises(Failed, match="ValueError: peer bug"):
                await remote.Crash()
            with pytest.raises(UnknownMethod):
                await bus.call(PEER_NAME, PEER_PATH, PEER_INTERFACE, "NoSuchMethod")
            with pytest.raises(InvalidArgs):
                await bus.call(PEER_NAME, PEER_PATH, PEER_INTERFACE, "Sum", "not a list", signature="s")
            with pytest.raises(UnknownObject):
                await bus.call(PEER_NAME, "/no/such/object", PEER_INTERFACE, "Sum", [1], signature="ai")
            with pytest.raises(ServiceUnknown):
                await bus.call("dev.busd.NobodyHere", "/", None, "Anything")

            # The other way: the peer calls an object we export, which replies with an error.
            with bus.export(CALLBACK_PATH, Callback()):
                assert await remote.CallBack(bus.unique_name, 21) == "result 42"
                assert await remote.CallBack(bus.unique_name, -1) == \
                    "error org.freedesktop.DBus.Error.InvalidArgs -1 is negative"
            assert (await remote.CallBack(bus.unique_name, 1)).startswith(
                "error org.freedesktop.DBus.Error.UnknownObject")

    run(scenario())


def test_wrongly_typed_values_raise_one_sdk_error_on_every_backend(any_bus, backend, peer):
    """Checked before sending: the error names the member, the argument and the D-Bus type, whatever the backend."""
    async def scenario() -> None:
        async with await busd_client.connect(any_bus.address, backend=backend) as bus:
            proxy = await bus.proxy(PEER_NAME, PEER_PATH)
            local = SdkTest1()
            bus.export("/dev/busd/SdkLocal", local)
            attempts = [
                (lambda: proxy.Split(5), 1, "text", "s",
                 f"{PEER_INTERFACE}.Split: argument 1 (text) must be a string (D-Bus type 's'), got int 5"),
                (lambda: proxy.Sum([1, "two"]), 1, "values", "ai",
                 f"{PEER_INTERFACE}.Sum: argument 1 (values) must be an array of 32-bit integers (D-Bus type 'ai'),"
                 " got list [1, 'two']: [1] must be a 32-bit integer ('i'), not str 'two'"),
                (lambda: proxy.EmitTicks(-1, "x"), 1, "count", "u",
                 f"{PEER_INTERFACE}.EmitTicks: argument 1 (count) must be an unsigned 32-bit integer"
                 " (D-Bus type 'u'), got int -1"),
                (lambda: proxy.Mode.set(3), None, None, "s",
                 f"{PEER_INTERFACE}.Mode: the property's value must be a string (D-Bus type 's'), got int 3"),
            ]
            for attempt, position, argument, signature, text in attempts:
                with pytest.raises(ArgumentTypeError) as raised:
                    await attempt()
                assert (raised.value.position, raised.value.argument, raised.value.signature,
                        raised.value.message) == (position, argument, signature, text)
            # Emitting a signal from an exported object is checked the same way.
            with pytest.raises(ArgumentTypeError) as raised:
                local.Ticked("one", "tag")
            assert raised.value.message == (f"{PEER_INTERFACE}.Ticked: argument 1 (number) must be an unsigned "
                                            "32-bit integer (D-Bus type 'u'), got str 'one'")
            # It is also an InvalidArgs and a TypeError, and nothing reached the peer.
            assert isinstance(raised.value, InvalidArgs) and isinstance(raised.value, TypeError)
            assert await proxy.Mode == "idle"
            assert await proxy.Split("ok") == ("OK", 2)

    run(scenario())


def test_every_call_has_a_timeout(any_bus, backend, peer):
    async def scenario():
        async with await busd_client.connect(any_bus.address, backend=backend, timeout=0.3) as bus:
            remote = await bus.proxy(PEER_NAME, PEER_PATH)
            with pytest.raises(NoReply) as expired:
                await remote.Hang()
            assert isinstance(expired.value, TimeoutError)
            with pytest.raises(NoReply):
                await remote.Hang(timeout=0.1)
            assert bus.pending_calls == 0
            assert await remote.Sum([1], timeout=WAIT) == 1   # the connection is still fine

    run(scenario())


def test_non_sdk_clients_see_sdk_errors_and_results(any_bus, backend, peer):
    env = any_bus.client_env()
    result = subprocess.run(
        ["dbus-send", "--session", "--print-reply", f"--dest={PEER_NAME}", PEER_PATH,
         f"{PEER_INTERFACE}.Refuse", "string:go away"],
        env=env, capture_output=True, text=True, timeout=WAIT)
    assert result.returncode != 0
    assert "dev.busd.SdkTest.Error.Refused: go away" in result.stderr

    summed = subprocess.run(
        ["gdbus", "call", "--session", "--dest", PEER_NAME, "--object-path", PEER_PATH,
         "--method", f"{PEER_INTERFACE}.Sum", "[1, 2, 39]"],
        env=env, capture_output=True, text=True, timeout=WAIT)
    assert summed.stdout.strip() == "(int64 42,)", summed.stderr

    introspected = subprocess.run(
        ["busctl", f"--address={any_bus.address}", "introspect", PEER_NAME, PEER_PATH, PEER_INTERFACE],
        capture_output=True, text=True, timeout=WAIT)
    assert introspected.returncode == 0, introspected.stderr
    lines = {line.split()[0]: line.split()[1:3] for line in introspected.stdout.splitlines()[1:] if line.strip()}
    assert lines[".Echo"] == ["method", "(tsas(id)a(id)a{sv})"]
    assert lines[".Counter"] == ["property", "u"]
    assert lines[".Ticked"] == ["signal", "us"]


# -- file descriptors, both ways ---------------------------------------------------------

def test_file_descriptors_both_ways(any_bus, backend, peer):
    async def scenario():
        async with await busd_client.connect(any_bus.address, backend=backend) as bus:
            remote = await bus.proxy(PEER_NAME, PEER_PATH, SdkTest1)
            read_end, write_end = os.pipe()
            os.write(write_end, b"through the bus")
            os.close(write_end)
            assert await remote.ReadFd(read_end) == b"through the bus"
            os.close(read_end)   # the SDK sent a duplicate, so ours is still ours to close

            received = await remote.MakeFd(b"\x00from the peer\xff")
            try:
                assert os.read(received, 100) == b"\x00from the peer\xff"
            finally:
                os.close(received)

    run(scenario())


# -- names: watching, queueing, replacement ------------------------------------------------

def test_request_name_queueing_replacement_and_watcher(any_bus, backend):
    name = "dev.busd.SdkTest.Queue"

    async def scenario():
        address = any_bus.address
        async with await busd_client.connect(address, backend=backend) as watcher_bus, \
                await busd_client.connect(address, backend=backend) as first, \
                await busd_client.connect(address, backend=backend) as second, \
                await busd_client.connect(address, backend=backend) as third:
            events: asyncio.Queue[tuple[str, ...]] = asyncio.Queue()
            watcher = watcher_bus.watch_name(name, lambda n, owner: events.put_nowait(("appeared", owner)),
                                             lambda n: events.put_nowait(("vanished",)))

            async def next_event():
                return await asyncio.wait_for(events.get(), WAIT)

            assert await next_event() == ("vanished",)   # the initial state
            first_lost = asyncio.Event()
            # do_not_queue: once replaced, `first` leaves the queue instead of waiting at its head.
            assert await first.request_name(name, allow_replacement=True, do_not_queue=True,
                                            on_lost=lambda n: first_lost.set()) == RequestNameReply.PRIMARY_OWNER
            assert await next_event() == ("appeared", first.unique_name)
            assert name in first.owned_names

            second_acquired = asyncio.Event()
            assert await second.request_name(name, on_acquired=lambda n: second_acquired.set()) \
                == RequestNameReply.IN_QUEUE
            assert await third.request_name(name, NameFlag.DO_NOT_QUEUE) == RequestNameReply.EXISTS

            # Replacement: `third` takes the name, `first` loses it, `second` keeps waiting.
            assert await third.request_name(name, replace_existing=True) == RequestNameReply.PRIMARY_OWNER
            await asyncio.wait_for(first_lost.wait(), WAIT)
            assert name not in first.owned_names
            assert await next_event() == ("vanished",)
            assert await next_event() == ("appeared", third.unique_name)
            assert watcher.owner == third.unique_name

            # Queueing: when `third` lets go, the queued `second` gets it.
            assert await third.release_name(name) == ReleaseNameReply.RELEASED
            await asyncio.wait_for(second_acquired.wait(), WAIT)
            assert await next_event() == ("vanished",)
            assert await next_event() == ("appeared", second.unique_name)
            assert await watcher.wait_for_owner(WAIT) == second.unique_name

            await second.close()
            await watcher.wait_vanished(WAIT)
            assert await next_event() == ("vanished",)
            watcher.close()
            assert await own_rules(watcher_bus) == []

    run(scenario())


# -- the examples, which are also the restart test ------------------------------------------

def test_example_subscriber_survives_service_restart(any_bus, backend):
    env = child_env(any_bus, backend)
    service_command = [sys.executable, str(EXAMPLES / "example_service.py"), "--interval", "0.05"]
    subscriber = LineProcess([sys.executable, str(EXAMPLES / "subscriber.py")], env)
    services: list[LineProcess] = []
    try:
        subscriber.expect(r"^vanished dev\.busd\.Example1$")
        subscriber.expect(r"^subscribed$")
        owners = []
        for _ in range(2):
            service = LineProcess(service_command, env)
            services.append(service)
            owner = service.expect(r"^ready (\S+)").group(1)
            owners.append(owner)
            assert subscriber.expect(r"^appeared dev\.busd\.Example1 (\S+)").group(1) == owner
            assert subscriber.expect(r"^greeting (.*)").group(1) == "Hello, subscriber!"
            for _ in range(3):
                assert subscriber.expect(r"^tick \d+ from (\S+)").group(1) == owner
            assert service.stop() == 0
            subscriber.expect(r"^vanished dev\.busd\.Example1$")
        assert owners[0] != owners[1]
    finally:
        for service in services:
            service.stop()
        assert subscriber.stop() == 0


def test_example_service_from_the_blocking_facade(any_bus, backend):
    service = LineProcess([sys.executable, str(EXAMPLES / "example_service.py"), "--interval", "30",
                           "--label", "blocking"], child_env(any_bus, backend))
    try:
        owner = service.expect(r"^ready (\S+)").group(1)
        with busd_client.connect_blocking(any_bus.address, backend=backend) as bus:
            assert bus.get_name_owner("dev.busd.Example1") == owner
            example = bus.proxy("dev.busd.Example1", "/dev/busd/Example1")
            assert example.Greet("script") == "Hello, script!"
            assert example.GetStatus() == (0, 30.0, "blocking")
            assert example.Interval == 30.0
            example.Interval = 0.05   # the service ticks much faster now
            assert example.Interval == 0.05
            with pytest.raises(InvalidArgs):
                example.Interval = -1.0

            import queue
            ticks: queue.Queue[int] = queue.Queue()
            counts: queue.Queue[int] = queue.Queue()
            with example.Tick.connect(lambda count, timestamp: ticks.put(count)), \
                    example.connect_property("Count", counts.put):
                first = ticks.get(timeout=WAIT)
                assert ticks.get(timeout=WAIT) == first + 1
                assert counts.get(timeout=WAIT) >= first
            watcher = bus.watch_name("dev.busd.Example1")
            assert watcher.wait_for_owner(WAIT) == owner
            assert service.stop() == 0
            watcher.wait_vanished(WAIT)
            watcher.close()
    finally:
        service.stop()


def test_example_service_ends_with_one_line_when_the_bus_goes(backend):
    bus = start_bus("busd")
    try:
        service = subprocess.Popen([sys.executable, str(EXAMPLES / "example_service.py"), "--interval", "0.05"],
                                   env=child_env(bus, backend), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        assert service.stdout.readline().startswith("ready ")
    finally:
        bus.stop()
    _, errors = service.communicate(timeout=WAIT)
    assert (service.returncode, errors) == (1, "the bus closed the connection\n")


def test_blocking_facade_exports_for_other_tools(any_bus, backend):
    import queue

    with busd_client.connect_blocking(any_bus.address, backend=backend) as bus, \
            busd_client.connect_blocking(any_bus.address, backend=backend) as listener:
        callback = Callback()
        bus.export(CALLBACK_PATH, callback)
        assert bus.request_name("dev.busd.SdkTest.Blocking") == RequestNameReply.PRIMARY_OWNER

        # A signal emitted from this (non-loop) thread goes out through the bus's own thread.
        doubled: queue.Queue[int] = queue.Queue()
        with listener.connect_signal("dev.busd.SdkTest.Blocking", CALLBACK_PATH, "dev.busd.SdkCallback1",
                                     "Doubled", doubled.put):
            callback.Doubled(8)
            assert doubled.get(timeout=WAIT) == 8

        result = subprocess.run(
            ["gdbus", "call", "--session", "--dest", "dev.busd.SdkTest.Blocking", "--object-path", CALLBACK_PATH,
             "--method", "dev.busd.SdkCallback1.Twice", "21"],
            env=any_bus.client_env(), capture_output=True, text=True, timeout=WAIT)
        assert result.stdout.strip() == "(42,)", result.stderr
        introspected = subprocess.run(
            ["gdbus", "introspect", "--session", "--dest", "dev.busd.SdkTest.Blocking",
             "--object-path", "/dev/busd"],
            env=any_bus.client_env(), capture_output=True, text=True, timeout=WAIT)
        assert "node SdkCallback" in introspected.stdout, introspected.stderr


def test_connect_resolves_session_and_reports_bad_addresses(any_bus, backend, monkeypatch):
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", any_bus.address)

    async def scenario():
        for address in (None, "session"):
            async with await busd_client.connect(address, backend=backend) as bus:
                assert bus.unique_name.startswith(":")
                assert bus.backend == backend
                await bus.ping()
        missing = any_bus.address.split(",")[0] + "-missing"
        with pytest.raises(ConnectionError, match="cannot connect"):
            await busd_client.connect(missing, backend=backend)

    run(scenario())


def test_a_burst_of_signals_keeps_the_connection(any_bus, backend, peer):
    # The peer emits all of them from one synchronous loop, far faster than the bus reads:
    # a full socket buffer must mean "wait", not "disconnected".
    count = 5000

    async def scenario():
        async with await busd_client.connect(any_bus.address, backend=backend) as bus:
            remote = await bus.proxy(PEER_NAME, PEER_PATH)
            received = []
            last = asyncio.Event()

            def on_tick(number: int) -> None:
                received.append(number)
                if number == count - 1:
                    last.set()

            async with await remote.Ticked.connect(on_tick, arg1="burst"):
                await remote.EmitTicks(count, "burst", timeout=60)
                await asyncio.wait_for(last.wait(), 60)
            assert received == list(range(count))
            assert await remote.Sum([1, 2]) == 3   # the peer is still connected

    run(scenario(), timeout=120)
