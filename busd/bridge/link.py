"""The bridge's client connection to the upstream bus: connect, authenticate, Hello, then framed messages.

Theory. Once open, the link is a busd.transport.stream.Stream like the daemon's
own connections (one read, framing, fd and batched-write loop); it adds the
client's SASL side, its own serials and reply table. Replies to the link's own
driver calls (Hello, AddMatch, RequestName, ...) go to the callback given with
the call, inline and in stream order, so a GetNameOwner answer and a
NameOwnerChanged signal are always applied in the order the upstream bus sent
them. Everything else goes to `on_message`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from ..transport.dial import can_dial, dial
from ..transport.keyring import KeyringDirectory
from ..bus.ports import SharedFds
from ..transport.stream import Stream, close_fds
from ..wire.address import Address, AddressError, parse_addresses
from ..wire.errors import ProtocolError
from ..wire.message import (
    ERROR, MAX_MESSAGE_SIZE, METHOD_CALL, METHOD_RETURN, Header, build_message, read_body,
)
from ..wire.sasl import ANONYMOUS, DBUS_COOKIE_SHA1, EXTERNAL
from ..wire.sasl_client import ClientAuthenticator
from ..wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH

log = logging.getLogger("busd.bridge")


ReplyHandler = Callable[[Header, bytes], None]


class LinkError(Exception):
    """The upstream bus cannot be reached or would not let us in; the message says why."""


def error_text(h: Header, buf: bytes) -> str:
    """'Name: text' of an error reply, for logs and messages."""
    try:
        body = read_body(buf, h)
    except ProtocolError:
        body = []
    text = body[0] if body and isinstance(body[0], str) else ""
    return f"{h.error_name}: {text}" if text else str(h.error_name)




class UpstreamLink(Stream):
    """One authenticated connection to the upstream bus, with its own serials and its own reply table."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_message: Callable[[bytes, Header, list[int] | None], None],
                 on_closed: Callable[[str], None],
                 on_drained: Callable[[], None] = lambda: None,
                 schedule_flush: Callable[[Stream], None] | None = None,
                 on_read_start: Callable[[], None] = lambda: None, on_read_done: Callable[[], None] = lambda: None,
                 max_message_size: int = MAX_MESSAGE_SIZE, max_message_unix_fds: int = 1024):
        # The bus's flush scheduler writes us with its own connections, at the end of the read in progress.
        super().__init__(loop, schedule_flush or (lambda link: loop.call_soon(link.flush)))
        self.on_message = on_message
        self.started = False  # until start(), messages other than our replies wait in _early
        self._early: list[tuple[bytes, Header, list[int] | None]] = []
        self.on_closed = on_closed
        self.on_drained = on_drained
        self.on_read_start, self.on_read_done = on_read_start, on_read_done  # around the messages of one read
        self.max_message_size = max_message_size
        self.max_message_unix_fds = max_message_unix_fds
        self.address = ""
        self.guid: str | None = None
        self.unique_name: str | None = None
        self._serial = 0
        self._replies: dict[int, ReplyHandler] = {}
        self.low_water = 1 << 20  # on_drained fires when the queue falls back below this
        self._high = False

    # ------------------------------------------------------------ opening

    async def open(self, address_text: str, refuse_guid: str | None = None) -> None:
        """Connect to the first address that answers, authenticate and say Hello; raise LinkError if none does.

        `refuse_guid` is our own bus's GUID: an upstream that is this very bus is refused.
        """
        try:
            addresses = parse_addresses(address_text)
        except AddressError as exc:
            raise LinkError(str(exc)) from None
        problems = []
        for address in addresses:
            if not can_dial(address):
                problems.append(f"{address}: the bridge connects only over unix: and tcp:")
                continue
            try:
                sock = await dial(self.loop, address)
            except OSError as exc:
                problems.append(f"{address}: {exc.strerror or exc}")
                continue
            self.attach(sock)
            self.address = str(address)
            try:
                leftover = await self._authenticate(sock, address, refuse_guid)
                await self._hello(leftover)
            except BaseException:
                self.close("could not finish connecting", notify=False)
                raise
            return
        raise LinkError("; ".join(problems) or f"no address in {address_text!r}")

    async def _authenticate(self, sock: socket.socket, address: Address, refuse_guid: str | None) -> bytes:
        """The client's SASL side; returns what the bus sent after the handshake (the start of the stream)."""
        unix = address.transport == "unix"
        auth = ClientAuthenticator(uid=os.getuid(), mechanisms=(EXTERNAL, DBUS_COOKIE_SHA1, ANONYMOUS),
                                   negotiate_unix_fd=unix, keyring=KeyringDirectory(uid=os.getuid()))
        loop = self.loop
        try:
            await loop.sock_sendall(sock, auth.initial_bytes())
            while not auth.done:
                data = await loop.sock_recv(sock, 4096)
                if not data:
                    raise LinkError(f"{address}: the bus closed the connection during authentication")
                reply = auth.receive_data(data)
                if reply:
                    await loop.sock_sendall(sock, reply)
        except ProtocolError as exc:
            raise LinkError(f"{address}: authentication failed: {exc.reason}") from None
        except OSError as exc:
            raise LinkError(f"{address}: {exc.strerror or exc}") from None
        if address.guid is not None and auth.guid != address.guid:
            raise LinkError(f"{address}: the bus answered with GUID {auth.guid}, not the address's guid=")
        if refuse_guid is not None and auth.guid == refuse_guid:
            raise LinkError(f"{address} is this bus itself: a bridge needs another bus upstream")
        self.guid = auth.guid
        self.can_pass_fds = bool(auth.unix_fd)
        return bytes(auth.leftover or b"")

    async def _hello(self, leftover: bytes) -> None:
        answer: asyncio.Future = self.loop.create_future()

        def got(h: Header, buf: bytes) -> None:
            if not answer.done():
                answer.set_result((h, buf))
        self.call("Hello", handler=got)
        self.start_reading()
        self.feed(leftover)
        if self.closed:
            raise LinkError(f"{self.address}: the bus closed the connection before Hello was answered")
        h, buf = await answer
        if h.type == ERROR:
            raise LinkError(f"{self.address}: Hello failed: {error_text(h, buf)}")
        self.unique_name = read_body(buf, h)[0]

    # ------------------------------------------------------------ sending

    def next_serial(self) -> int:
        self._serial = serial = (self._serial % 0xFFFFFFFF) + 1
        return serial

    def call(self, member: str, signature: str = "", body: list | tuple = (), handler: ReplyHandler | None = None,
             *, destination: str = DRIVER_NAME, path: str = DRIVER_PATH, interface: str = DRIVER_INTERFACE) -> int:
        """Call a method (the upstream driver's by default); `handler` gets the reply, inline, in stream order.

        Without a handler, an error reply is logged and a normal reply ignored.
        """
        serial = self.next_serial()
        self._replies[serial] = handler or _log_errors(member, body)
        self.send(build_message(METHOD_CALL, serial, path=path, interface=interface, member=member,
                                destination=destination, signature=signature, body=body))
        return serial

    def send(self, head: bytes, body: Any = b"", fds: list[int] | SharedFds | None = None) -> None:
        """Queue one message (header and body, both bytes-like); the fds are now ours to close."""
        if self.closed:
            close_fds(fds)
            return
        self.queue(head, body, fds)
        if self.out_bytes >= self.low_water:
            self._high = True

    def flushed(self) -> None:
        if self._high and self.out_bytes < self.low_water:
            self._high = False
            self.on_drained()

    # ------------------------------------------------------------ reading

    def data_received(self, data: bytes) -> None:
        self.on_read_start()
        try:
            self.feed(data)
        finally:
            self.on_read_done()

    def message_received(self, message: bytes, h: Header, fds: list[int] | None) -> None:
        if h.type == METHOD_RETURN or h.type == ERROR:
            handler = self._replies.pop(h.reply_serial, None)
            if handler is not None:
                close_fds(fds)
                handler(h, message)
                return
        if self.started:
            self.on_message(message, h, fds)
        else:
            self._early.append((message, h, fds))

    def start(self) -> None:
        """Hand on messages from now on, starting with those that came in while we were saying Hello."""
        self.started = True
        early, self._early = self._early, []
        for message, h, fds in early:
            if self.closed:
                close_fds(fds)
            else:
                self.on_message(message, h, fds)

    # ------------------------------------------------------------ closing

    def drop(self, reason: str, level: int = logging.WARNING) -> None:
        """The stream failed (read, write or protocol error): close and tell the bridge."""
        self.close(reason)

    def close(self, reason: str, notify: bool = True) -> None:
        if self.closed:
            return
        self.shut()
        for _message, _h, fds in self._early:
            close_fds(fds)
        self._early.clear()
        self._replies.clear()
        if notify:
            self.on_closed(reason)


def _log_errors(member: str, body: list | tuple) -> ReplyHandler:
    def handler(h: Header, buf: bytes) -> None:
        if h.type == ERROR:
            log.warning("the upstream bus refused %s%s: %s", member, tuple(body) if body else "()",
                        error_text(h, buf))
    return handler


__all__ = ["LinkError", "UpstreamLink", "close_fds", "error_text"]
