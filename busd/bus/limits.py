"""The resource limits the bus enforces: dbus-daemon's <limit> names, as one frozen value.

The launcher produces it from the configuration (`LimitSettings.to_bus_limits()`);
the defaults are dbus-daemon's session-bus values, for a bus started without one.
Times are in milliseconds.

The `*_per_user` limits are busd's own: quotas of the per-user ledger (ledger.py),
what all the connections of one uid may hold together. Left None, each is
derived from the per-connection limit it extends (`user_quotas()`), so that one
connection can always use its whole per-connection allowance, as on dbus-daemon:

- bytes queued toward a uid's connections: 4 x max_outgoing_bytes, at least
  512 MiB (dbus-broker's per-user default); the system bus: 512 MiB;
- fds queued toward them: 4 x max_outgoing_unix_fds, at least 1024; the system
  bus: 1024, far below the daemon's fd limit;
- bytes and fds read from a uid's connections that are not yet whole messages
  (partial messages, input held back while a body is checked, fds not yet
  claimed): 4 x max_message_size, at least 512 MiB, and 4 x max_message_unix_fds,
  at least 1024; one over the quota disconnects the connection that passed it;
- match rules, names and pending replies: the per-connection limit, at least
  16384 (dbus-broker's per-user match-rule default); the system bus: 16384 each;
- connections: max_connections_per_user (dbus-daemon's, unchanged);
- incomplete connections: max_incomplete_connections (one uid may take them all,
  as on dbus-daemon, unless a config says less).
"""

from __future__ import annotations

from ..wire.records import record


@record(frozen=True)
class UserQuotas:
    """What one uid may hold at once, per ledger line (ledger.py)."""

    outgoing_bytes: int
    outgoing_fds: int
    incoming_bytes: int
    incoming_fds: int
    match_rules: int
    names: int
    pending_replies: int
    connections: int
    incomplete_connections: int

    def of(self, line: str) -> int:
        """The quota of a ledger line, by its name in ledger.LINES."""
        return {"OutgoingBytes": self.outgoing_bytes, "OutgoingFDs": self.outgoing_fds,
                "IncomingBytes": self.incoming_bytes, "IncomingFDs": self.incoming_fds,
                "MatchRules": self.match_rules, "Names": self.names, "PendingReplies": self.pending_replies,
                "Connections": self.connections, "IncompleteConnections": self.incomplete_connections}[line]


@record(frozen=True)
class Limits:
    max_incoming_bytes: int = 1_000_000_000
    max_incoming_unix_fds: int = 250_000_000
    max_outgoing_bytes: int = 1_000_000_000
    max_outgoing_unix_fds: int = 250_000_000
    max_message_size: int = 1 << 27
    max_message_unix_fds: int = 1024
    service_start_timeout: int = 120_000
    auth_timeout: int = 240_000
    pending_fd_timeout: int = 150_000
    max_completed_connections: int = 100_000
    max_incomplete_connections: int = 10_000
    max_connections_per_user: int = 100_000
    max_pending_service_starts: int = 10_000
    max_names_per_connection: int = 50_000
    max_match_rules_per_connection: int = 50_000
    max_replies_per_connection: int = 50_000
    reply_timeout: int = 300_000
    max_outgoing_bytes_per_user: int | None = None
    max_outgoing_unix_fds_per_user: int | None = None
    max_incoming_bytes_per_user: int | None = None
    max_incoming_unix_fds_per_user: int | None = None
    max_match_rules_per_user: int | None = None
    max_names_per_user: int | None = None
    max_replies_per_user: int | None = None
    max_incomplete_connections_per_user: int | None = None

    def user_quotas(self) -> UserQuotas:
        """The per-user quotas: the configured ones, the others derived as the module says."""
        def given(value: int | None, derived: int) -> int:
            return derived if value is None else value

        return UserQuotas(
            outgoing_bytes=given(self.max_outgoing_bytes_per_user, max(4 * self.max_outgoing_bytes, 512 << 20)),
            outgoing_fds=given(self.max_outgoing_unix_fds_per_user, max(4 * self.max_outgoing_unix_fds, 1024)),
            incoming_bytes=given(self.max_incoming_bytes_per_user, max(4 * self.max_message_size, 512 << 20)),
            incoming_fds=given(self.max_incoming_unix_fds_per_user, max(4 * self.max_message_unix_fds, 1024)),
            match_rules=given(self.max_match_rules_per_user, max(self.max_match_rules_per_connection, 16384)),
            names=given(self.max_names_per_user, max(self.max_names_per_connection, 16384)),
            pending_replies=given(self.max_replies_per_user, max(self.max_replies_per_connection, 16384)),
            connections=self.max_connections_per_user,
            incomplete_connections=given(self.max_incomplete_connections_per_user, self.max_incomplete_connections),
        )


__all__ = ["Limits", "UserQuotas"]
