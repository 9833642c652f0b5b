"""Live test: eight busd nodes on one nats-server agree on names while nodes join and leave (SIGTERM and SIGKILL).

Each node has a client owning dev.busd.Fed.Churn.<node> and asking for the contended
dev.busd.Fed.Churn.Shared (queued where another node owns it). Every live node must
list exactly the live nodes' names, and all must name the same node as the owner of
the shared name, before and after the churn, and after its owner's node is gone.
"""

import pytest

from federation_nodes import FED, TIMEOUT, NatsServer, Node, eventually, origin_of

CHURN = f"{FED}.Churn"
SHARED = f"{CHURN}.Shared"


class Member:
    """A node and its client (owning CHURN.<node>, queued for SHARED)."""

    def __init__(self, server: NatsServer, name: str):
        self.name = name
        self.node = Node(server, name)
        self.client = self.node.client()
        assert self.client.request_name(f"{CHURN}.{name}") == 1
        assert self.client.request_name(SHARED) in (1, 2)  # primary, or queued behind another node's owner

    def names(self) -> set[str]:
        return {name for name in self.client.driver_value("ListNames") if name.startswith(f"{CHURN}.")}

    def shared_owner(self) -> str | None:
        origin = origin_of(self.client, SHARED)
        return self.name if origin == "" else origin

    def leave(self, kill: bool) -> None:
        self.client.close()
        if kill:
            self.node.kill()
        else:
            self.node.stop()


def agreed(members: list[Member]) -> bool:
    """Every member lists exactly the members' names, and they name one shared owner among them."""
    expected = {f"{CHURN}.{m.name}" for m in members} | {SHARED}
    if any(m.names() != expected for m in members):
        return False
    owners = {m.shared_owner() for m in members}
    return len(owners) == 1 and owners.pop() in {m.name for m in members}


@pytest.mark.live
def test_eight_nodes_agree_on_names_through_churn():
    server = NatsServer()
    members: list[Member] = []
    try:
        for index in range(8):
            members.append(Member(server, f"n{index}"))
        eventually(lambda: agreed(members), "8 nodes agree on names and the shared owner", 3 * TIMEOUT)
        first_owner = members[0].shared_owner()
        assert first_owner == "n0"  # the first to claim it; the others queued

        # Churn: the shared name's owner says goodbye, one node is SIGKILLed, two join.
        leaving = [m for m in members if m.name in ("n0", "n3")]
        for member in leaving:
            member.leave(kill=member.name == "n3")
            members.remove(member)
        members.append(Member(server, "n8"))
        members.append(Member(server, "n9"))
        eventually(lambda: agreed(members), "the nodes left agree again after churn", 3 * TIMEOUT)
        assert members[0].shared_owner() not in ("n0", "n3")

        # And again: whoever owns the shared name now leaves.
        owner = next(m for m in members if m.name == members[0].shared_owner())
        owner.leave(kill=True)
        members.remove(owner)
        eventually(lambda: agreed(members), "the nodes agree on the next shared owner", 3 * TIMEOUT)
    finally:
        for member in members:
            member.client.close()
            if member.node.bus.process.poll() is None:
                member.node.stop()
        server.stop()
