"""Live tests of name ownership: RequestName flags, reply codes, queues, promotion and the signals, in order.

Each step is one driver call; afterwards every client's view (the messages it
received, in order, up to a round trip to the bus) is compared with what
dbus-daemon sends. Clients are shown by letter, so the expectations read like
the scenario.
"""

from __future__ import annotations

import pytest

from busclient import (  # noqa: F401  (fixtures)
    BUS_KINDS, DBUS, DBUS_PATH, ERROR_PREFIX, Clients, Message, RawClient, busd_bug, busd_bugs, clients, fresh_clients,
    running_bus, shared_bus, wait_owner, watch_name,
)
from busd.wire.message import METHOD_RETURN

ALLOW_REPLACEMENT, REPLACE_EXISTING, DO_NOT_QUEUE = 1, 2, 4
PRIMARY_OWNER, IN_QUEUE, EXISTS, ALREADY_OWNER = 1, 2, 3, 4
RELEASED, NON_EXISTENT, NOT_OWNER = 1, 2, 3


class Scene:
    """Clients named by letter, all watching NameOwnerChanged for the scene's names."""

    def __init__(self, factory: Clients, letters: str, names: tuple[str, ...]):
        self.clients: dict[str, RawClient] = {letter: factory() for letter in letters}
        self.letter_of = {c.unique_name: letter for letter, c in self.clients.items()}
        for client in self.clients.values():
            for name in names:
                watch_name(client, name)
            client.drain()

    def __getitem__(self, letter: str) -> RawClient:
        return self.clients[letter]

    def show(self, message: Message, reply_serial: int | None) -> tuple:
        if message.type == METHOD_RETURN and message.reply_serial == reply_serial:
            return ("reply", *message.body)
        return tuple(self.letter_of.get(v, v) for v in message.brief()[1:]) if message.is_signal() \
            else message.brief()

    def step(self, letter: str, member: str, *args) -> dict[str, list[tuple]]:
        """`letter` calls RequestName or ReleaseName; returns every client's view of what followed."""
        signature = {"RequestName": "su", "ReleaseName": "s"}[member]
        serial = self[letter].call(DBUS, DBUS_PATH, DBUS, member, signature, list(args))
        # The caller first: once it has its answer, the bus has queued every signal the call caused.
        order = [letter] + [who for who, c in self.clients.items() if who != letter and not c.closed]
        views = {}
        for who in order:
            client = self.clients[who]
            views[who] = [self.show(m, serial if who == letter else None) for m in client.drain()]
        return {who: views[who] for who in self.clients if who in views}

    def reply(self, letter: str, member: str, *args) -> int:
        views = self.step(letter, member, *args)
        return next(v[1] for v in views[letter] if v[0] == "reply")


N = "org.example.Contested"


def test_first_request_makes_the_primary_owner_and_everyone_hears_of_it(clients):
    scene = Scene(clients, "ABO", (N + ".First",))
    views = scene.step("A", "RequestName", N + ".First", 0)
    # dbus-daemon's order: NameOwnerChanged, NameAcquired, and only then the reply.
    assert views["A"] == [("NameOwnerChanged", N + ".First", "", "A"), ("NameAcquired", N + ".First"),
                          ("reply", PRIMARY_OWNER)]
    assert views["B"] == views["O"] == [("NameOwnerChanged", N + ".First", "", "A")]
    assert scene["O"].driver_value("GetNameOwner", "s", [N + ".First"]) == scene["A"].unique_name


