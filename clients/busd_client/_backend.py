"""Pick the D-Bus library busd_client runs on: dbus-fast when installed, else dbus-next.

Both libraries share one API (dbus-fast is dbus-next's maintained fork), and
busd_client uses only the part they share: the asyncio `MessageBus` for the
connection, authentication and marshalling, `Message` and `Variant`.  Each
`Bus` remembers the backend it was opened with, so one process can use both
(the tests do).
"""

from __future__ import annotations

import importlib
import os
import select
import socket
import time
from dataclasses import dataclass
from typing import Any

BACKEND_ENV = "BUSD_CLIENT_BACKEND"
BACKEND_NAMES = ("dbus_fast", "dbus_next")


@dataclass(frozen=True)
class Backend:
    """The classes busd_client needs from one D-Bus library."""

    name: str
    MessageBus: type
    Message: type
    Variant: type
    MessageType: Any
    MessageFlag: Any
    library_error: type[Exception]

    @property
    def signal_type(self) -> Any:
        return self.MessageType.SIGNAL


_loaded: dict[str, Backend] = {}


def _load(name: str) -> Backend:
    library = importlib.import_module(name)
    aio = importlib.import_module(f"{name}.aio")
    return Backend(
        name=name,
        MessageBus=aio.MessageBus,
        Message=library.Message,
        Variant=library.Variant,
        MessageType=library.MessageType,
        MessageFlag=library.MessageFlag,
        library_error=library.DBusError,
    )


def default_backend_name() -> str:
    """The backend a new Bus uses: $BUSD_CLIENT_BACKEND if set, else dbus_fast if importable."""
    requested = os.environ.get(BACKEND_ENV, "").strip()
    if requested and requested not in BACKEND_NAMES:
        raise ValueError(
            f"{BACKEND_ENV}={requested!r} is not a known backend; "
            f"set it to one of {', '.join(BACKEND_NAMES)} or unset it")
    if requested:
        return requested
    try:
        importlib.import_module("dbus_fast")
    except ImportError:
        return "dbus_next"
    return "dbus_fast"


def get_backend(name: str | None = None) -> Backend:
    """Load (once) and return the backend called `name`, or the default one."""
    name = name or default_backend_name()
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; use one of {', '.join(BACKEND_NAMES)}")
    backend = _loaded.get(name)
    if backend is None:
        try:
            backend = _loaded[name] = _load(name)
        except ImportError as error:
            package = name.replace("_", "-")
            raise ImportError(
                f"busd_client backend {name!r} is not installed: "
                f"run `python3 -m pip install {package}` or choose the other backend") from error
    return backend


FD_SEND_PATIENCE = 10.0  # seconds a message carrying fds may wait for room in the socket buffer


class _WriteGuard:
    """Stands in for the connection's socket inside the library's message writer.

    dbus-next and dbus-fast treat EAGAIN from send() as a lost connection
    (python-dbus-next issue #153; dbus-fast shares the code), so a burst of
    messages that fills the socket buffer kills the connection.  Here a full
    buffer means "0 bytes sent": the writer keeps the rest and resumes when
    the socket is writable, as it does after a short write.
    """

    __slots__ = ("_socket",)

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock

    def send(self, data: Any, *flags: int) -> int:
        try:
            return self._socket.send(data, *flags)
        except BlockingIOError:
            return 0

    def sendmsg(self, buffers: Any, ancdata: Any = (), *rest: Any) -> int:
        # The writer forgets the fds once sendmsg returns, so they must leave in this call.
        deadline = time.monotonic() + FD_SEND_PATIENCE
        while True:
            try:
                return self._socket.sendmsg(buffers, ancdata, *rest)
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                select.select([], [self._socket], [], remaining)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)


def guard_writes(connection: Any) -> bool:
    """Make the connection's writer survive a full socket buffer (see _WriteGuard); False if the
    library's writer does not look as expected, in which case it is left alone."""
    writer = getattr(connection, "_writer", None)
    sock = getattr(writer, "sock", None)
    if not isinstance(sock, socket.socket):
        return False
    writer.sock = _WriteGuard(sock)
    return True
