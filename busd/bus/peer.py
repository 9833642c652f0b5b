"""The bus's record of one authenticated connection: its names, its reply bookkeeping, its policy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .ports import PeerLink

if TYPE_CHECKING:
    from .ledger import UserLedger
    from .match import MatchRule
    from .policy import PeerPolicy


class Peer:
    """The bus side of one authenticated connection; `conn` is its transport, seen through the PeerLink port."""

    __slots__ = ("conn", "unique_name", "names", "sender_fields", "hello_done", "monitor",
                 "monitor_rules", "expecting", "replies_outstanding", "credentials", "serial_in",
                 "match_count", "peak_match_count", "policy", "auth_uid", "calling",
                 "user", "out_charged", "fds_charged", "names_charged", "peak_names", "peak_replies", "peak_fds",
                 "refusing", "reply_seconds", "replies_answered",
                 "__weakref__")

    policy: PeerPolicy  # set by the bus when the peer authenticates, replaced on a policy reload

    def __init__(self, conn: PeerLink):
        self.conn = conn
        self.unique_name: str | None = None
        self.names: set[str] = set()  # unique name + primary-owned well-known names
        self.sender_fields: dict[int, bytes] = {}  # the SENDER header field, marshalled once per byte order
        self.hello_done = False
        self.monitor = False
        self.monitor_rules: tuple[MatchRule, ...] = ()  # the shared empty tuple until BecomeMonitor
        # The keys of the calls this peer must answer (replies.py), in the order they came: a dict used as
        # an ordered set (an empty set is 216 bytes, an empty dict 64, and most peers never answer a call).
        self.expecting: dict[tuple[Peer, int, Peer], None] = {}
        self.replies_outstanding = 0  # calls this peer made that await an answer
        # their keys, each with when it was made (time.monotonic()): dropped when this peer leaves
        self.calling: dict[tuple[Peer, int, Peer], float] = {}
        self.credentials = conn.credentials
        self.auth_uid: int | None = conn.credentials.uid
        self.serial_in = 0
        self.match_count = 0
        self.peak_match_count = 0
        # The per-user ledger (ledger.py): the uid's lines, and what this peer has charged to them.
        self.user: UserLedger | None = None
        self.out_charged = 0  # bytes queued toward this peer, as last charged or settled
        self.fds_charged = 0
        self.names_charged = 0  # well-known names owned or queued for
        self.peak_names = 0
        self.peak_replies = 0
        self.peak_fds = 0  # (kept lazily: when the queue's fds go down)
        self.refusing = False  # a refusal was logged and the queue has not drained since (one line per episode)
        # Calls this peer answered, and how long they took in all (kept only with the metrics: replies.py).
        self.reply_seconds = 0.0
        self.replies_answered = 0

    def __repr__(self) -> str:
        return f"<Peer {self.unique_name or self.conn.label}>"


__all__ = ["Peer"]
