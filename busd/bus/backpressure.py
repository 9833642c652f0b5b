"""Back-pressure: a recipient whose queue is over the soft limit holds back the senders that filled it.

Both directions of one relation are kept, so either side leaving releases the
other: `held` maps a recipient to the senders it holds back, `holders` a sender
to the recipients holding it back. A held sender's link is told hold_input();
once every recipient holding it has drained to half the soft limit, release_input().
"""

from __future__ import annotations

from .ports import PeerLink


class BackPressure:
    """Who holds whose input, for one bus."""

    __slots__ = ("held", "holders", "holds")

    def __init__(self) -> None:
        self.holds = 0  # times a sender was held back by a recipient (the metrics')
        self.held: dict[PeerLink, set[PeerLink]] = {}  # recipient -> senders it holds back
        self.holders: dict[PeerLink, set[PeerLink]] = {}  # sender -> recipients holding it back

    def hold(self, sender: PeerLink, recipient: PeerLink) -> None:
        """Read no more from `sender` until `recipient` catches up."""
        held = self.held.get(recipient)
        if held is None:
            held = self.held[recipient] = set()
        if sender not in held:
            self.holds += 1
        held.add(sender)
        holders = self.holders.get(sender)
        if holders is None:
            holders = self.holders[sender] = set()
        holders.add(recipient)
        sender.hold_input()

    def release(self, recipient: PeerLink) -> None:
        """`recipient` caught up (or left): the senders it alone held read again."""
        for sender in self.held.pop(recipient):
            holders = self.holders.get(sender)
            if holders is None:
                continue
            holders.discard(recipient)
            if not holders:
                del self.holders[sender]
                sender.release_input()

    def forget(self, link: PeerLink) -> None:
        """`link` is gone, as a recipient and as a sender."""
        if link in self.held:
            self.release(link)
        for recipient in self.holders.pop(link, ()):
            held = self.held.get(recipient)
            if held is not None:
                held.discard(link)


__all__ = ["BackPressure"]