def test_queueing_replacement_and_release_in_dbus_daemon_order(clients):
    name = N + ".Queue"
    s = Scene(clients, "ABCO", (name,))
    quiet = {"A": [], "B": [], "C": [], "O": []}

    assert s.step("A", "RequestName", name, 0)["A"][-1] == ("reply", PRIMARY_OWNER)
    assert s.step("B", "RequestName", name, 0) == {**quiet, "B": [("reply", IN_QUEUE)]}
    assert s.step("C", "RequestName", name, DO_NOT_QUEUE) == {**quiet, "C": [("reply", EXISTS)]}
    # A does not allow replacement: B's REPLACE_EXISTING only keeps it queued.
    assert s.step("B", "RequestName", name, REPLACE_EXISTING) == {**quiet, "B": [("reply", IN_QUEUE)]}
    assert s.step("A", "RequestName", name, ALLOW_REPLACEMENT) == {**quiet, "A": [("reply", ALREADY_OWNER)]}
    # Now it does: B takes over; A goes to the head of the queue behind B.
    changed = ("NameOwnerChanged", name, "A", "B")
    assert s.step("B", "RequestName", name, REPLACE_EXISTING) == {
        "A": [("NameLost", name), changed],
        "B": [changed, ("NameAcquired", name), ("reply", PRIMARY_OWNER)],
        "C": [changed], "O": [changed],
    }
    assert s["O"].driver_value("ListQueuedOwners", "s", [name]) == [s["B"].unique_name, s["A"].unique_name]
    # B did not allow replacement (its last request had no ALLOW_REPLACEMENT).
    assert s.step("A", "RequestName", name, REPLACE_EXISTING) == {**quiet, "A": [("reply", IN_QUEUE)]}
    # A failed REPLACE_EXISTING still puts the requester next in line.
    assert s.step("C", "RequestName", name, REPLACE_EXISTING | ALLOW_REPLACEMENT) == \
        {**quiet, "C": [("reply", IN_QUEUE)]}
    assert s["O"].driver_value("ListQueuedOwners", "s", [name]) == \
        [s["B"].unique_name, s["C"].unique_name, s["A"].unique_name]
    # The primary owner releases: the head of the queue is promoted.
    changed = ("NameOwnerChanged", name, "B", "C")
    assert s.step("B", "ReleaseName", name) == {
        "A": [changed],
        "B": [("NameLost", name), changed, ("reply", RELEASED)],
        "C": [changed, ("NameAcquired", name)],
        "O": [changed],
    }
    assert s.step("B", "ReleaseName", name) == {**quiet, "B": [("reply", NOT_OWNER)]}
    # C allows replacement now: A's REPLACE_EXISTING takes over, and C waits next in line.
    changed = ("NameOwnerChanged", name, "C", "A")
    assert s.step("A", "RequestName", name, REPLACE_EXISTING) == {
        "A": [changed, ("NameAcquired", name), ("reply", PRIMARY_OWNER)],
        "B": [changed],
        "C": [("NameLost", name), changed],
        "O": [changed],
    }
    assert s["O"].driver_value("ListQueuedOwners", "s", [name]) == [s["A"].unique_name, s["C"].unique_name]
    # A queued owner leaves the queue without a signal.
    assert s.step("C", "ReleaseName", name) == {**quiet, "C": [("reply", RELEASED)]}
    changed = ("NameOwnerChanged", name, "A", "")
    assert s.step("A", "ReleaseName", name) == {
        "A": [("NameLost", name), changed, ("reply", RELEASED)],
        "B": [changed], "C": [changed], "O": [changed],
    }
    assert s.step("A", "ReleaseName", name) == {**quiet, "A": [("reply", NON_EXISTENT)]}


def test_replacing_an_owner_that_would_not_queue_drops_it(clients):
    name = N + ".NoQueue"
    s = Scene(clients, "ABO", (name,))
    s.step("A", "RequestName", name, ALLOW_REPLACEMENT | DO_NOT_QUEUE)
    changed = ("NameOwnerChanged", name, "A", "B")
    assert s.step("B", "RequestName", name, REPLACE_EXISTING) == {
        "A": [("NameLost", name), changed],
        "B": [changed, ("NameAcquired", name), ("reply", PRIMARY_OWNER)],
        "O": [changed],
    }
    assert s["O"].driver_value("ListQueuedOwners", "s", [name]) == [s["B"].unique_name]


def test_do_not_queue_takes_a_waiting_connection_out_of_the_queue(clients):
    name = N + ".Requeue"
    s = Scene(clients, "ABO", (name,))
    s.step("A", "RequestName", name, 0)
    assert s.reply("B", "RequestName", name, 0) == IN_QUEUE
    assert s.reply("B", "RequestName", name, DO_NOT_QUEUE) == EXISTS
    assert s["O"].driver_value("ListQueuedOwners", "s", [name]) == [s["A"].unique_name]
    assert s.reply("B", "ReleaseName", name) == NOT_OWNER


def test_replace_existing_with_do_not_queue_takes_over_a_replaceable_owner(clients):
    name = N + ".Swap"
    s = Scene(clients, "ABCO", (name,))
    s.step("A", "RequestName", name, ALLOW_REPLACEMENT | DO_NOT_QUEUE)
    s.step("B", "RequestName", name, REPLACE_EXISTING)
    assert s.reply("A", "RequestName", name, 0) == IN_QUEUE
    assert s.reply("C", "RequestName", name, REPLACE_EXISTING | DO_NOT_QUEUE) == EXISTS
    assert s.reply("B", "RequestName", name, ALLOW_REPLACEMENT) == ALREADY_OWNER
    changed = ("NameOwnerChanged", name, "B", "C")
    assert s.step("C", "RequestName", name, REPLACE_EXISTING | DO_NOT_QUEUE) == {
        "A": [changed],
        "B": [("NameLost", name), changed],
        "C": [changed, ("NameAcquired", name), ("reply", PRIMARY_OWNER)],
        "O": [changed],
    }
    # B allowed replacement without DO_NOT_QUEUE, so it waits at the head of the queue.
    assert s["O"].driver_value("ListQueuedOwners", "s", [name]) == \
        [s["C"].unique_name, s["B"].unique_name, s["A"].unique_name]


