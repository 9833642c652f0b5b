"""The model of a dbus-daemon style bus configuration, as the daemon consumes it.

Frozen dataclasses: the parser builds them from checked text, so they only need
to be immutable and to refuse a value outside its Literal. (They were pydantic
models: importing pydantic was 11 MiB of the daemon's RSS and half its start time.)
"""

from __future__ import annotations

from dataclasses import fields
from typing import Literal, get_args

from ..bus.limits import Limits
from ..wire.records import field, record
from ..wire.message import MAX_MESSAGE_SIZE, MAX_MESSAGE_UNIX_FDS

MessageTypeName = Literal["method_call", "method_return", "error", "signal"]
RuleKind = Literal["send", "receive", "own", "user", "group"]

BUSD_NAMESPACE = "https://busd.dev/config"


_frozen = record(frozen=True, kw_only=True)


def _check_choice(owner: object, name: str, allowed: object) -> None:
    value = getattr(owner, name)
    if value is not None and value not in get_args(allowed):
        raise ValueError(f"{type(owner).__name__}.{name} must be one of {get_args(allowed)}, not {value!r}")


@_frozen
class LimitSettings:
    """Resource limits (<limit name="...">); defaults are dbus-daemon's built-in ones.

    Those built-in values are what the system bus runs with; the session bus
    overrides many of them in its config file (see SESSION_LIMITS). Times are
    in milliseconds. `to_bus_limits()` gives the bus the ones it enforces.
    """

    max_incoming_bytes: int = 127 * 1024 * 1024
    max_incoming_unix_fds: int = 64
    max_outgoing_bytes: int = 127 * 1024 * 1024
    max_outgoing_unix_fds: int = 64
    max_message_size: int = 32 * 1024 * 1024
    max_message_unix_fds: int = 16
    service_start_timeout: int = 25_000
    auth_timeout: int = 5_000
    pending_fd_timeout: int = 150_000
    max_completed_connections: int = 2048
    max_incomplete_connections: int = 64
    max_connections_per_user: int = 256
    max_pending_service_starts: int = 512
    max_names_per_connection: int = 512
    max_match_rules_per_connection: int = 512
    max_replies_per_connection: int = 128
    reply_timeout: int = -1  # never
    max_containers: int = 512
    max_containers_per_user: int = 16
    max_container_metadata_bytes: int = 4096
    max_connections_per_container: int = 8
    # busd's own: per-user quotas of the ledger; None derives each from its per-connection limit
    # (busd.bus.limits says how). dbus-daemon does not know these names.
    max_outgoing_bytes_per_user: int | None = None
    max_outgoing_unix_fds_per_user: int | None = None
    max_incoming_bytes_per_user: int | None = None
    max_incoming_unix_fds_per_user: int | None = None
    max_match_rules_per_user: int | None = None
    max_names_per_user: int | None = None
    max_replies_per_user: int | None = None
    max_incomplete_connections_per_user: int | None = None

    def to_bus_limits(self) -> Limits:
        """The limits as the bus enforces them (the container limits have no meaning to busd)."""
        values = {f.name: getattr(self, f.name) for f in fields(Limits)}
        # The specification caps messages at 128 MiB whatever a config says (session.conf says 1e9).
        values["max_message_size"] = min(values["max_message_size"], MAX_MESSAGE_SIZE)
        if values["reply_timeout"] < 0:
            values["reply_timeout"] = 10 ** 12  # "never", as dbus-daemon treats a negative timeout
        return Limits(**values)


    def as_dict(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in LIMIT_NAMES}


LIMIT_NAMES = tuple(f.name for f in fields(LimitSettings))

# Limits whose values dbus-daemon keeps in a C int; the others are longs.
INT_LIMITS = frozenset(LIMIT_NAMES) - {
    "max_incoming_bytes", "max_incoming_unix_fds", "max_outgoing_bytes", "max_outgoing_unix_fds",
    "max_message_size", "max_message_unix_fds", "max_outgoing_bytes_per_user", "max_outgoing_unix_fds_per_user",
    "max_incoming_bytes_per_user", "max_incoming_unix_fds_per_user",
}

# What dbus-daemon's stock session.conf sets: "essentially infinite" limits.
SESSION_LIMITS = LimitSettings(
    max_incoming_bytes=1_000_000_000,
    max_incoming_unix_fds=250_000_000,
    max_outgoing_bytes=1_000_000_000,
    max_outgoing_unix_fds=250_000_000,
    max_message_size=1_000_000_000,
    service_start_timeout=120_000,
    auth_timeout=240_000,
    pending_fd_timeout=150_000,
    max_completed_connections=100_000,
    max_incomplete_connections=10_000,
    max_connections_per_user=100_000,
    max_pending_service_starts=10_000,
    max_names_per_connection=50_000,
    max_match_rules_per_connection=50_000,
    max_replies_per_connection=50_000,
)


