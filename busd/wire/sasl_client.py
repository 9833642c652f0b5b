"""The client side of the D-Bus SASL handshake: ClientAuthenticator (the bridge's and the test clients' side)."""

from __future__ import annotations

import os
from collections.abc import Callable

from .sasl import (
    ALL_MECHANISMS, ANONYMOUS, CHALLENGE_BYTES, DBUS_COOKIE_SHA1, DEFAULT_MAX_LINE_LENGTH, EXTERNAL, AuthError,
    Conversation, CookieStore, Handler, KeyringError, check_keyring, cookie_hash, hex_decode,
    validate_cookie_context,
)


class ClientAuthenticator(Conversation):
    """The client side of the handshake.

    Send initial_bytes() first, then feed what the server sends to receive_data()
    and send what it returns. Mechanisms are tried in the given order, skipping
    those the server does not offer. When `done` is true BEGIN has been produced;
    `guid` is the server's GUID and `unix_fd` whether fd passing was agreed.
    AuthError means the server accepted none of our mechanisms (`problems` says why
    each failed) or broke the protocol. DBUS_COOKIE_SHA1, if tried, reads its
    secret from `keyring`.
    """

    def __init__(self, uid: int | None = os.getuid(), mechanisms: tuple[str, ...] | list[str] = (EXTERNAL,),
                 negotiate_unix_fd: bool = True, keyring: CookieStore | None = None,
                 anonymous_trace: str = "busd", max_line_length: int = DEFAULT_MAX_LINE_LENGTH):
        unknown = [name for name in mechanisms if name not in ALL_MECHANISMS]
        if unknown or not mechanisms:
            raise ValueError(f"unsupported authentication mechanism list {list(mechanisms)!r}; "
                             f"choose from {', '.join(ALL_MECHANISMS)}")
        check_keyring(mechanisms, keyring)
        super().__init__("start", max_line_length)
        self.uid = uid  # None: send no identity with EXTERNAL and let the server use the socket's
        self.mechanisms = tuple(mechanisms)
        self.negotiate_unix_fd = negotiate_unix_fd
        self.keyring = keyring
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
        if not args or hex_decode(args) is None:
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
        challenge = hex_decode(args)
        if challenge is None:
            self._send_error("Invalid hex encoding")
            return
        assert self.mechanism is not None
        self._DATA_HANDLERS[self.mechanism](self, challenge)

    def _protocol_violation(self, args: str) -> None:
        raise AuthError(f"the server sent an unexpected reply while we were in state {self._state!r}")

    # state -> command -> handler; "*" is the handler for anything else
    _HANDLERS: dict[str, dict[str, Handler]] = {
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
        assert self.keyring is not None  # __init__ refuses DBUS_COOKIE_SHA1 without one
        try:
            cookie = self.keyring.find(context, int(cookie_id))
        except KeyringError as error:
            self.problems.append(f"{DBUS_COOKIE_SHA1}: {error}")
            cookie = None
        if cookie is None:
            self._send_error("Don't have the requested cookie ID")
            return
        client_challenge = os.urandom(CHALLENGE_BYTES).hex()  # = secrets.token_hex, without importing hashlib
        proof = cookie_hash(server_challenge, client_challenge, cookie.secret_hex)
        self._send(f"DATA {f'{client_challenge} {proof}'.encode('ascii').hex()}")

    _DATA_HANDLERS: dict[str, Handler] = {
        EXTERNAL: _answer_empty, DBUS_COOKIE_SHA1: _cookie_data, ANONYMOUS: _answer_empty,
    }
