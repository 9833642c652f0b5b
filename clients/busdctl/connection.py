"""busdctl's connection to a bus: choosing the address, and calling methods on dbus-next.

status, monitor and capture need a bus's raw bytes, GUID and credentials, which dbus-next keeps
private: they run on busdctl's own link instead (link.WireLink, on busd's stream transport).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dbus_next import Message, MessageFlag, MessageType
from dbus_next.aio import MessageBus
from dbus_next.errors import (AuthError, InvalidAddressError, InvalidBusNameError, InvalidInterfaceNameError,
                              InvalidMemberNameError, InvalidMessageError, InvalidObjectPathError,
                              SignatureBodyMismatchError)

from busd.wire.address import AddressError, session_bus_address, system_bus_address
from busd.wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH

from .errors import BusError, CommandError, UsageError

DEFAULT_TIMEOUT = 25.0  # seconds, as sd-bus and libdbus wait for a reply


INVALID_MESSAGE_ERRORS = (InvalidBusNameError, InvalidObjectPathError, InvalidInterfaceNameError,
                          InvalidMemberNameError, InvalidMessageError, SignatureBodyMismatchError)


@dataclass(frozen=True)
class BusChoice:
    """Which bus to talk to, and how to name it in messages."""

    address: str
    label: str

    @property
    def described(self) -> str:
        """The label, with the address when the label does not already show it."""
        return self.label if self.address in self.label else f"{self.label} ({self.address})"


def choose_bus(address: str | None, scope: str) -> BusChoice:
    """The bus chosen by --address, --user/--session or --system (the default, as for busctl)."""
    if address:
        return BusChoice(address, f"the bus at {address}")
    if scope == "user":
        try:
            return BusChoice(session_bus_address(), "the user bus")
        except AddressError:
            raise CommandError("Cannot find the user bus: DBUS_SESSION_BUS_ADDRESS is not set and there is no "
                               "$XDG_RUNTIME_DIR/bus socket. Pass --address=ADDRESS.") from None
    return BusChoice(system_bus_address(), "the system bus")


class DriverCalls(Protocol):
    """What list and status ask of a connection, be it on dbus-next or on busdctl's own link."""

    @property
    def choice(self) -> BusChoice: ...

    async def driver(self, member: str, signature: str = "", body: Sequence[Any] = (),
                     interface: str = DRIVER_INTERFACE) -> list[Any]: ...


class BusConnection:
    """A connected bus with the calls busdctl makes on it, turning D-Bus errors into BusError."""

    def __init__(self, bus: MessageBus, choice: BusChoice, timeout: float | None) -> None:
        self.bus = bus
        self.choice = choice
        self.timeout = timeout

    @property
    def unique_name(self) -> str:
        return self.bus.unique_name

    async def call(self, destination: str | None, path: str, interface: str | None, member: str,
                   signature: str = "", body: Sequence[Any] = (), *, flags: MessageFlag = MessageFlag.NONE,
                   action: str = "Call failed") -> Message | None:
        """Call a method and return its reply (None when no reply is expected)."""
        message = make_message(destination=destination, path=path, interface=interface, member=member,
                               signature=signature, body=list(body), flags=flags)
        return await self.call_message(message, action)

    async def call_message(self, message: Message, action: str = "Call failed") -> Message | None:
        """Send a prepared method call and return its reply (None when no reply is expected)."""
        try:
            reply = await asyncio.wait_for(self.bus.call(message), self.timeout)
        except asyncio.TimeoutError:
            raise BusError(action, "org.freedesktop.DBus.Error.NoReply",
                           f"no reply from {message.destination or 'the peer'} within {self.timeout:g} s") from None
        except (EOFError, ConnectionError, OSError) as error:
            raise CommandError(f"{action}: lost the connection to {self.choice.label}: {error}") from None
        if reply is not None and reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise BusError(action, reply.error_name, text)
        return reply

    async def call_body(self, destination: str | None, path: str, interface: str | None, member: str,
                        signature: str = "", body: Sequence[Any] = (), *,
                        action: str = "Call failed") -> list[Any]:
        reply = await self.call(destination, path, interface, member, signature, body, action=action)
        return reply.body if reply is not None else []

    async def driver(self, member: str, signature: str = "", body: Sequence[Any] = (),
                     interface: str = DRIVER_INTERFACE) -> list[Any]:
        """Call the bus driver, org.freedesktop.DBus, and return the reply body."""
        return await self.call_body(DRIVER_NAME, DRIVER_PATH, interface, member, signature, body,
                                    action=f"Failed to call {interface}.{member}")

    async def send(self, message: Message) -> None:
        await self.bus.send(message)

    def close(self) -> None:
        try:
            self.bus.disconnect()
        except Exception:  # already gone: nothing left to close
            pass


def make_message(**fields: Any) -> Message:
    """A dbus-next Message, with invalid names reported as a usage error."""
    try:
        return Message(**fields)
    except INVALID_MESSAGE_ERRORS as error:
        raise UsageError(f"{str(error)[:1].upper()}{str(error)[1:]}.") from None


async def connect(choice: BusChoice, timeout: float | None = DEFAULT_TIMEOUT,
                  negotiate_unix_fd: bool = False) -> BusConnection:
    """Connect and say Hello, or explain why we could not."""
    try:
        bus = MessageBus(bus_address=choice.address, negotiate_unix_fd=negotiate_unix_fd)
        await asyncio.wait_for(bus.connect(), timeout)
    except InvalidAddressError as error:
        raise UsageError(f"Invalid bus address '{choice.address}': {error}") from None
    except asyncio.TimeoutError:
        raise CommandError(f"Failed to connect to {choice.label}: no answer within {timeout:g} s.") from None
    except AuthError as error:
        raise CommandError(f"Failed to authenticate to {choice.label}: {error}") from None
    except (OSError, EOFError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or "closed"
        raise CommandError(f"Failed to connect to {choice.described}: {reason}.\n"
                           "Hint: pick the bus with --user, --system or --address=ADDRESS.") from None
    return BusConnection(bus, choice, timeout)
