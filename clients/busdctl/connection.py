"""busdctl's connection to a bus: choosing the address, calling methods, and tapping raw traffic."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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

# A tap receives each message, its bytes as they arrived, and the time it arrived.
Tap = Callable[[Message, bytes, float], None]


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


class TapBus(MessageBus):
    """A dbus-next bus that can hand every incoming message, raw bytes and all, to a tap.

    Once tapping starts (when the reply to the call that made us a monitor arrives), only replies
    to our own calls reach dbus-next's dispatch: a monitor must never answer the calls it sees.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tap: Tap | None = None
        self._tap_starts_after: int | None = None
        self.server_guid: str | None = None

    async def _auth_readline(self) -> str:
        line = await super()._auth_readline()
        if line.startswith("OK "):
            self.server_guid = line[3:].strip()  # the bus ID busctl shows
        return line

    def tap_after_reply(self, serial: int, tap: Tap) -> None:
        """Tap every message that arrives after the reply to our call with `serial`."""
        self._tap = tap
        self._tap_starts_after = serial

    def stop_tap(self) -> None:
        self._tap = None
        self._tap_starts_after = None

    def _on_message(self, msg: Message) -> None:
        if self._tap is None or self._is_reply_to_us(msg):
            if self._tap is not None and msg.reply_serial == self._tap_starts_after:
                self._tap_starts_after = None  # the reply that starts tapping
            super()._on_message(msg)
            return
        if self._tap_starts_after is not None:
            super()._on_message(msg)  # not a monitor yet: business as usual
            return
        if self._is_own_name_lost(msg):
            return  # the bus taking our name as we become a monitor: not traffic worth showing
        raw = self._raw_bytes(msg)
        for fd in msg.unix_fds:  # a monitor has no use for passed descriptors
            try:
                os.close(fd)
            except (OSError, TypeError):
                pass
        self._tap(msg, raw, time.time())

    def _is_reply_to_us(self, msg: Message) -> bool:
        return (msg.message_type in (MessageType.METHOD_RETURN, MessageType.ERROR)
                and msg.destination == self.unique_name
                and msg.reply_serial in self._method_return_handlers)

    def _is_own_name_lost(self, msg: Message) -> bool:
        return (msg.message_type == MessageType.SIGNAL and msg.member == "NameLost"
                and msg.sender == DRIVER_NAME and msg.destination == self.unique_name
                and msg.body == [self.unique_name])

    def _raw_bytes(self, msg: Message) -> bytes:
        # dbus-next reads each message into a fresh unmarshaller, so its buffer holds exactly
        # the bytes the bus sent; marshal the parsed message again only if that ever changes.
        buffer = getattr(getattr(self, "_unmarshaller", None), "buf", None)
        if buffer and len(buffer) == message_length(buffer):
            return bytes(buffer)
        return bytes(msg._marshall())

    def peer_credentials(self) -> tuple[int, int, int] | None:
        """(pid, uid, gid) of the process at the other end of a unix socket: the bus daemon."""
        try:
            raw = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except (OSError, AttributeError):
            return None
        return struct.unpack("3i", raw)


def message_length(data: bytes | bytearray) -> int:
    """The length of the D-Bus message `data` starts with, from its fixed header; 0 if too short."""
    if len(data) < 16:
        return 0
    endian = "<" if data[0:1] == b"l" else ">"
    body_length, _serial, fields_length = struct.unpack_from(endian + "III", data, 4)
    return 16 + fields_length + (-fields_length % 8) + body_length


class BusConnection:
    """A connected bus with the calls busdctl makes on it, turning D-Bus errors into BusError."""

    def __init__(self, bus: TapBus, choice: BusChoice, timeout: float | None) -> None:
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
        bus = TapBus(bus_address=choice.address, negotiate_unix_fd=negotiate_unix_fd)
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
