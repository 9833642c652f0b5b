"""The bus side of the D-Bus SASL handshake: ServerAuthenticator, with EXTERNAL, DBUS_COOKIE_SHA1 and ANONYMOUS.

It follows dbus-daemon (dbus-auth.c) command by command, state by state,
including its replies ('ERROR "Unknown command"', the order of mechanisms in
REJECTED) and its limit of six rejections per connection. It is stricter in two
places, both fatal where dbus-daemon only answers ERROR: a line with non-ASCII
bytes, and ANONYMOUS when anonymous clients are not allowed is REJECTED instead
of accepted and then disconnected after BEGIN.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
from typing import NamedTuple

from .sasl import (
    ALL_MECHANISMS, ANONYMOUS, CHALLENGE_BYTES, DBUS_COOKIE_SHA1, DEFAULT_COOKIE_CONTEXT, DEFAULT_MAX_LINE_LENGTH,
    EXTERNAL, AuthError, Conversation, Cookie, CookieStore, Handler, KeyringError, check_keyring, cookie_hash,
    hex_decode, split_command, validate_cookie_context,
)

DEFAULT_MAX_FAILURES = 6         # dbus-daemon's max_failures

_GUID = re.compile(r"[0-9a-fA-F]{32}\Z")
_UID = re.compile(r"[0-9]{1,10}\Z")
_UNIX_FD_REFUSED = "Unix FD passing not supported, not authenticated or otherwise not possible"


class CookieWanted(NamedTuple):
    """What a waiting DBUS_COOKIE_SHA1 exchange needs looked up: the identity the client named, and the context."""

    identity: bytes
    context: str


def cookie_for_identity(keyring: CookieStore, wanted: CookieWanted) -> Cookie | None:
    """The cookie to challenge `wanted.identity` with, or None to reject it.

    This may block (a login name goes to the user database; the keyring may wait
    for its lock file), so a server on an event loop calls it in a thread; see
    ServerAuthenticator's `defer_cookies`.
    """
    # The keyring lives in the server user's home, so only that user can authenticate this way.
    if _uid_of(wanted.identity, usernames=True) != os.geteuid():
        return None
    try:
        return keyring.best_cookie(wanted.context)
    except KeyringError:
        return None


def _uid_of(identity: bytes, usernames: bool) -> int | None:
    """The uid a client names: a decimal uid, or (for DBUS_COOKIE_SHA1, as dbus-daemon) a login name."""
    text = identity.decode("ascii", "replace")
    if _UID.match(text):
        return int(text)
    if usernames and text and "\0" not in text:  # getpwnam() raises ValueError on NUL; no login has one
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(text).pw_uid
    return None


# The quick path's lines are at most this long, so a machine whose max_line_length is at least this
# would not refuse them for their length.
_QUICK_LINE_MAX = 64


@functools.lru_cache(maxsize=256)
def _external_line(uid: int) -> bytes:
    """The AUTH line naming `uid` as most clients write it: 'AUTH EXTERNAL <hex of the decimal uid>'."""
    return b"AUTH EXTERNAL " + str(uid).encode("ascii").hex().encode("ascii")


@functools.lru_cache(maxsize=16)
def _ok_line(guid: str) -> bytes:
    return f"OK {guid}\r\n".encode("ascii")


@functools.lru_cache(maxsize=64)
def _offer(guid: str, mechanisms: tuple[str, ...], allow_anonymous: bool, cookie_context: str) -> tuple[str, ...]:
    """The mechanisms REJECTED lists, once the settings are checked; checked once per distinct settings (a bus
    makes an authenticator per connection, all alike)."""
    if not _GUID.match(guid):
        raise ValueError(f"server GUID {guid!r} must be 32 hex digits")
    unknown = [name for name in mechanisms if name not in ALL_MECHANISMS]
    if unknown:
        raise ValueError(f"unsupported authentication mechanism {unknown[0]!r}; "
                         f"busd supports {', '.join(ALL_MECHANISMS)}")
    validate_cookie_context(cookie_context)
    # ANONYMOUS is offered only when both listed and allowed; see the module docstring.
    return tuple(name for name in ALL_MECHANISMS if name in mechanisms and (name != ANONYMOUS or allow_anonymous))


class ServerAuthenticator(Conversation):
    """The bus side of the handshake for one connection.

    Feed received bytes to receive_data() and send what it returns. When `done`
    is true the client has sent BEGIN; `leftover` then holds the bytes that came
    after it (the start of the first message), `uid` the authenticated user
    (None for ANONYMOUS), `mechanism` the mechanism and `unix_fd` whether fd
    passing was agreed. AuthError means: drop the connection. `offered` is the
    list sent with REJECTED; `failures` counts rejections (max_failures is fatal).

    DBUS_COOKIE_SHA1, if offered, takes its secrets from `keyring`, synchronously:
    with busd.transport.keyring's files that can block for up to 8 s while another
    process holds the keyring lock (dbus-daemon's wait), and a login name as the
    identity is a user database lookup. With `defer_cookies` the machine does
    neither: it sets `cookie_wanted` and `waiting` and handles no more lines
    until the caller has run cookie_for_identity() (in a thread) and passed the
    result to cookie_found().
    """

    def __init__(self, guid: str, mechanisms: tuple[str, ...] | list[str] = (EXTERNAL,),
                 peer_uid: int | None = None, allow_anonymous: bool = False,
                 unix_fd_possible: bool = True, cookie_context: str = DEFAULT_COOKIE_CONTEXT,
                 keyring: CookieStore | None = None, max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
                 max_failures: int = DEFAULT_MAX_FAILURES, defer_cookies: bool = False):
        offered = _offer(guid, tuple(mechanisms), allow_anonymous, cookie_context)
        check_keyring(mechanisms, keyring)
        super().__init__("auth", max_line_length)
        self.guid = guid
        self.peer_uid = peer_uid
        self.unix_fd_possible = unix_fd_possible
        self.cookie_context = cookie_context
        self.keyring = keyring
        self.max_failures = max_failures
        self.defer_cookies = defer_cookies
        self.cookie_wanted: CookieWanted | None = None
        self.offered = offered
        self.failures = 0
        self.unix_fd = False
        self.uid: int | None = None
        self.mechanism: str | None = None
        self._awaiting_nul = True
        self._reset_mechanism()
        # The one AUTH line the quick path answers (None: every AUTH goes to the machine).
        self._external_line = (_external_line(peer_uid) if peer_uid is not None and EXTERNAL in offered
                               and max_line_length >= _QUICK_LINE_MAX else None)

    # -- the common exchange ------------------------------------------------

    def receive_data(self, data: bytes) -> bytes:
        """Consume bytes from the client; return the bytes to send back (possibly b"").

        The lines nearly every client sends (AUTH EXTERNAL naming the uid the socket
        says, NEGOTIATE_UNIX_FD, BEGIN) are answered here, as the machine would
        answer them, without its parsing and dispatch: under connection churn the
        machine's general path cost the daemon about 30 µs a connection, its regular
        expressions and dispatch tables running cold between connections. The first
        other line, and all that follows it, goes to the machine.
        """
        if self.done or self.waiting or len(self._lines) or (self._awaiting_nul and data[:1] != b"\0"):
            return super().receive_data(data)
        start = 1 if self._awaiting_nul else 0
        self._awaiting_nul = False
        self._output = []  # (what the machine queued for an earlier read went out with that read)
        while True:
            end = data.find(b"\r\n", start)
            if end < 0:
                break
            line = data[start:end]
            if self._state == "auth":
                if line != self._external_line:
                    break
                self._mechanism = EXTERNAL  # what _on_auth and _external would do with this line
                self._accept(self.peer_uid)
            elif self._state != "begin":
                break
            elif line == b"BEGIN":
                self.done = True
                self.leftover = data[end + 2:]
                return b"".join(self._output)
            elif line == b"NEGOTIATE_UNIX_FD":
                self._on_negotiate_unix_fd("")
            else:
                break
            start = end + 2
        replies = b"".join(self._output)
        if start == len(data):
            return replies
        return replies + super().receive_data(data[start:] if start else data)

    # -- plumbing ---------------------------------------------------------

    def _before_lines(self, data: bytes) -> bytes:
        if self._awaiting_nul and data:
            if data[0] != 0:
                raise AuthError("the client did not send the initial NUL byte; it is not speaking D-Bus")
            self._awaiting_nul = False
            return data[1:]
        return data

    def _send_data(self, data: bytes) -> None:
        self._send(f"DATA {data.hex()}" if data else "DATA")

    def _reset_mechanism(self) -> None:
        self._mechanism: str | None = None
        self._asked_for_identity = False
        self._challenge: str | None = None
        self._cookie: Cookie | None = None
        self.uid = None
        self.mechanism = None
        self.unix_fd = False

    def _accept(self, uid: int | None) -> None:
        self.uid = uid
        self.mechanism = self._mechanism
        self._output.append(_ok_line(self.guid))
        self._state = "begin"

    # -- commands ---------------------------------------------------------

    def _reject(self, args: str = "") -> None:
        self._reset_mechanism()
        self.failures += 1
        self._send("REJECTED" + "".join(f" {name}" for name in self.offered))
        self._state = "auth"
        if self.failures >= self.max_failures:
            # Like dbus-daemon: the last REJECTED still goes out, then the connection is dropped.
            error = AuthError(f"the client failed to authenticate {self.failures} times")
            error.reply = b"".join(self._output)
            self._output.clear()
            raise error

    def _on_auth(self, args: str) -> None:
        if not args:
            self._reject()  # a bare AUTH asks for the list of mechanisms
            return
        name, response_hex = split_command(args)
        if name not in self.offered:
            self._reject()
            return
        response = hex_decode(response_hex)
        if response is None:
            self._send_error("Invalid hex encoding")
            return
        self._mechanism = name
        self._MECHANISMS[name](self, response)

    def _on_data(self, args: str) -> None:
        response = hex_decode(args)
        if response is None:
            self._send_error("Invalid hex encoding")
            return
        assert self._mechanism is not None
        self._MECHANISMS[self._mechanism](self, response)

    def _on_begin(self, args: str) -> None:
        self.done = True

    def _begin_too_early(self, args: str) -> None:
        raise AuthError("the client sent BEGIN before it was authenticated")

    def _on_negotiate_unix_fd(self, args: str) -> None:
        if self.unix_fd_possible:
            self.unix_fd = True
            self._send("AGREE_UNIX_FD")
        else:
            self._send_error(_UNIX_FD_REFUSED)

    def _not_in_conversation(self, args: str) -> None:
        self._send_error("Not currently in an auth conversation")

    def _authenticate_first(self, args: str) -> None:
        self._send_error("Need to authenticate first")

    def _auth_in_progress(self, args: str) -> None:
        self._send_error("Sent AUTH while another AUTH in progress")

    def _auth_after_ok(self, args: str) -> None:
        self._send_error("Sent AUTH while expecting BEGIN")

    def _data_after_ok(self, args: str) -> None:
        self._send_error("Sent DATA while expecting BEGIN")

    # state -> command -> handler; commands not listed get 'ERROR "Unknown command"'
    _HANDLERS: dict[str, dict[str, Handler]] = {
        "auth": {"AUTH": _on_auth, "CANCEL": _not_in_conversation, "DATA": _not_in_conversation,
                 "BEGIN": _begin_too_early, "ERROR": _reject, "NEGOTIATE_UNIX_FD": _authenticate_first},
        "data": {"AUTH": _auth_in_progress, "CANCEL": _reject, "ERROR": _reject, "DATA": _on_data,
                 "BEGIN": _begin_too_early, "NEGOTIATE_UNIX_FD": _authenticate_first},
        "begin": {"AUTH": _auth_after_ok, "DATA": _data_after_ok, "BEGIN": _on_begin,
                  "NEGOTIATE_UNIX_FD": _on_negotiate_unix_fd, "CANCEL": _reject, "ERROR": _reject},
    }

    # -- mechanisms ---------------------------------------------------------

    def _external(self, response: bytes) -> None:
        if self.peer_uid is None:
            self._reject()  # no socket credentials (tcp): EXTERNAL cannot work
            return
        if response:
            if _uid_of(response, usernames=False) == self.peer_uid:
                self._accept(self.peer_uid)
            else:
                self._reject()
            return
        if not self._asked_for_identity:
            # No identity given: ask once; an empty answer means "whoever the socket says I am".
            self._asked_for_identity = True
            self._send_data(b"")
            self._state = "data"
            return
        self._accept(self.peer_uid)

    def _cookie_sha1(self, response: bytes) -> None:
        if self._challenge is None:
            self._cookie_challenge(response)
        else:
            self._cookie_verify(response)

    def _cookie_challenge(self, identity: bytes) -> None:
        wanted = CookieWanted(identity, self.cookie_context)
        if self.defer_cookies:
            self.cookie_wanted = wanted
            self.waiting = True
            return
        assert self.keyring is not None  # __init__ refuses DBUS_COOKIE_SHA1 without one
        self._challenge_with(cookie_for_identity(self.keyring, wanted))

    def cookie_found(self, cookie: Cookie | None) -> bytes:
        """Resume a waiting DBUS_COOKIE_SHA1 exchange with cookie_for_identity()'s answer; the bytes to send.

        Like receive_data(), it handles the lines that arrived meanwhile, and raises AuthError.
        """
        if not self.waiting:
            raise ValueError("no DBUS_COOKIE_SHA1 exchange is waiting for a cookie")
        self.waiting = False
        self.cookie_wanted = None
        self._output = []
        self._challenge_with(cookie)
        return self._run_lines()

    def _challenge_with(self, cookie: Cookie | None) -> None:
        if cookie is None:
            self._reject()
            return
        self._cookie = cookie
        self._challenge = os.urandom(CHALLENGE_BYTES).hex()  # = secrets.token_hex, without importing hashlib
        self._send_data(f"{self.cookie_context} {cookie.id} {self._challenge}".encode("ascii"))
        self._state = "data"

    def _cookie_verify(self, response: bytes) -> None:
        assert self._cookie is not None and self._challenge is not None
        if not response.isascii():
            self._reject()
            return
        client_challenge, client_hash = split_command(response.decode("ascii"))
        if not client_challenge or not client_hash:
            self._reject()
            return
        import hmac  # here, not at the top: only a cookie exchange needs it (it imports hashlib)

        expected = cookie_hash(self._challenge, client_challenge, self._cookie.secret_hex)
        if hmac.compare_digest(expected, client_hash):
            self._accept(os.geteuid())
        else:
            self._reject()

    def _anonymous(self, response: bytes) -> None:
        try:
            response.decode("utf-8")  # optional trace text, which must be UTF-8
        except UnicodeDecodeError:
            self._reject()
            return
        self._accept(None)

    _MECHANISMS: dict[str, Handler] = {
        EXTERNAL: _external, DBUS_COOKIE_SHA1: _cookie_sha1, ANONYMOUS: _anonymous,
    }