def test_disconnect_promotes_queued_owners_and_releases_names_last_first(clients):
    names = tuple(f"{N}.Disconnect{i}" for i in (2, 1, 3, 4))
    s = Scene(clients, "ABO", names)
    watch_name(s["B"], s["A"].unique_name)
    for name in names:
        s.step("A", "RequestName", name, 0)
    s.step("B", "RequestName", names[1], 0)
    s.step("B", "RequestName", names[3], 0)
    a = s["A"].unique_name
    s["A"].close()
    last = wait_owner(s["B"], a, "")
    seen = [s.show(m, None) for m in [*s["B"].backlog, last]]
    s["B"].backlog.clear()
    # dbus-daemon releases the names in the reverse order they were requested, then the unique name.
    assert seen == [
        ("NameOwnerChanged", names[3], "A", "B"), ("NameAcquired", names[3]),
        ("NameOwnerChanged", names[2], "A", ""),
        ("NameOwnerChanged", names[1], "A", "B"), ("NameAcquired", names[1]),
        ("NameOwnerChanged", names[0], "A", ""),
        ("NameOwnerChanged", "A", "A", ""),
    ]
    assert s["B"].driver_value("GetNameOwner", "s", [names[1]]) == s["B"].unique_name
    assert s["B"].driver_value("NameHasOwner", "s", [names[0]]) is False


def test_queued_connection_that_disconnects_just_leaves_the_queue(clients):
    name = N + ".QueuedLeaves"
    s = Scene(clients, "ABCO", (name,))
    s.step("A", "RequestName", name, 0)
    s.step("B", "RequestName", name, 0)
    s.step("C", "RequestName", name, 0)
    b = s["B"].unique_name
    watch_name(s["O"], b)
    s["B"].close()
    wait_owner(s["O"], b, "")
    assert s["O"].driver_value("ListQueuedOwners", "s", [name]) == [s["A"].unique_name, s["C"].unique_name]
    changed = ("NameOwnerChanged", name, "A", "C")
    assert s.step("A", "ReleaseName", name)["C"] == [changed, ("NameAcquired", name)]


@pytest.mark.parametrize("name, error", [
    (DBUS, "InvalidArgs"), (":1.5", "InvalidArgs"), ("not..valid", "InvalidArgs"), ("nodots", "InvalidArgs"),
    ("org.example.9digit", "InvalidArgs"), ("", "InvalidArgs"),
])
def test_names_that_cannot_be_requested(clients, name, error):
    assert clients().driver_error("RequestName", "su", [name, 0]) == ERROR_PREFIX + error


@pytest.mark.parametrize("name", [DBUS, ":1.5", "not..valid", ""])
def test_names_that_cannot_be_released(clients, name):
    assert clients().driver_error("ReleaseName", "s", [name]) == ERROR_PREFIX + "InvalidArgs"


def test_unknown_flag_bits_are_ignored(clients):
    client = clients()
    assert client.request_name(N + ".Flags", 0xFFFFFFF8) == PRIMARY_OWNER


def test_well_known_names_show_in_list_names_until_released(clients):
    client = clients()
    client.request_name(N + ".Listed")
    assert N + ".Listed" in client.driver_value("ListNames")
    client.release_name(N + ".Listed")
    assert N + ".Listed" not in client.driver_value("ListNames")


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_max_names_per_connection(kind):
    with running_bus(kind, '<limit name="max_names_per_connection">3</limit>') as bus, \
            RawClient(bus.address) as client, RawClient(bus.address) as owner:
        owner.request_name(N + ".Limit3")
        # Like dbus-daemon, the unique name counts, and so does a place in a queue.
        assert client.request_name(N + ".Limit1") == PRIMARY_OWNER
        assert client.request_name(N + ".Limit3") == IN_QUEUE
        assert client.driver_error("RequestName", "su", [N + ".Limit2", 0]) == ERROR_PREFIX + "LimitsExceeded"
        assert client.driver_error("RequestName", "su", [N + ".Limit1", 0]) == ERROR_PREFIX + "LimitsExceeded"
        client.release_name(N + ".Limit1")
        assert client.request_name(N + ".Limit2") == PRIMARY_OWNER
