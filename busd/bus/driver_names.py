"""org.freedesktop.DBus's methods about bus names: owning them, who owns them, and what the kernel says of owners.

Handlers take (peer, header, arguments) and return the reply's body; its
signature is the driver table's row's. Error names and texts are dbus-daemon's.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from ..wire.marshal import Variant
from ..wire.message import Header
from ..wire.names import is_valid_bus_name
from ..wire.wellknown import DRIVER_NAME
from . import errors
from .errors import DriverError
from .ports import Credentials

if TYPE_CHECKING:
    from .driver_host import DriverHost
    from .peer import Peer

log = logging.getLogger("busd.bus")


def peer_of_name(bus: DriverHost, name: str, what: str) -> Peer:
    """The connection owning `name` (unique or well-known); `what` is asked for, in the error when nobody owns it."""
    target = bus.peers.get(name) if name.startswith(":") else bus.registry.owner(name)
    if target is None:
        raise DriverError(errors.NAME_HAS_NO_OWNER, f"Could not get {what} of name '{name}': no such name")
    return target


class NameMethods:
    """RequestName, ReleaseName, NameHasOwner, ListNames, GetNameOwner, ListQueuedOwners and GetConnection*."""

    def __init__(self, bus: DriverHost):
        self.bus = bus

    # ------------------------------------------------------------ owning names

    def request_name(self, peer: Peer, h: Header, args: list) -> list:
        name, flags = args
        self._check_claimable(peer, name, acquire=True)
        bus = self.bus
        self._check_own(peer, name)
        limit = bus.limits.max_names_per_connection
        # Like dbus-daemon, count the unique name too, and check before looking at `name`.
        if 1 + bus.registry.queued_count(peer) >= limit:
            raise DriverError(errors.LIMITS_EXCEEDED,
                              f'Connection "{peer.unique_name}" is not allowed to own more services '
                              f"(increase limits in configuration file if required; "
                              f"max_names_per_connection={limit})")
        ledger = bus.ledger
        if not ledger.may_add_name(peer):
            raise DriverError(errors.LIMITS_EXCEEDED,
                              f'Connection "{peer.unique_name}" is not allowed to own more services: UID '
                              f"{peer.user.uid} owns or waits for too many (max_names_per_user={ledger.quotas.names})")
        code, events = bus.registry.request(name, peer, flags)
        ledger.settle_names(peer, bus.registry.queued_count(peer))  # (queued without an event, too)
        if events:  # as from dbus-daemon, NameAcquired (and the rest) comes before the answer
            bus.emit_name_events(events)
        return [code]

    def release_name(self, peer: Peer, h: Header, args: list) -> list:
        name = args[0]
        self._check_claimable(peer, name, acquire=False)
        code, events = self.bus.registry.release(name, peer)
        self.bus.ledger.settle_names(peer, self.bus.registry.queued_count(peer))
        if events:  # NameLost before the answer
            self.bus.emit_name_events(events)
        return [code]

    @staticmethod
    def _check_claimable(peer: Peer, name: str, acquire: bool) -> None:
        """RequestName and ReleaseName take a valid well-known name other than the bus's own."""
        if not is_valid_bus_name(name):
            raise DriverError(errors.INVALID_ARGS,
                              f'{"Requested" if acquire else "Given"} bus name "{name}" is not valid')
        if name.startswith(":"):
            raise DriverError(errors.INVALID_ARGS, f"Cannot {'acquire' if acquire else 'release'} a service "
                                                   f"starting with ':' such as \"{name}\"")
        if name == DRIVER_NAME:
            raise DriverError(errors.INVALID_ARGS,
                              f'Connection "{peer.unique_name}" is not allowed to own the service '
                              f'"{DRIVER_NAME}" because it is reserved for D-Bus\' use only' if acquire else
                              f"Cannot release the {DRIVER_NAME} service because it is owned by the bus")

    @staticmethod
    def _check_own(peer: Peer, name: str) -> None:
        """AccessDenied when policy forbids `peer` owning `name`."""
        verdict = peer.policy.can_own(name)
        if not verdict.allowed:
            log.warning("policy denied %s (uid %s) owning %s by rule %s", peer.unique_name,
                        peer.credentials.uid, name, verdict.rule or "(default deny)")
            raise DriverError(errors.ACCESS_DENIED,
                              f'Connection "{peer.unique_name}" is not allowed to own the service "{name}" '
                              f"due to security policies in the configuration file")

    # ------------------------------------------------------------ who owns what

    def name_has_owner(self, peer: Peer, h: Header, args: list) -> list:
        name = args[0]
        bus = self.bus
        # An invalid name is simply not owned (dbus-daemon does not validate it here).
        owned = name == DRIVER_NAME or (
            name in bus.peers if name.startswith(":") else bus.registry.owner(name) is not None)
        return [owned]

    def list_names(self, peer: Peer, h: Header, args: list) -> list:
        bus = self.bus
        return [[DRIVER_NAME, *bus.peers.keys(), *bus.registry.names()]]

    def get_name_owner(self, peer: Peer, h: Header, args: list) -> list:
        name = args[0]
        if name == DRIVER_NAME:
            return [DRIVER_NAME]
        return [peer_of_name(self.bus, name, "owner").unique_name]

    def list_queued_owners(self, peer: Peer, h: Header, args: list) -> list:
        name = args[0]
        if name == DRIVER_NAME:
            return [[DRIVER_NAME]]
        bus = self.bus
        if name.startswith(":"):
            if name in bus.peers:
                return [[name]]
            owners = []
        else:
            owners = [p.unique_name for p in bus.registry.queued_owners(name)]
        if not owners:
            raise DriverError(errors.NAME_HAS_NO_OWNER, f"Could not get owners of name '{name}': no such name")
        return [owners]

    # ------------------------------------------------------------ what the kernel says of an owner

    def _credentials_of(self, name: str, what: str) -> Credentials:
        """The credentials of `name`'s owner, the bus's own for org.freedesktop.DBus; NameHasNoOwner if none."""
        if name == DRIVER_NAME:
            return Credentials(os.getpid(), os.getuid(), os.getgid(), tuple(sorted(set(os.getgroups()))))
        return peer_of_name(self.bus, name, what).credentials

    def get_connection_unix_user(self, peer: Peer, h: Header, args: list) -> list:
        creds = self._credentials_of(args[0], "UID")
        if creds.uid is None:
            raise DriverError(errors.FAILED, f"Could not determine UID for '{args[0]}'")
        return [creds.uid]

    def get_connection_unix_process_id(self, peer: Peer, h: Header, args: list) -> list:
        creds = self._credentials_of(args[0], "PID")
        if creds.pid is None:
            raise DriverError(errors.UNIX_PROCESS_ID_UNKNOWN, f"Could not determine PID for '{args[0]}'")
        return [creds.pid]

    def get_adt_audit_session_data(self, peer: Peer, h: Header, args: list) -> list:
        self._credentials_of(args[0], "audit session data")
        raise DriverError(errors.ADT_AUDIT_DATA_UNKNOWN, f"Could not determine audit session data for '{args[0]}'")

    def get_selinux_context(self, peer: Peer, h: Header, args: list) -> list:
        self._credentials_of(args[0], "security context")
        raise DriverError(errors.SELINUX_SECURITY_CONTEXT_UNKNOWN,
                          f"Could not determine security context for '{args[0]}'")

    def get_connection_credentials(self, peer: Peer, h: Header, args: list) -> list:
        creds = self._credentials_of(args[0], "credentials")
        result: dict[str, Variant] = {}
        if creds.uid is not None:
            result["UnixUserID"] = Variant("u", creds.uid)
        if creds.groups:
            result["UnixGroupIDs"] = Variant("au", list(creds.groups))
        if creds.pid is not None:
            result["ProcessID"] = Variant("u", creds.pid)
        if creds.origin is not None:  # a stand-in for a peer on another busd node of a federation
            result["dev.busd.FederationNode"] = Variant("s", creds.origin)
        return [result]


__all__ = ["NameMethods", "peer_of_name"]
