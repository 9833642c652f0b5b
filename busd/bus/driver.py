"""The org.freedesktop.DBus driver: the bus's own object, as a table of methods.

Each row (as in dbus-broker's driver.c) names the interface and member, the
input and output signatures, whether the caller must have said Hello, the only
object path the method answers at, and whether the caller must be privileged.
The dispatcher checks all of that, then the row's handler returns the reply's
body (or None when it answers by itself, later or first); adding a method is
adding a row. Interfaces served at every object path follow dbus-daemon: the
org.freedesktop.DBus interface, Introspectable and Peer everywhere, the rest only
at /org/freedesktop/DBus. The handlers live in driver_names.py and
driver_monitoring.py; the bus is seen through the DriverHost port.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..wire.errors import ProtocolError
from ..wire.marshal import Variant
from ..wire.message import (
    ERROR, METHOD_CALL, METHOD_RETURN, SIGNAL, Header, build_message, read_body,
    sender_field, stamp_sender,
)
from ..wire.wellknown import (
    DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH, INTROSPECTABLE_INTERFACE, MONITORING_INTERFACE, PEER_INTERFACE,
    PROPERTIES_INTERFACE, STATS_INTERFACE,
)
from . import errors
from .driver_monitoring import MonitoringMethods
from .driver_names import NameMethods
from .driver_policy import POLICY_INTERFACE, PolicyMethods
from .errors import DriverError
from .fds import close_fds
from .outbox import queue_to_monitors
from .ownership import NameEvent

if TYPE_CHECKING:
    from .activation import PendingStarts
    from .driver_host import DriverHost
    from .peer import Peer

log = logging.getLogger("busd.driver")
bus_log = logging.getLogger("busd.bus")  # what the bus logs of connections, as before the driver took Hello

EVERYWHERE = {DRIVER_INTERFACE, INTROSPECTABLE_INTERFACE, PEER_INTERFACE}

FEATURES = ["ActivatableServicesChanged", "HeaderFiltering"]
EXTRA_INTERFACES = [MONITORING_INTERFACE, STATS_INTERFACE]
NOT_ACTIVE_YET = ":not.active.yet"  # the sender monitors see for a peer before its Hello, as on dbus-daemon

# What libdbus answers to Introspect at any path of a connection that exports no objects.
EMPTY_INTROSPECTION = ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
                       '"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n<node>\n</node>\n')

Handler = Callable[["Peer", Header, list], "list | None"]


@dataclass(frozen=True)
class DriverMethod:
    """One row of the driver's table; the dispatcher checks the call against it before `handler` runs.

    `needs_hello`: only Hello itself may be called before Hello (the pre-Hello path admits only
    rows without it). `path`: the only object path the method answers at (AccessDenied elsewhere).
    `privileged`: only root or the bus's own user may call it. The reply carries `out_signature`.
    """

    interface: str
    member: str
    in_signature: str
    out_signature: str
    handler: Handler
    needs_hello: bool = True
    path: str | None = None
    privileged: bool = False


class Driver:
    """org.freedesktop.DBus, served by the bus itself; `machine_id` and `introspection` (this
    interface's XML) are given by whoever assembles the bus, which reads no file."""

    def __init__(self, bus: DriverHost, *, machine_id: str, introspection: str):
        self.bus = bus
        self._base_introspection = introspection
        self.introspection = introspection  # the base plus the interfaces served beside it (add_interface)
        self._extra_interfaces: dict[str, str] = {}
        self.machine_id = machine_id
        self.activation: PendingStarts | None = None  # the names being started, once a launcher is attached
        self.activation_environment: dict[str, str] = {}
        self.features: list[str] = list(FEATURES)  # activation adds "SystemdActivation" when it is on
        # Properties served at DRIVER_PATH, by interface; other components (the bridge) add theirs.
        self._property_sources: dict[str, Callable[[], dict[str, Variant]]] = {DRIVER_INTERFACE: self._properties}
        names, monitoring = NameMethods(bus), MonitoringMethods(bus)
        self.policy_methods = policy = PolicyMethods(bus)
        D, PROPS, INTRO, PEER, MON, STATS = (DRIVER_INTERFACE, PROPERTIES_INTERFACE, INTROSPECTABLE_INTERFACE,
                                              PEER_INTERFACE, MONITORING_INTERFACE, STATS_INTERFACE)
        rows = [
            DriverMethod(D, "Hello", "", "s", self.hello_again, needs_hello=False),
            DriverMethod(D, "RequestName", "su", "u", names.request_name),
            DriverMethod(D, "ReleaseName", "s", "u", names.release_name),
            DriverMethod(D, "StartServiceByName", "su", "u", self.start_service_by_name),
            DriverMethod(D, "UpdateActivationEnvironment", "a{ss}", "", self.update_activation_environment,
                         path=DRIVER_PATH, privileged=True),
            DriverMethod(D, "NameHasOwner", "s", "b", names.name_has_owner),
            DriverMethod(D, "ListNames", "", "as", names.list_names),
            DriverMethod(D, "ListActivatableNames", "", "as", self.list_activatable_names),
            DriverMethod(D, "AddMatch", "s", "", monitoring.add_match),
            DriverMethod(D, "RemoveMatch", "s", "", monitoring.remove_match),
            DriverMethod(D, "GetNameOwner", "s", "s", names.get_name_owner),
            DriverMethod(D, "ListQueuedOwners", "s", "as", names.list_queued_owners),
            DriverMethod(D, "GetConnectionUnixUser", "s", "u", names.get_connection_unix_user),
            DriverMethod(D, "GetConnectionUnixProcessID", "s", "u", names.get_connection_unix_process_id),
            DriverMethod(D, "GetAdtAuditSessionData", "s", "ay", names.get_adt_audit_session_data),
            DriverMethod(D, "GetConnectionSELinuxSecurityContext", "s", "ay", names.get_selinux_context),
            DriverMethod(D, "ReloadConfig", "", "", self.reload_config),
            DriverMethod(D, "GetId", "", "s", lambda peer, h, args: [bus.guid]),
            DriverMethod(D, "GetConnectionCredentials", "s", "a{sv}", names.get_connection_credentials),
            DriverMethod(PROPS, "Get", "ss", "v", self.properties_get),
            DriverMethod(PROPS, "GetAll", "s", "a{sv}", self.properties_get_all),
            DriverMethod(PROPS, "Set", "ssv", "", self.properties_set),
            DriverMethod(INTRO, "Introspect", "", "s", self.introspect),
            DriverMethod(PEER, "Ping", "", "", lambda peer, h, args: []),
            DriverMethod(PEER, "GetMachineId", "", "s", lambda peer, h, args: [self.machine_id]),
            DriverMethod(MON, "BecomeMonitor", "asu", "", monitoring.become_monitor, privileged=True),
            DriverMethod(STATS, "GetStats", "", "a{sv}", monitoring.get_stats),
            DriverMethod(STATS, "GetConnectionStats", "s", "a{sv}", monitoring.get_connection_stats),
            DriverMethod(STATS, "GetAllMatchRules", "", "a{sas}", monitoring.get_all_match_rules),
            # busd's own: which policy rule decides a message (busdctl policy check / dump)
            DriverMethod(POLICY_INTERFACE, "Check", "a{sv}", "a{sv}", policy.check, path=DRIVER_PATH,
                         privileged=True),
            DriverMethod(POLICY_INTERFACE, "Dump", "", "a(ssa(sss))", policy.dump, path=DRIVER_PATH,
                         privileged=True),
        ]
        self.methods: dict[tuple[str, str], DriverMethod] = {(row.interface, row.member): row for row in rows}
        self.interfaces = frozenset(row.interface for row in rows)
        self._by_member: dict[str, DriverMethod] = {}  # for calls without an interface: the first row named so
        for row in rows:
            self._by_member.setdefault(row.member, row)

    # ------------------------------------------------------------ dispatch

    def handle(self, peer: Peer, buf: bytes, h: Header) -> None:
        """A method call to the bus from a peer that said Hello."""
        outbox = self.bus.outbox
        iface = h.interface
        member = h.member
        if iface is None:
            row = self._by_member.get(member)
            iface = row.interface if row else DRIVER_INTERFACE
        else:
            row = self.methods.get((iface, member))
        wants_reply = not h.no_reply_expected
        try:
            if iface not in EVERYWHERE and h.path != DRIVER_PATH or (row is None and iface not in self.interfaces):
                raise DriverError(errors.UNKNOWN_INTERFACE, f"{DRIVER_NAME} does not understand message {member}")
            if row is None:
                raise DriverError(errors.UNKNOWN_METHOD, f"{DRIVER_NAME} does not understand message {member}")
            if h.signature != row.in_signature:
                raise DriverError(errors.INVALID_ARGS,
                                  f"Call to {member} has wrong args ({h.signature}, expected {row.in_signature})\n")
            if row.path is not None and h.path != row.path:
                # Hardening against loose XML policies, as dbus-daemon.
                raise DriverError(errors.ACCESS_DENIED, f"{member} is only allowed on the object path {row.path}")
            if row.privileged:
                self._require_privileged(peer, member)
            body = row.handler(peer, h, read_body(buf, h))
        except DriverError as exc:
            if wants_reply:
                outbox.send_error(peer, h.serial, exc.name, exc.text)
            return
        except ProtocolError as exc:
            if wants_reply:
                outbox.send_error(peer, h.serial, errors.INVALID_ARGS, exc.reason)
            return
        if body is not None and wants_reply:  # None: the handler answered by itself
            outbox.send_reply(peer, h.serial, row.out_signature, body)

    def receive_before_hello(self, peer: Peer, buf: bytes, h: Header, fds: list[int] | None) -> None:
        """Only Hello is served before Hello; other driver calls are refused, anything routed drops the peer.

        As in dbus-daemon, monitors see what an unregistered peer sends, from
        ":not.active.yet", and a message with no destination that is no signal is
        not routed at all: the bus's end of the connection answers it, Hello or not.
        """
        close_fds(fds)
        if h.destination is None and h.type != SIGNAL:
            if h.type == METHOD_CALL:
                self.answer_as_peer(peer, h)
            return
        bus = self.bus
        outbox = bus.outbox
        if h.destination == DRIVER_NAME and h.type == METHOD_CALL:
            row = self._by_member.get(h.member) if h.interface is None else self.methods.get((h.interface, h.member))
            if row is not None and not row.needs_hello:
                refusal = self.bus.admit(peer)
                if refusal is not None:
                    # As dbus-daemon: the peer authenticated, but its Hello is refused.
                    message = build_message(ERROR, outbox.next_serial(), error_name=errors.LIMITS_EXCEEDED,
                                            reply_serial=h.serial, sender=DRIVER_NAME, signature="s",
                                            body=[refusal])
                    bus.ledger.queue(peer, message, b"")
                    bus_log.warning("refusing Hello from %s (uid %s): %s", peer.conn.label, peer.auth_uid, refusal)
                    return
                self.hello(peer, h, buf)
                return
            self._show_monitors_unregistered(buf, h)
            message = build_message(ERROR, outbox.next_serial(), error_name=errors.ACCESS_DENIED,
                                    reply_serial=h.serial, destination=NOT_ACTIVE_YET,
                                    sender=DRIVER_NAME, signature="s",
                                    body=["Client tried to send a message other than Hello without "
                                          "being registered"])
            outbox.send(None, message)  # monitors
            if not h.no_reply_expected:
                bus.ledger.queue(peer, message, b"")
            return
        self._show_monitors_unregistered(buf, h)
        peer.conn.drop(f"sent {h.describe()} before Hello")

    def _show_monitors_unregistered(self, buf: bytes, h: Header) -> None:
        """Show monitors a message from a peer that has no unique name yet."""
        monitors = self.bus.monitors
        if monitors:
            head, body = stamp_sender(buf, h, sender_field(NOT_ACTIVE_YET, h.endian))
            queue_to_monitors(self.bus.ledger, monitors, head, body, h, (), lambda: read_body(buf, h))

    def hello(self, peer: Peer, h: Header, buf: bytes) -> None:
        """The first message of every connection, admitted by the bus: a unique name, then NameAcquired."""
        bus = self.bus
        name = bus.assign_unique_name(peer)
        peer.hello_done = True
        h.sender = name
        bus.deliver_to_monitors(peer, buf, h, None)
        bus.outbox.send_reply(peer, h.serial, "s", [name])
        bus.emit_name_events([NameEvent("owner_changed", name, None, peer),
                              NameEvent("acquired", name, None, peer)])

    def hello_again(self, peer: Peer, h: Header, args: list) -> list:
        raise DriverError(errors.FAILED, "Already handled an Hello message")

    def answer_as_peer(self, peer: Peer, h: Header) -> None:
        """A call with no destination: the bus's end of the connection answers as a plain peer.

        As libdbus does in dbus-daemon: org.freedesktop.DBus.Peer's Ping and GetMachineId
        and Introspectable.Introspect (of an empty object tree) work whatever the
        arguments, anything else is UnknownMethod. The answers carry no SENDER because
        no bus name sent them, and go to the caller alone: monitors see neither side.
        """
        if h.no_reply_expected:
            return
        outbox = self.bus.outbox
        reply_to = {"reply_serial": h.serial}
        if h.interface == PEER_INTERFACE:
            if h.member == "Ping":
                message = build_message(METHOD_RETURN, outbox.next_serial(), **reply_to)
            elif h.member == "GetMachineId":
                message = build_message(METHOD_RETURN, outbox.next_serial(), signature="s",
                                        body=[self.machine_id], **reply_to)
            else:
                message = build_message(ERROR, outbox.next_serial(), error_name=errors.UNKNOWN_METHOD,
                                        signature="s", body=[f"Unknown method invoked on {PEER_INTERFACE} interface"],
                                        **reply_to)
        elif h.interface == INTROSPECTABLE_INTERFACE and h.member == "Introspect":
            message = build_message(METHOD_RETURN, outbox.next_serial(), signature="s",
                                    body=[EMPTY_INTROSPECTION], **reply_to)
        else:
            interface = "(null)" if h.interface is None else h.interface
            message = build_message(ERROR, outbox.next_serial(), error_name=errors.UNKNOWN_METHOD,
                                    signature="s",
                                    body=[f'Method "{h.member}" with signature "{h.signature}" on interface '
                                          f'"{interface}" doesn\'t exist\n'], **reply_to)
        self.bus.ledger.queue(peer, message, b"")

    @staticmethod
    def _require_privileged(peer: Peer, method: str) -> None:
        """Like dbus-daemon: only root or the bus's own user may monitor or change the environment."""
        uid = peer.credentials.uid
        if uid not in (0, os.getuid()):
            raise DriverError(errors.ACCESS_DENIED,
                              f"uid {uid} is not allowed to call {method}: only the bus's own user or root may")

    # ------------------------------------------------------------ activation and configuration

    def attach_activation(self, activation: PendingStarts) -> None:
        """Service activation: the driver holds messages in `activation`, whose Activator starts names."""
        self.activation = activation

    def try_activation(self, peer: Peer, h: Header, buf: bytes, fds: Any) -> bool:
        """A message to a well-known name nobody owns: True if activation took it."""
        activation = self.activation
        return activation is not None and activation.auto_start(peer, h, buf, fds)

    def start_service_by_name(self, peer: Peer, h: Header, args: list) -> list | None:
        name, _flags = args
        activation = self.activation
        # As dbus-daemon: only an activatable name can be started or "already running"
        # (the launcher rescans its directories on a miss).
        if activation is not None and activation.activator.is_activatable(name):
            if self.bus.registry.owner(name) is not None:
                return [2]  # DBUS_START_REPLY_ALREADY_RUNNING
            if activation.activator.is_activatable(name, auto_start=False):
                activation.start_by_name(peer, h, name)  # answers SUCCESS once the name has an owner
                return None
        raise DriverError(errors.SERVICE_UNKNOWN, f"The name {name} was not provided by any .service files")

    def update_activation_environment(self, peer: Peer, h: Header, args: list) -> list:
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
        return []

    def list_activatable_names(self, peer: Peer, h: Header, args: list) -> list:
        names = self.activation.activator.activatable_names() if self.activation is not None else []
        return [[DRIVER_NAME, *names]]

    def reload_config(self, peer: Peer, h: Header, args: list) -> list:
        try:
            for observer in self.bus.observers:
                observer.reload_requested()
        except Exception as exc:  # a broken new config keeps the old one
            raise DriverError(errors.FAILED, f"Reloading the configuration failed: {exc}") from None
        return []

    # ------------------------------------------------------------ properties and introspection

    def _properties(self) -> dict[str, Variant]:
        return {"Features": Variant("as", self.features), "Interfaces": Variant("as", EXTRA_INTERFACES)}

    def _properties_of(self, iface: str) -> dict[str, Variant]:
        """The properties of `iface`: none for the driver's other interfaces, as with dbus-daemon."""
        source = self._property_sources.get(iface)
        if source is not None:
            return source()
        if iface in self.interfaces:
            return {}
        raise DriverError(errors.UNKNOWN_INTERFACE, f'Interface "{iface}" not found')

    def _property_of(self, iface: str, name: str) -> Variant:
        props = self._properties_of(iface)
        if name not in props:
            raise DriverError(errors.UNKNOWN_PROPERTY, f'Property "{iface}.{name}" not found')
        return props[name]

    def properties_get(self, peer: Peer, h: Header, args: list) -> list:
        iface, name = args
        return [self._property_of(iface, name)]

    def properties_get_all(self, peer: Peer, h: Header, args: list) -> list:
        return [self._properties_of(args[0])]

    def properties_set(self, peer: Peer, h: Header, args: list) -> list:
        iface, name, _value = args
        self._property_of(iface, name)
        raise DriverError(errors.PROPERTY_READ_ONLY, f"Property '{iface}.{name}' cannot be set")

    def add_interface(self, name: str, xml: str, properties: Callable[[], dict[str, Variant]]) -> None:
        """Serve interface `name` at DRIVER_PATH beside the driver's own (the bridge's, while it runs):
        `xml` is its <interface> element, `properties` gives its current property values."""
        self._extra_interfaces[name] = xml
        self._property_sources[name] = properties
        self._rebuild_introspection()

    def remove_interface(self, name: str) -> None:
        self._extra_interfaces.pop(name, None)
        self._property_sources.pop(name, None)
        self._rebuild_introspection()

    def _rebuild_introspection(self) -> None:
        base = self._base_introspection
        at = base.rindex("</node>")
        self.introspection = base[:at] + "".join(self._extra_interfaces.values()) + base[at:]

    def introspect(self, peer: Peer, h: Header, args: list) -> list:
        path = h.path
        text = self.introspection
        if path == DRIVER_PATH:
            return [text]
        # Elsewhere only the interfaces served at every path, plus the way to the driver's path.
        kept = [match.group(0) for match in re.finditer(r'  <interface name="([^"]+)">.*?</interface>\n', text, re.S)
                if match.group(1) in EVERYWHERE]
        head = text[:text.index("<node>") + len("<node>\n")]
        child = ""
        if DRIVER_PATH.startswith(path.rstrip("/") + "/"):
            child = f'  <node name="{DRIVER_PATH[len(path.rstrip("/")) + 1:]}"/>\n'
        return [head + "".join(kept) + child + "</node>\n"]


__all__ = ["Driver", "DriverMethod", "EMPTY_INTROSPECTION", "NOT_ACTIVE_YET"]
