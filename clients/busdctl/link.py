"""busdctl's own bus connection for status, monitor and capture, on busd's stream transport.

These verbs need what dbus-next keeps private: every message's bytes exactly
as the bus sent them (capture writes them into pcapng, monitor shows their
byte order and flags), the server GUID from the SASL OK line (status's
BusID) and the credentials of the process at the other end of the socket
(SO_PEERCRED: status's PID).  So they run on busd.transport.stream.Stream,
the read/frame/fd/flush loop of the daemon's own connections and of the
bridge's upstream link, with busd.wire's SASL client and message parsing.
The other verbs stay on dbus-next (connection.BusConnection).

Theory.  Replies to our own calls go to the call waiting for them.  Anything
else is ignored until a tap is set; from the reply to the call that set it
(BecomeMonitor) on, it goes to the tap with its raw bytes and arrival time.
A monitor never answers the calls it sees.  A tap that raises ends the
connection with its exception, which `wait_closed` raises (a reader that
went away is a BrokenPipeError there).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from busd.transport.dial import TRANSPORTS, dial
from busd.transport.stream import Stream, close_fds
from busd.wire.address import Address, AddressError, parse_addresses
from busd.wire.errors import ProtocolError
from busd.wire.message import (
    ERROR, MAX_MESSAGE_UNIX_FDS, METHOD_CALL, METHOD_RETURN, SIGNAL, Header, build_message, read_body,
)
from busd.wire.sasl import EXTERNAL
from busd.wire.sasl_client import ClientAuthenticator
from busd.wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH

from .connection import BusChoice
from .errors import BusError, CommandError, UsageError

Tap = Callable[[Header, bytes, float], None]
"""Receives each tapped message: its header, its bytes as they arrived, and the time it arrived."""

NO_REPLY = "org.freedesktop.DBus.Error.NoReply"


@dataclass(frozen=True)
class PeerCredentials:
    """Who is at the other end of a unix socket (the bus daemon), as the kernel says (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


class LinkClosed(ConnectionError):
    """The connection ended: the bus hung up, or a read or write failed."""




def _usable(address: Address) -> None:
    """Raise AddressError unless busdctl can connect to `address` (worded as for the other verbs)."""
    if address.transport not in TRANSPORTS:
        raise AddressError(f"got unknown address transport: {address.transport}")
    if not address.connectable:  # dir=, tmpdir=, runtime=: addresses to listen on
        raise AddressError(f"got {address.transport} transport with unknown path specifier")


class WireLink(Stream):
    """One authenticated connection to a bus: driver calls, its GUID and credentials, and a tap."""

    max_message_unix_fds = MAX_MESSAGE_UNIX_FDS  # a monitor sees whatever the bus lets through

    def __init__(self, loop: asyncio.AbstractEventLoop, choice: BusChoice, timeout: float | None) -> None:
        super().__init__(loop, self._flush_soon)
        self.choice = choice
        self.timeout = timeout
        self.guid = ""
        """The server GUID the bus sent with its SASL OK."""
        self.unique_name = ""
        self._serial = 0
        self._replies: dict[int, asyncio.Future[tuple[Header, bytes]]] = {}
        self._tap: Tap | None = None
        self._tap_starts_after: int | None = None
        self._ended: asyncio.Future[None] = loop.create_future()

    def _flush_soon(self, stream: Stream) -> None:
        # Queued writes go out at the end of the current loop turn, many messages in one sendmsg().
        self.loop.call_soon(stream.flush)

    # ------------------------------------------------------------ opening

    async def open(self, unix_fds: bool) -> None:
        """Connect to the first address of `choice` that answers, authenticate and say Hello.

        Raises AddressError (an address busdctl cannot use), OSError (no address answered),
        ProtocolError (authentication failed), EOFError or BusError (Hello refused).
        """
        addresses = parse_addresses(self.choice.address)
        for address in addresses:
            _usable(address)
        last: OSError = OSError(f"no address in {self.choice.address!r}")
        for address in addresses:
            try:
                sock = await dial(self.loop, address)
            except OSError as error:
                last = error
                continue
            self.attach(sock)
            try:
                leftover = await self._authenticate(sock, unix_fds and address.transport == "unix")
                await self._hello(leftover)
            except BaseException:
                self.close()
                raise
            return
        raise last

    async def _authenticate(self, sock: socket.socket, unix_fds: bool) -> bytes:
        """The client's SASL side; returns what the bus sent after the handshake (the start of the stream)."""
        auth = ClientAuthenticator(uid=os.getuid(), mechanisms=(EXTERNAL,), negotiate_unix_fd=unix_fds)
        await self.loop.sock_sendall(sock, auth.initial_bytes())
        while not auth.done:
            data = await self.loop.sock_recv(sock, 4096)
            if not data:
                raise EOFError("the bus closed the connection during authentication")
            reply = auth.receive_data(data)
            if reply:
                await self.loop.sock_sendall(sock, reply)
        self.guid = auth.guid or ""
        self.can_pass_fds = bool(auth.unix_fd)
        return bytes(auth.leftover or b"")

    async def _hello(self, leftover: bytes) -> None:
        serial = self.next_serial()
        answer = self._expect_reply(serial)
        self.queue(build_message(METHOD_CALL, serial, path=DRIVER_PATH, interface=DRIVER_INTERFACE,
                                 member="Hello", destination=DRIVER_NAME), b"")
        self.start_reading()
        self.feed(leftover)
        h, raw = await answer
        if h.type == ERROR:
            raise _error_reply("Failed to say Hello", h, raw)
        self.unique_name = read_body(raw, h)[0]

    # ------------------------------------------------------------ what we know of the bus

    def peer_credentials(self) -> PeerCredentials | None:
        """The credentials of the process at the other end of a unix socket: the bus daemon."""
        if self.sock is None or self.sock.family != socket.AF_UNIX:
            return None
        try:
            raw = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
        return PeerCredentials(*struct.unpack("3i", raw))

    # ------------------------------------------------------------ calls

    def next_serial(self) -> int:
        self._serial = serial = (self._serial % 0xFFFFFFFF) + 1
        return serial

    def _expect_reply(self, serial: int) -> asyncio.Future[tuple[Header, bytes]]:
        future: asyncio.Future[tuple[Header, bytes]] = self.loop.create_future()
        if self.closed:
            future.set_exception(LinkClosed("the connection is closed"))
        else:
            self._replies[serial] = future
        return future

    async def call(self, destination: str | None, path: str, interface: str | None, member: str,
                   signature: str = "", body: Sequence[Any] = (), *, serial: int | None = None,
                   action: str = "Call failed") -> list[Any]:
        """Call a method and return its reply's body; an error reply raises BusError.

        `serial` is one taken with next_serial() before the call (to tap after its reply)."""
        serial = serial or self.next_serial()
        answer = self._expect_reply(serial)
        self.queue(build_message(METHOD_CALL, serial, path=path, interface=interface, member=member,
                                 destination=destination, signature=signature, body=list(body)), b"")
        try:
            h, raw = await asyncio.wait_for(answer, self.timeout)
        except asyncio.TimeoutError:
            raise BusError(action, NO_REPLY, f"no reply from {destination or 'the peer'} "
                                             f"within {self.timeout:g} s") from None
        except (EOFError, ConnectionError, OSError) as error:
            raise CommandError(f"{action}: lost the connection to {self.choice.label}: {error}") from None
        finally:
            self._replies.pop(serial, None)
        if h.type == ERROR:
            raise _error_reply(action, h, raw)
        return read_body(raw, h)

    async def driver(self, member: str, signature: str = "", body: Sequence[Any] = (),
                     interface: str = DRIVER_INTERFACE) -> list[Any]:
        """Call the bus driver, org.freedesktop.DBus, and return the reply body."""
        return await self.call(DRIVER_NAME, DRIVER_PATH, interface, member, signature, body,
                               action=f"Failed to call {interface}.{member}")

    # ------------------------------------------------------------ tapping

    def tap_after_reply(self, serial: int, tap: Tap) -> None:
        """Tap every message that arrives after the reply to our call with `serial`."""
        self._tap = tap
        self._tap_starts_after = serial

    def stop_tap(self) -> None:
        self._tap = None
        self._tap_starts_after = None

    def message_received(self, message: bytes, h: Header, fds: list[int] | None) -> None:
        close_fds(fds)  # neither a monitor nor a driver call has a use for passed descriptors
        # Once tapping, replies between other peers come by too: ours are those sent to us.
        if (h.type == METHOD_RETURN or h.type == ERROR) and (self._tap is None or h.destination == self.unique_name):
            answer = self._replies.pop(h.reply_serial, None)
            if answer is not None:
                if h.reply_serial == self._tap_starts_after:
                    self._tap_starts_after = None  # the reply that starts tapping
                if not answer.done():
                    answer.set_result((h, message))
                return
        tap = self._tap
        if tap is None or self._tap_starts_after is not None or self._is_own_name_lost(h, message):
            return  # not a monitor (yet), or the bus taking our name as we become one: not traffic
        try:
            tap(h, message, time.time())
        except Exception as error:
            self.end(error)

    def _is_own_name_lost(self, h: Header, message: bytes) -> bool:
        return (h.type == SIGNAL and h.member == "NameLost" and h.sender == DRIVER_NAME
                and h.destination == self.unique_name and read_body(message, h) == [self.unique_name])

    # ------------------------------------------------------------ closing

    def drop(self, reason: str, level: int = logging.WARNING) -> None:
        self.end(LinkClosed(reason))

    def end(self, error: BaseException | None) -> None:
        """Close the connection; `error` (None: we closed it) fails the calls waiting and wait_closed()."""
        if not self.closed:
            self.shut()
        replies, self._replies = self._replies, {}
        for answer in replies.values():
            if not answer.done():
                answer.set_exception(error or LinkClosed("the connection was closed"))
        if not self._ended.done():
            if error is None:
                self._ended.set_result(None)
            else:
                self._ended.set_exception(error)
                self._ended.exception()  # retrieved: a verb that never waits for the end must not warn

    def close(self) -> None:
        self.end(None)

    async def wait_closed(self) -> None:
        """Wait until the connection ends; raises what ended it, unless we closed it ourselves."""
        await asyncio.shield(self._ended)


def _error_reply(action: str, h: Header, raw: bytes) -> BusError:
    try:
        body = read_body(raw, h)
    except ProtocolError:
        body = []
    text = body[0] if body and isinstance(body[0], str) else ""
    return BusError(action, h.error_name or "", text)


async def open_link(choice: BusChoice, timeout: float | None, unix_fds: bool = False) -> WireLink:
    """Connect, authenticate and say Hello, or explain why we could not (as connection.connect does)."""
    link = WireLink(asyncio.get_running_loop(), choice, timeout)
    try:
        await asyncio.wait_for(link.open(unix_fds), timeout)
    except AddressError as error:
        raise UsageError(f"Invalid bus address '{choice.address}': {error}") from None
    except asyncio.TimeoutError:
        link.close()
        raise CommandError(f"Failed to connect to {choice.label}: no answer within {timeout:g} s.") from None
    except ProtocolError as error:
        raise CommandError(f"Failed to authenticate to {choice.label}: {error}") from None
    except (OSError, EOFError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or "closed"
        raise CommandError(f"Failed to connect to {choice.described}: {reason}.\n"
                           "Hint: pick the bus with --user, --system or --address=ADDRESS.") from None
    return link
