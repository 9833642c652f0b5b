"""Listening sockets: bind every <listen> address, accept connections, clean up on exit."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from _socket import socket as plain_socket

from ..wire.records import field, record
from ..wire.address import Address, AddressError, escape_value, parse_addresses, runtime_dir

log = logging.getLogger("busd.server")

SD_LISTEN_FDS_START = 3


class ListenError(Exception):
    """An address could not be listened on; the message says which and why."""


@record
class Listener:
    """One bound, listening socket and the address clients use to reach it."""

    sock: socket.socket
    address: str  # without guid
    cleanup_path: str | None = None
    unix: bool = True
    extra: dict = field(default_factory=dict)

    def accept(self) -> plain_socket:
        """The next connection waiting, non-blocking; OSError (BlockingIOError: none) as socket.accept().

        socket.accept() converts the listener's family and type to enums for every connection,
        and its address too: a sixth of what accepting cost busd under churn. The connection is the
        C socket type itself, which has all a stream uses: socket.socket's Python __init__ and close()
        (for makefile()'s sake) cost a connection another half microsecond.
        """
        fd, _address = self.sock._accept()
        sock = plain_socket(socket.AF_UNIX if self.unix else self.sock.family, socket.SOCK_STREAM, 0, fd)
        sock.setblocking(False)
        return sock

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        if self.cleanup_path:
            try:
                os.unlink(self.cleanup_path)
            except OSError:
                pass
            self.cleanup_path = None


def _random_name(prefix: str = "dbus-") -> str:
    return prefix + os.urandom(5).hex()  # = secrets.token_hex(5), without importing hashlib


def _bind_unix(path: str | None, abstract: str | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        if abstract is not None:
            sock.bind("\0" + abstract)
        else:
            sock.bind(path)
            # Anyone may connect, as with dbus-daemon: authentication and policy decide who stays.
            os.chmod(path, 0o777)
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _listen_unix(address: Address) -> Listener:
    params = address.params
    if "path" in params:
        path = params["path"]
        try:
            sock = _bind_unix(path, None)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            # Only a socket may be a dead bus's leftover (libdbus removes nothing else).
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise ListenError(f"{path} exists and is not a socket; not removing it") from None
            # A stale socket file from a dead bus: remove it only if nobody answers.
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)
                sock = _bind_unix(path, None)
            else:
                raise
            finally:
                probe.close()
        return Listener(sock, f"unix:path={escape_value(path)}", cleanup_path=path)
    if "abstract" in params:
        sock = _bind_unix(None, params["abstract"])
        return Listener(sock, f"unix:abstract={escape_value(params['abstract'])}")
    if "runtime" in params:
        base = runtime_dir()
        if not base:
            raise ListenError("unix:runtime=yes needs XDG_RUNTIME_DIR to be set")
        path = os.path.join(base, "bus")
        return _listen_unix(Address("unix", {"path": path}))
    directory = params.get("dir") or params.get("tmpdir")
    if not directory:
        import tempfile  # only for an address that names no directory (tempfile imports random, shutil...)

        directory = tempfile.gettempdir()
    for _ in range(16):
        path = os.path.join(directory, _random_name())
        try:
            sock = _bind_unix(path, None)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue
            raise
        return Listener(sock, f"unix:path={escape_value(path)}", cleanup_path=path)
    raise ListenError(f"could not find a free socket name in {directory}")


def _listen_tcp(address: Address) -> list[Listener]:
    params = address.params
    host = params.get("bind") or params.get("host") or "localhost"
    if host == "*":
        host = None
    port = int(params.get("port", "0"))
    family = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}.get(params.get("family", ""), socket.AF_UNSPEC)
    listeners = []
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    for fam, kind, proto, _canon, sockaddr in infos:
        sock = socket.socket(fam, kind | socket.SOCK_CLOEXEC, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(socket.SOMAXCONN)
        except OSError:
            sock.close()
            if listeners:
                continue
            raise
        sock.setblocking(False)
        bound_port = sock.getsockname()[1]
        if port == 0:
            port = bound_port  # every family listens on the same port
        shown_host = params.get("host") or "localhost"
        text = f"tcp:host={escape_value(shown_host)},port={bound_port}"
        if "family" in params:
            text += f",family={params['family']}"
        listeners.append(Listener(sock, text, unix=False))
        break_after_first = params.get("family") is not None
        if break_after_first:
            break
    # One address is printed for the whole group, as dbus-daemon does.
    return listeners[:1] + [Listener(l.sock, "", unix=False) for l in listeners[1:]]


def _listen_systemd() -> list[Listener]:
    if os.environ.get("LISTEN_PID") not in (None, str(os.getpid())):
        raise ListenError("systemd: LISTEN_PID is not this process")
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    if count <= 0:
        raise ListenError("systemd: address given but LISTEN_FDS passes no sockets")
    listeners = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        if sock.family == socket.AF_UNIX:
            name = sock.getsockname()
            if isinstance(name, bytes) or (name and name.startswith("\0")):
                text = f"unix:abstract={escape_value(name[1:] if isinstance(name, str) else name[1:].decode())}"
            else:
                text = f"unix:path={escape_value(name)}"
            listeners.append(Listener(sock, text))
        else:
            host, port = sock.getsockname()[:2]
            listeners.append(Listener(sock, f"tcp:host={host},port={port}", unix=False))
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    return listeners


LISTENABLE = "busd listens on unix:, tcp: and systemd: addresses"


def listen(address_text: str) -> list[Listener]:
    """Bind the first usable address of `address_text` (alternatives separated by ';')."""
    try:
        addresses = parse_addresses(address_text)
    except AddressError as exc:
        raise ListenError(f"invalid listen address {address_text!r}: {exc}; {LISTENABLE}") from None
    errors = []
    for address in addresses:
        try:
            if address.transport == "unix":
                return [_listen_unix(address)]
            if address.transport in ("tcp", "nonce-tcp"):
                if address.transport == "nonce-tcp":
                    raise ListenError("nonce-tcp listening is not supported; use tcp on loopback or unix")
                return _listen_tcp(address)
            if address.transport == "systemd":
                return _listen_systemd()
            raise ListenError(f"cannot listen on transport {address.transport!r}; {LISTENABLE}")
        except (OSError, ListenError) as exc:
            errors.append(f"{address}: {exc}")
    raise ListenError("could not listen on " + "; ".join(errors))
