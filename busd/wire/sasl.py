"""The D-Bus SASL handshake, server and client side, as state machines: bytes in, bytes out.

Neither side touches a socket. The caller feeds what it read to receive_data()
and sends what comes back. Only DBUS_COOKIE_SHA1 does file I/O: it reads (and on
the server side writes) the cookie keyring in ~/.dbus-keyrings.

The server follows dbus-daemon (dbus-auth.c) command by command, state by state,
including its replies ('ERROR "Unknown command"', the order of mechanisms in
REJECTED) and its limit of six rejections per connection. It is stricter in two
places, both fatal where dbus-daemon only answers ERROR: a line with non-ASCII
bytes, and ANONYMOUS when anonymous clients are not allowed is REJECTED instead
of accepted and then disconnected after BEGIN.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import pwd
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from .errors import ProtocolError

EXTERNAL = "EXTERNAL"
DBUS_COOKIE_SHA1 = "DBUS_COOKIE_SHA1"
ANONYMOUS = "ANONYMOUS"
ALL_MECHANISMS = (EXTERNAL, DBUS_COOKIE_SHA1, ANONYMOUS)  # dbus-daemon's order of preference

DEFAULT_COOKIE_CONTEXT = "org_freedesktop_general"
DEFAULT_MAX_LINE_LENGTH = 16384  # dbus-daemon drops a peer that buffers more than 16 KiB while authenticating
DEFAULT_MAX_FAILURES = 6         # dbus-daemon's max_failures
CHALLENGE_BYTES = 16             # 128 bits of randomness, as dbus-daemon

_GUID = re.compile(r"[0-9a-fA-F]{32}\Z")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*\Z")
_UID = re.compile(r"[0-9]{1,10}\Z")
_COMMAND = re.compile(r"([^ \t]*)[ \t]*(.*)\Z", re.DOTALL)
_UNIX_FD_REFUSED = "Unix FD passing not supported, not authenticated or otherwise not possible"


class AuthError(ProtocolError):
    """The peer broke the authentication protocol or could not authenticate; drop the connection.

    `reply` holds any last lines to send before dropping it (the final REJECTED).
    """

    reply: bytes = b""


class KeyringError(Exception):
    """The DBUS_COOKIE_SHA1 keyring cannot be used; the message says why and what to fix."""


def _hex_decode(text: str) -> bytes | None:
    """Strict hex: an even number of hex digits, nothing else (bytes.fromhex allows spaces)."""
    return bytes.fromhex(text) if _HEX.match(text) else None


def _split_command(text: str) -> tuple[str, str]:
    """'AUTH EXTERNAL 31' -> ('AUTH', 'EXTERNAL 31'): split at the first blank, as dbus-daemon does."""
    match = _COMMAND.match(text)
    assert match is not None  # the pattern matches every string
    return match.group(1), match.group(2)


def _uid_of(identity: bytes, usernames: bool) -> int | None:
    """The uid a client names: a decimal uid, or (for DBUS_COOKIE_SHA1, as dbus-daemon) a login name."""
    text = identity.decode("ascii", "replace")
    if _UID.match(text):
        return int(text)
    if usernames and text and "\0" not in text:  # getpwnam() raises ValueError on NUL; no login has one
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(text).pw_uid
    return None


def validate_cookie_context(context: str) -> None:
    """Raise ValueError unless `context` can name a keyring file (dbus-daemon's rules)."""
    if not context or not context.isascii() or "\0" in context:
        raise ValueError(f"cookie context {context!r} must be non-empty ASCII")
    for forbidden in ("/", "\\", ".", " ", "\t", "\n", "\r"):
        if forbidden in context:
            raise ValueError(f"cookie context {context!r} must not contain {forbidden!r}")


def cookie_hash(server_challenge: str, client_challenge: str, secret_hex: str) -> str:
    """The DBUS_COOKIE_SHA1 proof: hex SHA-1 of 'server_challenge:client_challenge:cookie'."""
    return hashlib.sha1(f"{server_challenge}:{client_challenge}:{secret_hex}".encode("ascii")).hexdigest()


def default_keyring_dir(uid: int | None = None) -> str:
    """~/.dbus-keyrings of `uid` (default: the effective user), from the password database like dbus."""
    uid = os.geteuid() if uid is None else uid
    try:
        home = pwd.getpwuid(uid).pw_dir
    except KeyError:
        home = os.path.expanduser("~")
    return os.path.join(home, ".dbus-keyrings")


class Cookie(NamedTuple):
    """One line of a keyring file: '<id> <creation time> <hex secret>'."""

    id: int
    created: int
    secret_hex: str


class CookieKeyring:
    """The DBUS_COOKIE_SHA1 secrets of one context: the file <directory>/<context>.

    Clients only read it. A server adds a cookie when none is recent, under the
    lock file <context>.lock, dropping expired ones; the timings are dbus-daemon's.
    """

    NEW_COOKIE_AFTER = 5 * 60            # a cookie older than this is not offered in new challenges
    EXPIRE_AFTER = NEW_COOKIE_AFTER + 2 * 60  # ...and is removed after this
    MAX_CLOCK_SKEW = 5 * 60              # cookies dated further in the future are dropped
    MAX_COOKIES = 256
    LOCK_ATTEMPTS = 32                   # dbus-daemon waits 32 x 250 ms, then takes the lock as stale
    LOCK_RETRY_SECONDS = 0.25
    SECRET_BYTES = 24

    def __init__(self, directory: str, context: str = DEFAULT_COOKIE_CONTEXT,
                 clock: Callable[[], float] = time.time):
        validate_cookie_context(context)
        self.directory = directory
        self.path = os.path.join(directory, context)
        self.lock_path = self.path + ".lock"
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock())

    def check_directory(self) -> None:
        """Raise KeyringError unless the directory is ours and private (no access for group or others)."""
        try:
            info = os.stat(self.directory)
        except OSError as error:
            raise KeyringError(f"cannot use keyring directory {self.directory}: {error.strerror}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise KeyringError(f"keyring {self.directory} is not a directory")
        if info.st_uid != os.geteuid():
            raise KeyringError(f"keyring directory {self.directory} belongs to uid {info.st_uid}, "
                               f"not to us (uid {os.geteuid()}); remove it or fix its owner")
        if info.st_mode & 0o077:
            raise KeyringError(f"keyring directory {self.directory} is open to other users "
                               f"(mode {stat.S_IMODE(info.st_mode):03o}); run chmod 700 {self.directory}")

    def cookies(self) -> list[Cookie]:
        """The valid, unexpired cookies in the file (none if it does not exist)."""
        self.check_directory()
        try:
            with open(self.path, "rb") as keyring_file:
                contents = keyring_file.read()
        except FileNotFoundError:
            return []
        except OSError as error:
            raise KeyringError(f"cannot read keyring {self.path}: {error.strerror}") from None
        return self._parse(contents)

    def _parse(self, contents: bytes) -> list[Cookie]:
        if not contents.isascii():
            return []  # dbus-daemon ignores a keyring with non-ASCII content entirely
        now = self._now()
        cookies: list[Cookie] = []
        for line in contents.decode("ascii").splitlines():
            if len(cookies) >= self.MAX_COOKIES:
                break
            fields = line.split()
            if len(fields) != 3 or not fields[0].isdigit() or not re.fullmatch(r"-?[0-9]+", fields[1]):
                continue  # malformed lines are skipped, as dbus-daemon does
            cookie_id, created, secret = int(fields[0]), int(fields[1]), _hex_decode(fields[2])
            if cookie_id >= 2**31 or not secret:
                continue
            if created < 0 or created > now + self.MAX_CLOCK_SKEW or created < now - self.EXPIRE_AFTER:
                continue
            cookies.append(Cookie(cookie_id, created, secret.hex()))
        return cookies

    def find(self, cookie_id: int) -> Cookie | None:
        """The cookie with this id, or None."""
        return next((cookie for cookie in self.cookies() if cookie.id == cookie_id), None)

    def _recent(self, cookies: list[Cookie]) -> Cookie | None:
        threshold = self._now() - self.NEW_COOKIE_AFTER
        return next((cookie for cookie in cookies if cookie.created > threshold), None)

    def best_cookie(self) -> Cookie:
        """A recent cookie for a new challenge, adding one to the file if none is recent (server side)."""
        with contextlib.suppress(OSError):
            os.mkdir(self.directory, 0o700)  # fails when it exists; check_directory() reports real problems
        cookie = self._recent(self.cookies())
        if cookie is not None:
            return cookie
        with self._locked():
            cookies = self.cookies()[:self.MAX_COOKIES - 1]  # re-read: another server may have added one
            cookie = self._recent(cookies)
            if cookie is None:
                cookie = self._new_cookie(cookies)
                self._save(cookies + [cookie])
        return cookie

    def _new_cookie(self, existing: list[Cookie]) -> Cookie:
        taken = {cookie.id for cookie in existing}
        cookie_id = secrets.randbits(31)
        while cookie_id in taken:
            cookie_id = secrets.randbits(31)
        return Cookie(cookie_id, self._now(), secrets.token_bytes(self.SECRET_BYTES).hex())

    def _save(self, cookies: list[Cookie]) -> None:
        text = "".join(f"{cookie.id} {cookie.created} {cookie.secret_hex}\n" for cookie in cookies)
        temporary = f"{self.path}.{secrets.token_hex(4)}.tmp"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as keyring_file:
                keyring_file.write(text)
            os.replace(temporary, self.path)  # readers see the old file or the new one, never half
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise KeyringError(f"cannot write keyring {self.path}: {error.strerror}") from None

    def _try_lock(self) -> bool:
        try:
            os.close(os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return False
        except OSError as error:
            raise KeyringError(f"cannot create lock file {self.lock_path}: {error.strerror}") from None
        return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        for _ in range(self.LOCK_ATTEMPTS):
            if self._try_lock():
                break
            time.sleep(self.LOCK_RETRY_SECONDS)  # no event to wait for: the lock is a plain file
        else:
            # Like dbus-daemon: a lock held this long belongs to a process that died.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)
            if not self._try_lock():
                raise KeyringError(f"lock file {self.lock_path} is held by someone else; "
                                   "remove it if no D-Bus server is running")
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)


class _LineReader:
    """Splits the incoming byte stream into \\r\\n-terminated ASCII lines, enforcing the length limit."""

    def __init__(self, max_line_length: int):
        self.max_line_length = max_line_length
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

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


_Handler = Callable[..., None]


class _Conversation:
    """What both sides share: line framing, dispatch on (state, command), collecting the reply bytes.

    Subclasses provide _HANDLERS: state -> command -> handler, where "*" handles
    any command not listed and the default for that is 'ERROR "Unknown command"'.
    """

    _HANDLERS: dict[str, dict[str, _Handler]]

    def __init__(self, state: str, max_line_length: int):
        self.done = False
        self.leftover = b""
        self._state = state
        self._lines = _LineReader(max_line_length)
        self._output: list[bytes] = []

    def receive_data(self, data: bytes) -> bytes:
        """Consume bytes from the peer; return the bytes to send back (possibly b"")."""
        if self.done:
            self.leftover += data  # the caller should have switched to message parsing
            return b""
        self._lines.feed(self._before_lines(data))
        self._output = []
        while not self.done:
            line = self._lines.next_line()
            if line is None:
                break
            command, args = _split_command(line)
            handlers = self._HANDLERS[self._state]
            handler = handlers.get(command) or handlers.get("*") or _Conversation._unknown_command
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


class ServerAuthenticator(_Conversation):
    """The bus side of the handshake for one connection.

    Feed received bytes to receive_data() and send what it returns. When `done`
    is true the client has sent BEGIN; `leftover` then holds the bytes that came
    after it (the start of the first message), `uid` the authenticated user
    (None for ANONYMOUS), `mechanism` the mechanism and `unix_fd` whether fd
    passing was agreed. AuthError means: drop the connection. `offered` is the
    list sent with REJECTED; `failures` counts rejections (max_failures is fatal).

    DBUS_COOKIE_SHA1 reads and may write the keyring synchronously; when another
    process holds the keyring lock this can block for up to 8 s (dbus-daemon's wait).
    """

    def __init__(self, guid: str, mechanisms: tuple[str, ...] | list[str] = (EXTERNAL,),
                 peer_uid: int | None = None, allow_anonymous: bool = False,
                 unix_fd_possible: bool = True, cookie_context: str = DEFAULT_COOKIE_CONTEXT,
                 keyring_dir: str | None = None, max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
                 max_failures: int = DEFAULT_MAX_FAILURES):
        if not _GUID.match(guid):
            raise ValueError(f"server GUID {guid!r} must be 32 hex digits")
        unknown = [name for name in mechanisms if name not in ALL_MECHANISMS]
        if unknown:
            raise ValueError(f"unsupported authentication mechanism {unknown[0]!r}; "
                             f"busd supports {', '.join(ALL_MECHANISMS)}")
        validate_cookie_context(cookie_context)
        super().__init__("auth", max_line_length)
        self.guid = guid
        self.peer_uid = peer_uid
        self.unix_fd_possible = unix_fd_possible
        self.cookie_context = cookie_context
        self.keyring_dir = keyring_dir
        self.max_failures = max_failures
        # ANONYMOUS is offered only when both listed and allowed; see the module docstring.
        self.offered = tuple(name for name in ALL_MECHANISMS
                             if name in mechanisms and (name != ANONYMOUS or allow_anonymous))
        self.failures = 0
        self.unix_fd = False
        self.uid: int | None = None
        self.mechanism: str | None = None
        self._awaiting_nul = True
        self._reset_mechanism()

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
        self._send(f"OK {self.guid}")
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
        name, response_hex = _split_command(args)
        if name not in self.offered:
            self._reject()
            return
        response = _hex_decode(response_hex)
        if response is None:
            self._send_error("Invalid hex encoding")
            return
        self._mechanism = name
        self._MECHANISMS[name](self, response)

    def _on_data(self, args: str) -> None:
        response = _hex_decode(args)
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
    _HANDLERS: dict[str, dict[str, _Handler]] = {
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
        # The keyring lives in the server user's home, so only that user can authenticate this way.
        if _uid_of(identity, usernames=True) != os.geteuid():
            self._reject()
            return
        directory = self.keyring_dir if self.keyring_dir is not None else default_keyring_dir()
        try:
            cookie = CookieKeyring(directory, self.cookie_context).best_cookie()
        except KeyringError:
            self._reject()
            return
        self._cookie = cookie
        self._challenge = secrets.token_hex(CHALLENGE_BYTES)
        self._send_data(f"{self.cookie_context} {cookie.id} {self._challenge}".encode("ascii"))
        self._state = "data"

    def _cookie_verify(self, response: bytes) -> None:
        assert self._cookie is not None and self._challenge is not None
        if not response.isascii():
            self._reject()
            return
        client_challenge, client_hash = _split_command(response.decode("ascii"))
        if not client_challenge or not client_hash:
            self._reject()
            return
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

    _MECHANISMS: dict[str, _Handler] = {
        EXTERNAL: _external, DBUS_COOKIE_SHA1: _cookie_sha1, ANONYMOUS: _anonymous,
    }


class ClientAuthenticator(_Conversation):
    """The client side of the handshake.

    Send initial_bytes() first, then feed what the server sends to receive_data()
    and send what it returns. Mechanisms are tried in the given order, skipping
    those the server does not offer. When `done` is true BEGIN has been produced;
    `guid` is the server's GUID and `unix_fd` whether fd passing was agreed.
    AuthError means the server accepted none of our mechanisms (`problems` says why
    each failed) or broke the protocol.
    """

    def __init__(self, uid: int | None = os.getuid(), mechanisms: tuple[str, ...] | list[str] = (EXTERNAL,),
                 negotiate_unix_fd: bool = True, keyring_dir: str | None = None,
                 anonymous_trace: str = "busd", max_line_length: int = DEFAULT_MAX_LINE_LENGTH):
        unknown = [name for name in mechanisms if name not in ALL_MECHANISMS]
        if unknown or not mechanisms:
            raise ValueError(f"unsupported authentication mechanism list {list(mechanisms)!r}; "
                             f"choose from {', '.join(ALL_MECHANISMS)}")
        super().__init__("start", max_line_length)
        self.uid = uid  # None: send no identity with EXTERNAL and let the server use the socket's
        self.mechanisms = tuple(mechanisms)
        self.negotiate_unix_fd = negotiate_unix_fd
        self.keyring_dir = keyring_dir
        self.anonymous_trace = anonymous_trace
        self.guid: str | None = None
        self.unix_fd = False
        self.mechanism: str | None = None
        self.problems: list[str] = []  # why each mechanism failed, for the final error message
        self._to_try = list(self.mechanisms)

    def initial_bytes(self) -> bytes:
        """The NUL byte and the first AUTH command: send these as soon as the socket is connected."""
        if self._state != "start":
            raise RuntimeError("initial_bytes() was already called")
        self._output = []
        self._start(self._to_try.pop(0))
        return b"\0" + b"".join(self._output)

    def _before_lines(self, data: bytes) -> bytes:
        if self._state == "start":
            raise RuntimeError("send initial_bytes() before feeding server data")
        return data

    def _send_error(self, message: str) -> None:
        self.problems.append(f"{self.mechanism}: {message}")
        super()._send_error(message)

    def _start(self, name: str) -> None:
        self.mechanism = name
        response = self._INITIAL_RESPONSES[name](self)
        self._send(f"AUTH {name} {response.hex()}" if response else f"AUTH {name}")
        self._state = "data"

    # -- commands ---------------------------------------------------------

    def _on_rejected(self, args: str) -> None:
        offered = args.split()
        candidates = [name for name in self._to_try if name in offered]
        self.problems.append(f"{self.mechanism}: rejected")
        if not candidates:
            raise AuthError(f"the server rejected authentication ({'; '.join(self.problems)}); it offers "
                            f"{' '.join(offered) or 'no mechanism'} and we can use {' '.join(self.mechanisms)}")
        self._to_try = candidates[1:]
        self._start(candidates[0])

    def _on_ok(self, args: str) -> None:
        if not args or _hex_decode(args) is None:
            raise AuthError(f"the server sent OK with a malformed GUID {args!r}")
        self.guid = args
        if self.negotiate_unix_fd:
            self._send("NEGOTIATE_UNIX_FD")
            self._state = "agree"
        else:
            self._begin()

    def _begin(self) -> None:
        self._send("BEGIN")
        self.done = True

    def _on_agree(self, args: str) -> None:
        self.unix_fd = True
        self._begin()

    def _on_fd_refused(self, args: str) -> None:
        self.unix_fd = False
        self._begin()

    def _on_error(self, args: str) -> None:
        self.problems.append(f"{self.mechanism}: server said {args}")
        self._send("CANCEL")
        self._state = "cancelled"

    def _on_data(self, args: str) -> None:
        challenge = _hex_decode(args)
        if challenge is None:
            self._send_error("Invalid hex encoding")
            return
        assert self.mechanism is not None
        self._DATA_HANDLERS[self.mechanism](self, challenge)

    def _protocol_violation(self, args: str) -> None:
        raise AuthError(f"the server sent an unexpected reply while we were in state {self._state!r}")

    # state -> command -> handler; "*" is the handler for anything else
    _HANDLERS: dict[str, dict[str, _Handler]] = {
        "data": {"DATA": _on_data, "REJECTED": _on_rejected, "OK": _on_ok, "ERROR": _on_error},
        "cancelled": {"REJECTED": _on_rejected, "*": _protocol_violation},
        "agree": {"AGREE_UNIX_FD": _on_agree, "ERROR": _on_fd_refused, "*": _protocol_violation},
    }

    # -- mechanisms ---------------------------------------------------------

    def _external_response(self) -> bytes:
        return b"" if self.uid is None else str(self.uid).encode("ascii")

    def _cookie_response(self) -> bytes:
        return str(os.getuid() if self.uid is None else self.uid).encode("ascii")

    def _anonymous_response(self) -> bytes:
        return self.anonymous_trace.encode("utf-8")

    _INITIAL_RESPONSES: dict[str, Callable[[ClientAuthenticator], bytes]] = {
        EXTERNAL: _external_response, DBUS_COOKIE_SHA1: _cookie_response, ANONYMOUS: _anonymous_response,
    }

    def _answer_empty(self, challenge: bytes) -> None:
        # EXTERNAL's only challenge is the server asking for an identity: "use my credentials".
        self._send("DATA")

    def _cookie_data(self, challenge: bytes) -> None:
        fields = challenge.decode("ascii", "replace").split(None, 2)
        if len(fields) != 3:
            self._send_error("Server did not send context/ID/challenge properly")
            return
        context, cookie_id, server_challenge = fields
        try:
            validate_cookie_context(context)
        except ValueError:
            self._send_error("Server sent invalid cookie context")
            return
        if not cookie_id.isdigit():
            self._send_error("Could not parse cookie ID as an integer")
            return
        directory = self.keyring_dir if self.keyring_dir is not None else default_keyring_dir(os.getuid())
        try:
            cookie = CookieKeyring(directory, context).find(int(cookie_id))
        except KeyringError as error:
            self.problems.append(f"{DBUS_COOKIE_SHA1}: {error}")
            cookie = None
        if cookie is None:
            self._send_error("Don't have the requested cookie ID")
            return
        client_challenge = secrets.token_hex(CHALLENGE_BYTES)
        proof = cookie_hash(server_challenge, client_challenge, cookie.secret_hex)
        self._send(f"DATA {f'{client_challenge} {proof}'.encode('ascii').hex()}")

    _DATA_HANDLERS: dict[str, _Handler] = {
        EXTERNAL: _answer_empty, DBUS_COOKIE_SHA1: _cookie_data, ANONYMOUS: _answer_empty,
    }