@_frozen
class PolicyRule:
    """One <allow> or <deny>. A field left None matches anything (also written "*").

    `kind` says when the rule is consulted: "send"/"receive" for each message,
    "own" for RequestName, "user"/"group" when a connection is accepted.
    """

    allow: bool
    kind: RuleKind
    send_interface: str | None = None
    send_member: str | None = None
    send_error: str | None = None
    send_destination: str | None = None
    send_destination_prefix: str | None = None
    send_path: str | None = None
    send_type: MessageTypeName | None = None
    send_broadcast: bool | None = None
    send_requested_reply: bool | None = None
    receive_interface: str | None = None
    receive_member: str | None = None
    receive_error: str | None = None
    receive_sender: str | None = None
    receive_path: str | None = None
    receive_type: MessageTypeName | None = None
    receive_requested_reply: bool | None = None
    eavesdrop: bool = False
    max_fds: int = MAX_MESSAGE_UNIX_FDS
    min_fds: int = 0
    own: str | None = None
    own_prefix: str | None = None
    user: str | None = None
    uid: int | None = None
    group: str | None = None
    gid: int | None = None
    log: bool = False
    file: str
    line: int

    def __post_init__(self) -> None:
        _check_choice(self, "kind", RuleKind)
        _check_choice(self, "send_type", MessageTypeName)
        _check_choice(self, "receive_type", MessageTypeName)

    @property
    def requested_reply(self) -> bool:
        """The effective [send|receive]_requested_reply; dbus-daemon defaults it to `allow`."""
        given = self.send_requested_reply if self.kind == "send" else self.receive_requested_reply
        return self.allow if given is None else given

    @property
    def origin(self) -> str:
        return f"{self.file}:{self.line}"


@_frozen
class Policy:
    """One <policy> element: exactly one of context, user, group or at_console is set."""

    context: Literal["default", "mandatory"] | None = None
    user: str | None = None
    uid: int | None = None
    group: str | None = None
    gid: int | None = None
    at_console: bool | None = None
    rules: tuple[PolicyRule, ...] = ()
    file: str
    line: int

    def __post_init__(self) -> None:
        _check_choice(self, "context", Literal["default", "mandatory"])

    @property
    def applies_to(self) -> Literal["default", "mandatory", "user", "group", "console"]:
        if self.context is not None:
            return self.context
        if self.uid is not None:
            return "user"
        if self.gid is not None:
            return "group"
        return "console"


@_frozen
class ServiceDir:
    """A directory of .service files for activation.

    `transient` is $XDG_RUNTIME_DIR/dbus-1/services: it is not watched for
    changes and its files must be named exactly after the bus name.
    """

    path: str
    transient: bool = False


@_frozen
class ConfigNote:
    """Something the daemon should log: ignored or unsupported configuration."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@_frozen
class SelinuxAssociation:
    """<selinux><associate own="..." context="..."/></selinux>; busd does not enforce it."""

    own: str
    context: str
    file: str
    line: int


@_frozen
class ExtensionElement:
    """An element in busd's own XML namespace, kept for the feature that reads it."""

    name: str
    attributes: dict[str, str] = field(default_factory=dict)
    text: str = ""
    children: tuple[ExtensionElement, ...] = ()
    file: str
    line: int


@_frozen
class BusConfig:
    """A whole configuration: the top file with everything it includes, merged."""

    type: str | None = None
    user: str | None = None
    fork: bool = False
    keep_umask: bool = False
    syslog: bool = False
    allow_anonymous: bool = False
    pidfile: str | None = None
    listen: tuple[str, ...] = ()
    auth: tuple[str, ...] = ()
    servicedirs: tuple[ServiceDir, ...] = ()
    servicehelper: str | None = None
    includedirs: tuple[str, ...] = ()  # existing <includedir>s: watch them to reload
    files: tuple[str, ...] = ()  # every file read, the top one first
    limits: LimitSettings = field(default_factory=LimitSettings)
    policies: tuple[Policy, ...] = ()
    apparmor_mode: Literal["enabled", "disabled", "required"] | None = None
    selinux: tuple[SelinuxAssociation, ...] = ()
    extensions: tuple[ExtensionElement, ...] = ()
    notes: tuple[ConfigNote, ...] = ()

    def __post_init__(self) -> None:
        _check_choice(self, "apparmor_mode", Literal["enabled", "disabled", "required"])

    def rules(self, applies_to: str) -> list[PolicyRule]:
        """Rules of every policy of one kind ("default", "mandatory", ...), in file order."""
        return [rule for policy in self.policies if policy.applies_to == applies_to for rule in policy.rules]


__all__ = [
    "BUSD_NAMESPACE", "BusConfig", "ConfigNote", "ExtensionElement", "INT_LIMITS", "LIMIT_NAMES", "LimitSettings",
    "MAX_MESSAGE_UNIX_FDS", "MessageTypeName", "Policy", "PolicyRule", "RuleKind", "SESSION_LIMITS",
    "SelinuxAssociation", "ServiceDir",
]
