"""The org.freedesktop.DBus driver: the bus's own object, as a table of methods.

Each row maps (interface, member) to the input signature and a handler. A handler
returns (output signature, values) or raises DriverError; adding a method is
adding a row. Interfaces served at every object path follow dbus-daemon: the
org.freedesktop.DBus interface, Introspectable and Peer everywhere, the rest only
at /org/freedesktop/DBus.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..interfaces import introspection_xml
from ..wire.errors import ProtocolError
from ..wire.marshal import Variant
from ..wire.message import ERROR, METHOD_RETURN, Header, build_message, read_body
from ..wire.names import is_valid_bus_name
from ..wire.wellknown import (
    DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH, INTROSPECTABLE_INTERFACE, MONITORING_INTERFACE, PEER_INTERFACE,
    PROPERTIES_INTERFACE, STATS_INTERFACE,
)
from . import errors
from .errors import DriverError
from .ports import Credentials
from .match import MatchRule, MatchRuleInvalid, MatchRuleNotFound
from .ownership import NameEvent

if TYPE_CHECKING:
    from .activation import PendingStarts
    from .core import Bus, Peer

log = logging.getLogger("busd.driver")

EVERYWHERE = {DRIVER_INTERFACE, INTROSPECTABLE_INTERFACE, PEER_INTERFACE}

FEATURES = ["ActivatableServicesChanged", "HeaderFiltering"]
EXTRA_INTERFACES = [MONITORING_INTERFACE, STATS_INTERFACE]

# What libdbus answers to Introspect at any path of a connection that exports no objects.
EMPTY_INTROSPECTION = ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
                       '"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n<node>\n</node>\n')

Handler = Callable[["Peer", Header, list], tuple[str, list]]


@dataclass(frozen=True)
class DriverMethod:
    """One row of the driver's table; the dispatcher checks the signature and privilege before `handler` runs.

    Every method needs Hello first (the bus answers anything else before Hello itself). `privileged`:
    only root or the bus's own user may call it; `driver_path_only`: and only at DRIVER_PATH.
    """

    interface: str
    member: str
    in_signature: str
    handler: Handler
    privileged: bool = False
    driver_path_only: bool = False


def _load_introspection() -> str:
    return introspection_xml(DRIVER_NAME)


def machine_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if len(text) == 32:
            return text
    return "0" * 32


class Driver:
    """org.freedesktop.DBus, served by the bus itself."""

    def __init__(self, bus: "Bus"):
        self.bus = bus
        self.introspection = _load_introspection()
        self.machine_id = machine_id()
        self.activation: PendingStarts | None = None  # the names being started, once a launcher is attached
        self.activation_environment: dict[str, str] = {}
        self.features: list[str] = list(FEATURES)  # activation adds "SystemdActivation" when it is on
        # Properties served at DRIVER_PATH, by interface; other components (the bridge) add theirs.
        self.property_sources: dict[str, Callable[[], dict[str, Variant]]] = {DRIVER_INTERFACE: self._properties}
        D, PROPS, INTRO, PEER, MON, STATS = (DRIVER_INTERFACE, PROPERTIES_INTERFACE, INTROSPECTABLE_INTERFACE,
                                              PEER_INTERFACE, MONITORING_INTERFACE, STATS_INTERFACE)
        rows = [
            DriverMethod(D, "Hello", "", self.hello_again),
            DriverMethod(D, "RequestName", "su", self.request_name),
            DriverMethod(D, "ReleaseName", "s", self.release_name),
            DriverMethod(D, "StartServiceByName", "su", self.start_service_by_name),
            DriverMethod(D, "UpdateActivationEnvironment", "a{ss}", self.update_activation_environment,
                         privileged=True, driver_path_only=True),
            DriverMethod(D, "NameHasOwner", "s", self.name_has_owner),
            DriverMethod(D, "ListNames", "", self.list_names),
            DriverMethod(D, "ListActivatableNames", "", self.list_activatable_names),
            DriverMethod(D, "AddMatch", "s", self.add_match),
            DriverMethod(D, "RemoveMatch", "s", self.remove_match),
            DriverMethod(D, "GetNameOwner", "s", self.get_name_owner),
            DriverMethod(D, "ListQueuedOwners", "s", self.list_queued_owners),
            DriverMethod(D, "GetConnectionUnixUser", "s", self.get_connection_unix_user),
            DriverMethod(D, "GetConnectionUnixProcessID", "s", self.get_connection_unix_process_id),
            DriverMethod(D, "GetAdtAuditSessionData", "s", self.get_adt_audit_session_data),
            DriverMethod(D, "GetConnectionSELinuxSecurityContext", "s", self.get_selinux_context),
            DriverMethod(D, "ReloadConfig", "", self.reload_config),
            DriverMethod(D, "GetId", "", self.get_id),
            DriverMethod(D, "GetConnectionCredentials", "s", self.get_connection_credentials),
            DriverMethod(PROPS, "Get", "ss", self.properties_get),
            DriverMethod(PROPS, "GetAll", "s", self.properties_get_all),
            DriverMethod(PROPS, "Set", "ssv", self.properties_set),
            DriverMethod(INTRO, "Introspect", "", self.introspect),
            DriverMethod(PEER, "Ping", "", lambda peer, h, args: ("", [])),
            DriverMethod(PEER, "GetMachineId", "", lambda peer, h, args: ("s", [self.machine_id])),
            DriverMethod(MON, "BecomeMonitor", "asu", self.become_monitor, privileged=True),
            DriverMethod(STATS, "GetStats", "", self.get_stats),
            DriverMethod(STATS, "GetConnectionStats", "s", self.get_connection_stats),
            DriverMethod(STATS, "GetAllMatchRules", "", self.get_all_match_rules),
        ]
        self.methods: dict[tuple[str, str], DriverMethod] = {(row.interface, row.member): row for row in rows}
        self._by_member: dict[str, DriverMethod] = {}
        for row in rows:
            self._by_member.setdefault(row.member, row)

    # ------------------------------------------------------------ dispatch

    def hello(self, peer: "Peer", h: Header, buf: bytes) -> None:
        """The first message of every connection."""
        bus = self.bus
        name = bus.assign_unique_name(peer)
        peer.hello_done = True
        h.sender = name
        bus.deliver_to_monitors(peer, buf, h, None)
        bus.send_reply(peer, h.serial, "s", [name])
        bus.emit_name_events([NameEvent("owner_changed", name, None, peer),
                              NameEvent("acquired", name, None, peer)])

    def handle(self, peer: "Peer", buf: bytes, h: Header) -> None:
        bus = self.bus
        iface = h.interface
        member = h.member
        if iface is None:
            row = self._by_member.get(member)
            iface = row.interface if row else DRIVER_INTERFACE
        else:
            row = self.methods.get((iface, member))
        wants_reply = not h.no_reply_expected
        try:
            if iface not in EVERYWHERE and h.path != DRIVER_PATH or (
                    row is None and iface not in {i for i, _ in self.methods}):
                raise DriverError(errors.UNKNOWN_INTERFACE, f"{DRIVER_NAME} does not understand message {member}")
            if row is None:
                raise DriverError(errors.UNKNOWN_METHOD, f"{DRIVER_NAME} does not understand message {member}")
            if h.signature != row.in_signature:
                raise DriverError(errors.INVALID_ARGS,
                                  f"Call to {member} has wrong args ({h.signature}, expected {row.in_signature})\n")
            if row.privileged:
                self._require_privileged(peer, member, h if row.driver_path_only else None)
            args = read_body(buf, h)
            out_sig, values = row.handler(peer, h, args)
        except DriverError as exc:
            if wants_reply:
                bus.send_error(peer, h.serial, exc.name, exc.text)
            return
        except ProtocolError as exc:
            if wants_reply:
                bus.send_error(peer, h.serial, errors.INVALID_ARGS, exc.reason)
            return
        if out_sig is None:  # the handler replies later by itself
            return
        if wants_reply:
            bus.send_reply(peer, h.serial, out_sig, values)

    # ------------------------------------------------------------ helpers

    def _peer_of(self, name: str, what: str) -> "Peer":
        """The connection owning `name`; the bus itself is not a peer."""
        bus = self.bus
        target = bus.peers.get(name) if name.startswith(":") else bus.registry.owner(name)
        if target is None:
            raise DriverError(errors.NAME_HAS_NO_OWNER, f"Could not get {what} of name '{name}': no such name")
        return target

    def attach_activation(self, activation: "PendingStarts") -> None:
        """Service activation: the driver holds messages in `activation`, whose Activator starts names."""
        self.activation = activation

    def try_activation(self, peer: "Peer", h: Header, buf: bytes, fds: Any) -> bool:
        """A message to a well-known name nobody owns: True if activation took it."""
        activation = self.activation
        return activation is not None and activation.auto_start(peer, h, buf, fds)

    def answer_as_peer(self, peer: "Peer", h: Header) -> None:
        """A call with no destination: the bus's end of the connection answers as a plain peer.

        As libdbus does in dbus-daemon: org.freedesktop.DBus.Peer's Ping and GetMachineId
        and Introspectable.Introspect (of an empty object tree) work whatever the
        arguments, anything else is UnknownMethod. The answers carry no SENDER because
        no bus name sent them, and go to the caller alone: monitors see neither side.
        """
        if h.no_reply_expected:
            return
        bus = self.bus
        reply_to = {"reply_serial": h.serial}
        if h.interface == PEER_INTERFACE:
            if h.member == "Ping":
                message = build_message(METHOD_RETURN, bus.next_driver_serial(), **reply_to)
            elif h.member == "GetMachineId":
                message = build_message(METHOD_RETURN, bus.next_driver_serial(), signature="s",
                                        body=[self.machine_id], **reply_to)
            else:
                message = build_message(ERROR, bus.next_driver_serial(), error_name=errors.UNKNOWN_METHOD,
                                        signature="s", body=[f"Unknown method invoked on {PEER_INTERFACE} interface"],
                                        **reply_to)
        elif h.interface == INTROSPECTABLE_INTERFACE and h.member == "Introspect":
            message = build_message(METHOD_RETURN, bus.next_driver_serial(), signature="s",
                                    body=[EMPTY_INTROSPECTION], **reply_to)
        else:
            interface = "(null)" if h.interface is None else h.interface
            message = build_message(ERROR, bus.next_driver_serial(), error_name=errors.UNKNOWN_METHOD,
                                    signature="s",
                                    body=[f'Method "{h.member}" with signature "{h.signature}" on interface '
                                          f'"{interface}" doesn\'t exist\n'], **reply_to)
        peer.conn.queue(message, b"")

    def _require_privileged(self, peer: "Peer", method: str, h: Header | None = None) -> None:
        """Like dbus-daemon: only root or the bus's own user may monitor or change the environment,
        and only at the bus's canonical object path (hardening against loose XML policies)."""
        if h is not None and h.path != DRIVER_PATH:
            raise DriverError(errors.ACCESS_DENIED,
                              f"{method} is only allowed on the object path {DRIVER_PATH}")
        uid = peer.credentials.uid
        if uid not in (0, os.getuid()):
            raise DriverError(errors.ACCESS_DENIED,
                              f"uid {uid} is not allowed to call {method}: only the bus's own user or root may")

    # ------------------------------------------------------------ org.freedesktop.DBus

    def hello_again(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        raise DriverError(errors.FAILED, "Already handled an Hello message")

    def request_name(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        name, flags = args
        if not is_valid_bus_name(name):
            raise DriverError(errors.INVALID_ARGS, f'Requested bus name "{name}" is not valid')
        if name.startswith(":"):
            raise DriverError(errors.INVALID_ARGS,
                              f'Cannot acquire a service starting with \':\' such as "{name}"')
        if name == DRIVER_NAME:
            raise DriverError(errors.INVALID_ARGS,
                              f'Connection "{peer.unique_name}" is not allowed to own the service '
                              f'"{DRIVER_NAME}" because it is reserved for D-Bus\' use only')
        bus = self.bus
        bus.check_own(peer, name)
        limit = bus.limits.max_names_per_connection
        # Like dbus-daemon, count the unique name too, and check before looking at `name`.
        if 1 + bus.registry.queued_count(peer) >= limit:
            raise DriverError(errors.LIMITS_EXCEEDED,
                              f'Connection "{peer.unique_name}" is not allowed to own more services '
                              f"(increase limits in configuration file if required; "
                              f"max_names_per_connection={limit})")
        code, events = bus.registry.request(name, peer, flags)
        if events:
            self._reply_after_events(peer, h, "u", [code], events)
            return None, []
        return "u", [code]

    def _reply_after_events(self, peer: "Peer", h: Header, sig: str, values: list, events: list) -> None:
        """Announce name changes, then reply: as from dbus-daemon, NameAcquired comes before the answer."""
        bus = self.bus
        bus.emit_name_events(events)
        if not h.no_reply_expected:
            bus.send_reply(peer, h.serial, sig, values)

    def release_name(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        name = args[0]
        if not is_valid_bus_name(name):
            raise DriverError(errors.INVALID_ARGS, f'Given bus name "{name}" is not valid')
        if name.startswith(":"):
            raise DriverError(errors.INVALID_ARGS,
                              f'Cannot release a service starting with \':\' such as "{name}"')
        if name == DRIVER_NAME:
            raise DriverError(errors.INVALID_ARGS,
                              f'Cannot release the {DRIVER_NAME} service because it is owned by the bus')
        code, events = self.bus.registry.release(name, peer)
        if events:
            self._reply_after_events(peer, h, "u", [code], events)
            return None, []
        return "u", [code]

    def start_service_by_name(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        name, _flags = args
        bus = self.bus
        activation = self.activation
        # As dbus-daemon: only an activatable name can be started or "already running"
        # (the launcher rescans its directories on a miss).
        if activation is not None and activation.activator.is_activatable(name):
            if bus.registry.owner(name) is not None:
                return "u", [2]  # DBUS_START_REPLY_ALREADY_RUNNING
            if activation.activator.is_activatable(name, auto_start=False):
                activation.start_by_name(peer, h, name)
                return None, []
        raise DriverError(errors.SERVICE_UNKNOWN, f"The name {name} was not provided by any .service files")

    def update_activation_environment(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        if self.bus.bus_type == "system":
            raise DriverError(errors.ACCESS_DENIED, "Cannot change activation environment on a system bus.")
        # dbus-daemon accepts any name; one that no environment can hold is left out here.
        env = {key: value for key, value in args[0].items() if key and "=" not in key}
        if len(env) < len(args[0]):
            log.info("UpdateActivationEnvironment from %s: ignoring invalid names %s", peer.unique_name,
                     sorted(set(args[0]) - set(env)))
        self.activation_environment.update(env)
        if self.activation is not None:
            self.activation.activator.environment_updated(env)  # with systemd activation, systemd hears of it too
        return "", []

    def name_has_owner(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        name = args[0]
        bus = self.bus
        # An invalid name is simply not owned (dbus-daemon does not validate it here).
        owned = name == DRIVER_NAME or (
            name in bus.peers if name.startswith(":") else bus.registry.owner(name) is not None)
        return "b", [owned]

    def list_names(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        bus = self.bus
        return "as", [[DRIVER_NAME, *bus.peers.keys(), *bus.registry.names()]]

    def list_activatable_names(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        names = self.activation.activator.activatable_names() if self.activation is not None else []
        return "as", [[DRIVER_NAME, *names]]

    def add_match(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        try:
            rule = MatchRule.parse(args[0])
        except MatchRuleInvalid as exc:
            raise DriverError(exc.error_name, exc.driver_text) from None
        bus = self.bus
        limit = bus.limits.max_match_rules_per_connection
        if peer.match_count >= limit:
            raise DriverError(errors.LIMITS_EXCEEDED,
                              f'Connection "{peer.unique_name}" is not allowed to add more match rules '
                              f"(increase limits in configuration file if required; "
                              f"max_match_rules_per_connection={limit})")
        bus.matches.add(peer, rule)
        peer.match_count += 1
        peer.peak_match_count = max(peer.peak_match_count, peer.match_count)
        for observer in bus.observers:
            observer.match_added(peer, rule)
        return "", []

    def remove_match(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        try:
            rule = MatchRule.parse(args[0])
        except MatchRuleInvalid as exc:
            raise DriverError(exc.error_name, exc.driver_text) from None
        bus = self.bus
        try:
            bus.matches.remove(peer, rule)
        except MatchRuleNotFound:
            raise DriverError(errors.MATCH_RULE_NOT_FOUND,
                              "The given match rule wasn't found and can't be removed") from None
        peer.match_count -= 1
        for observer in bus.observers:
            observer.match_removed(peer, rule)
        return "", []

    def get_name_owner(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        name = args[0]
        if name == DRIVER_NAME:
            return "s", [DRIVER_NAME]
        target = self._peer_of(name, "owner")
        return "s", [target.unique_name]

    def list_queued_owners(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        name = args[0]
        if name == DRIVER_NAME:
            return "as", [[DRIVER_NAME]]
        bus = self.bus
        if name.startswith(":"):
            if name in bus.peers:
                return "as", [[name]]
            owners = []
        else:
            owners = [p.unique_name for p in bus.registry.queued_owners(name)]
        if not owners:
            raise DriverError(errors.NAME_HAS_NO_OWNER, f"Could not get owners of name '{name}': no such name")
        return "as", [owners]

    def _credentials_of(self, name: str, what: str):
        if name == DRIVER_NAME:
            return Credentials(os.getpid(), os.getuid(), os.getgid(), tuple(sorted(set(os.getgroups()))))
        return self._peer_of(name, what).credentials

    def get_connection_unix_user(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        creds = self._credentials_of(args[0], "UID")
        if creds.uid is None:
            raise DriverError(errors.FAILED, f"Could not determine UID for '{args[0]}'")
        return "u", [creds.uid]

    def get_connection_unix_process_id(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        creds = self._credentials_of(args[0], "PID")
        if creds.pid is None:
            raise DriverError(errors.UNIX_PROCESS_ID_UNKNOWN,
                              f"Could not determine PID for '{args[0]}'")
        return "u", [creds.pid]

    def get_adt_audit_session_data(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        self._credentials_of(args[0], "audit session data")
        raise DriverError(errors.ADT_AUDIT_DATA_UNKNOWN,
                          f"Could not determine audit session data for '{args[0]}'")

    def get_selinux_context(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        self._credentials_of(args[0], "security context")
        raise DriverError(errors.SELINUX_SECURITY_CONTEXT_UNKNOWN,
                          f"Could not determine security context for '{args[0]}'")

    def get_connection_credentials(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        creds = self._credentials_of(args[0], "credentials")
        result: dict[str, Variant] = {}
        if creds.uid is not None:
            result["UnixUserID"] = Variant("u", creds.uid)
        if creds.groups:
            result["UnixGroupIDs"] = Variant("au", list(creds.groups))
        if creds.pid is not None:
            result["ProcessID"] = Variant("u", creds.pid)
        return "a{sv}", [result]

    def reload_config(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        try:
            for observer in self.bus.observers:
                observer.reload_requested()
        except Exception as exc:  # a broken new config keeps the old one
            raise DriverError(errors.FAILED, f"Reloading the configuration failed: {exc}") from None
        return "", []

    def get_id(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        return "s", [self.bus.guid]

    # ------------------------------------------------------------ properties and introspection

    def _properties(self) -> dict[str, Variant]:
        return {"Features": Variant("as", self.features), "Interfaces": Variant("as", EXTRA_INTERFACES)}

    def _properties_of(self, iface: str) -> dict[str, Variant]:
        """The properties of `iface`: none for the driver's other interfaces, as with dbus-daemon."""
        source = self.property_sources.get(iface)
        if source is not None:
            return source()
        if any(iface == known for known, _ in self.methods):
            return {}
        raise DriverError(errors.UNKNOWN_INTERFACE, f'Interface "{iface}" not found')

    def _property_of(self, iface: str, name: str) -> Variant:
        props = self._properties_of(iface)
        if name not in props:
            raise DriverError(errors.UNKNOWN_PROPERTY, f'Property "{iface}.{name}" not found')
        return props[name]

    def properties_get(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        iface, name = args
        return "v", [self._property_of(iface, name)]

    def properties_get_all(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        return "a{sv}", [self._properties_of(args[0])]

    def properties_set(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        iface, name, _value = args
        self._property_of(iface, name)
        raise DriverError(errors.PROPERTY_READ_ONLY, f"Property '{iface}.{name}' cannot be set")

    def introspect(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        path = h.path
        if path == DRIVER_PATH:
            return "s", [self.introspection]
        text = self.introspection
        # Elsewhere only the interfaces served at every path, plus the way to the driver's path.
        import re
        kept = []
        for match in re.finditer(r'  <interface name="([^"]+)">.*?</interface>\n', text, re.S):
            if match.group(1) in EVERYWHERE:
                kept.append(match.group(0))
        head = text[:text.index("<node>") + len("<node>\n")]
        child = ""
        if DRIVER_PATH.startswith(path.rstrip("/") + "/"):
            rest = DRIVER_PATH[len(path.rstrip("/")) + 1:]
            child = f'  <node name="{rest}"/>\n'
        return "s", [head + "".join(kept) + child + "</node>\n"]

    # ------------------------------------------------------------ monitoring and stats

    def become_monitor(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        rule_texts, flags = args
        if flags != 0:
            raise DriverError(errors.INVALID_ARGS, "BecomeMonitor does not support any flags yet")
        rules = []
        for text in rule_texts:
            try:
                rules.append(MatchRule.parse(text).with_eavesdrop())  # monitors see unicast too
            except MatchRuleInvalid as exc:
                raise DriverError(exc.error_name, exc.driver_text) from None
        bus = self.bus
        if not h.no_reply_expected:
            bus.send_reply(peer, h.serial)
        # A monitor owns no names and has no match rules. As from dbus-daemon, it loses its
        # unique name first, then every well-known name, each with NameLost.
        name = peer.unique_name
        events = [NameEvent("lost", name, peer, None), NameEvent("owner_changed", name, peer, None)]
        events += bus.registry.remove_peer(peer)
        bus.matches.remove_owner(peer)
        peer.match_count = 0
        bus.emit_name_events(events)
        del bus.peers[name]
        peer.monitor = True
        peer.monitor_rules = rules
        bus.monitors.append(peer)
        log.info("%s became a monitor with %d match rules", name, len(rules))
        return None, []

    def get_stats(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        bus = self.bus
        match_rules = sum(p.match_count for p in bus.peers.values())
        stats = {
            "Serial": Variant("u", bus._driver_serial),
            "ActiveConnections": Variant("u", len(bus.peers)),
            "IncompleteConnections": Variant("u", bus.incomplete_connections),
            "MatchRules": Variant("u", match_rules),
            "PeakMatchRulesPerConnection": Variant("u", max((p.peak_match_count for p in bus.peers.values()),
                                                            default=0)),
            "BusNames": Variant("u", len(bus.registry.names())),
        }
        return "a{sv}", [stats]

    def get_connection_stats(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        name = args[0]
        if name == DRIVER_NAME:
            raise DriverError(errors.INVALID_ARGS,
                              f'GetConnectionStats is not meaningful for the message bus "{DRIVER_NAME}" itself')
        target = self._peer_of(name, "statistics")
        conn = target.conn
        stats = {
            "Serial": Variant("u", self.bus._driver_serial),
            "UniqueName": Variant("s", target.unique_name),
            "IncomingBytes": Variant("u", conn.in_bytes),
            "IncomingFDs": Variant("u", 0),
            "OutgoingBytes": Variant("u", conn.out_bytes),
            "OutgoingFDs": Variant("u", conn.out_fds),
            "PeakIncomingBytes": Variant("u", conn.peak_in_bytes),
            "PeakOutgoingBytes": Variant("u", conn.peak_out_bytes),
            "MatchRules": Variant("u", target.match_count),
            "PeakMatchRules": Variant("u", target.peak_match_count),
            "OwnedNames": Variant("u", len(self.bus.registry.owned_by(target))),
            "PendingReplies": Variant("u", target.replies_outstanding),
        }
        return "a{sv}", [stats]

    def get_all_match_rules(self, peer: "Peer", h: Header, args: list) -> tuple[str, list]:
        bus = self.bus
        result = {}
        for name, p in bus.peers.items():
            result[name] = [str(rule) for rule in bus.matches.rules(p)]  # every connection, as dbus-daemon
        return "a{sas}", [result]
