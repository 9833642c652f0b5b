"""The D-Bus SASL handshake, what both sides share: mechanism names, line framing, command dispatch, cookie proofs.

The two sides are state machines in sasl_server (ServerAuthenticator) and
sasl_client (ClientAuthenticator): bytes in, bytes out, no socket. Neither
touches a file: DBUS_COOKIE_SHA1 reaches its secrets through a CookieStore the
caller supplies (busd.transport.keyring keeps them in ~/.dbus-keyrings, as
dbus-daemon does).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple, Protocol

from .errors import ProtocolError

EXTERNAL = "EXTERNAL"
DBUS_COOKIE_SHA1 = "DBUS_COOKIE_SHA1"
ANONYMOUS = "ANONYMOUS"
ALL_MECHANISMS = (EXTERNAL, DBUS_COOKIE_SHA1, ANONYMOUS)  # dbus-daemon's order of preference

DEFAULT_COOKIE_CONTEXT = "org_freedesktop_general"
DEFAULT_MAX_LINE_LENGTH = 16384  # dbus-daemon drops a peer that buffers more than 16 KiB while authenticating
CHALLENGE_BYTES = 16             # 128 bits of randomness, as dbus-daemon

_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*\Z")
_COMMAND = re.compile(r"([^ \t]*)[ \t]*(.*)\Z", re.DOTALL)


class AuthError(ProtocolError):
    """The peer broke the authentication protocol or could not authenticate; drop the connection.

    `reply` holds any last lines to send before dropping it (the final REJECTED).
    """

    reply: bytes = b""


class KeyringError(Exception):
    """The DBUS_COOKIE_SHA1 keyring cannot be used; the message says why and what to fix."""


class Cookie(NamedTuple):
    """One DBUS_COOKIE_SHA1 secret, as a keyring file line holds it: '<id> <creation time> <hex secret>'."""

    id: int
    created: int
    secret_hex: str


class CookieStore(Protocol):
    """Where the DBUS_COOKIE_SHA1 secrets of each cookie context live; both methods raise KeyringError."""

    def best_cookie(self, context: str) -> Cookie:
        """A recent cookie of `context` to challenge a client with, created if none is recent (server side)."""
        ...

    def find(self, context: str, cookie_id: int) -> Cookie | None:
        """The cookie of `context` with this id, or None (client side)."""
        ...


def hex_decode(text: str) -> bytes | None:
    """Strict hex: an even number of hex digits, nothing else (bytes.fromhex allows spaces)."""
    return bytes.fromhex(text) if _HEX.match(text) else None


def split_command(text: str) -> tuple[str, str]:
    """'AUTH EXTERNAL 31' -> ('AUTH', 'EXTERNAL 31'): split at the first blank, as dbus-daemon does."""
    match = _COMMAND.match(text)
    assert match is not None  # the pattern matches every string
    return match.group(1), match.group(2)


def validate_cookie_context(context: str) -> None:
    """Raise ValueError unless `context` can name a keyring file (dbus-daemon's rules)."""
    if not context or not context.isascii() or "\0" in context:
        raise ValueError(f"cookie context {context!r} must be non-empty ASCII")
    for forbidden in ("/", "\\", ".", " ", "\t", "\n", "\r"):
        if forbidden in context:
            raise ValueError(f"cookie context {context!r} must not contain {forbidden!r}")


def cookie_hash(server_challenge: str, client_challenge: str, secret_hex: str) -> str:
    """The DBUS_COOKIE_SHA1 proof: hex SHA-1 of 'server_challenge:client_challenge:cookie'."""
    import hashlib  # here, not at the top: only a cookie exchange needs it (libcrypto, 4 MiB of a start)

    return hashlib.sha1(f"{server_challenge}:{client_challenge}:{secret_hex}".encode("ascii")).hexdigest()


def check_keyring(mechanisms: tuple[str, ...] | list[str], keyring: CookieStore | None) -> None:
    """Raise ValueError if DBUS_COOKIE_SHA1 is to be used with no keyring to take its secrets from."""
    if DBUS_COOKIE_SHA1 in mechanisms and keyring is None:
        raise ValueError(f"{DBUS_COOKIE_SHA1} needs a keyring: pass a CookieStore "
                         "(busd.transport.keyring.KeyringDirectory() is the user's ~/.dbus-keyrings)")


class LineReader:
    """Splits the incoming byte stream into \\r\\n-terminated ASCII lines, enforcing the length limit."""

    def __init__(self, max_line_length: int):
        self.max_line_length = max_line_length
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def __len__(self) -> int:
        """How many bytes wait: an unfinished line, or lines not yet taken."""
        return len(self._buffer)

    def next_line(self) -> str | None:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > self.max_line_length + 1:  # + 1: the '\r' of a full-length line
                raise AuthError(f"authentication line longer than {self.max_line_length} bytes")
            return None
        if end > self.max_line_length:
            raise AuthError(f"authentication line longer than {self.max_line_length} bytes")
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 2]
        if not line.isascii() or b"\0" in line:
            raise AuthError(f"authentication line contains non-ASCII bytes or NUL: {line[:60]!r}")
        return line.decode("ascii")

    def take_rest(self) -> bytes:
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


Handler = Callable[..., None]


class Conversation:
    """What both sides share: line framing, dispatch on (state, command), collecting the reply bytes.

    Subclasses provide _HANDLERS: state -> command -> handler, where "*" handles
    any command not listed and the default for that is 'ERROR "Unknown command"'.
    """

    _HANDLERS: dict[str, dict[str, Handler]]

    def __init__(self, state: str, max_line_length: int):
        self.done = False
        self.waiting = False  # a handler waits for something the caller looks up; lines wait meanwhile
        self.leftover = b""
        self._state = state
        self._lines = LineReader(max_line_length)
        self._output: list[bytes] = []

    def receive_data(self, data: bytes) -> bytes:
        """Consume bytes from the peer; return the bytes to send back (possibly b"")."""
        if self.done:
            self.leftover += data  # the caller should have switched to message parsing
            return b""
        self._lines.feed(self._before_lines(data))
        self._output = []
        return self._run_lines()

    def _run_lines(self) -> bytes:
        """Handle every whole line received, until done or waiting; return the replies."""
        while not self.done and not self.waiting:
            line = self._lines.next_line()
            if line is None:
                break
            command, args = split_command(line)
            handlers = self._HANDLERS[self._state]
            handler = handlers.get(command) or handlers.get("*") or Conversation._unknown_command
            handler(self, args)
        if self.done:
            self.leftover = self._lines.take_rest()
        return b"".join(self._output)

    def _before_lines(self, data: bytes) -> bytes:
        return data

    def _send(self, line: str) -> None:
        self._output.append(line.encode("ascii") + b"\r\n")

    def _send_error(self, message: str) -> None:
        self._send(f'ERROR "{message}"')

    def _unknown_command(self, args: str) -> None:
        self._send_error("Unknown command")
