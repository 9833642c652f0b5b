"""The resource limits the bus enforces: dbus-daemon's <limit> names, as one frozen value.

The launcher produces it from the configuration (`LimitSettings.to_bus_limits()`);
the defaults are dbus-daemon's session-bus values, for a bus started without one.
Times are in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
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


__all__ = ["Limits"]
