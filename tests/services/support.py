"""Shared pieces of the activation and systemd tests: service files, gates, and a small blocking client.

`Client` is a jeepney connection that matches replies to calls by serial and
keeps every other message it reads, so a test can pipeline calls and then wait
for exactly the message it needs. Every wait is bounded by TIMEOUT.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from typing import Any, Callable

from jeepney import DBusAddress, HeaderFields, Message, MessageType, new_method_call
from jeepney.io.blocking import open_dbus_connection

SERVICE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "activatable.py")
TEST_INTERFACE = "dev.busd.Test.Activatable"
DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
TIMEOUT = 10.0  # seconds any single wait may take
NO_AUTO_START = 0x2

_names = itertools.count()


def unique_service_name(stem: str) -> str:
    """A bus name no other test of this run uses (services outlive the test that started them)."""
    return f"dev.busd.Test.{stem}{os.getpid()}x{next(_names)}"


def service_command(name: str, *args: str) -> str:
    """An Exec= line that runs the test service for `name` with this Python."""
    return " ".join([sys.executable, SERVICE_SCRIPT, name, *args])


def write_service(directory: str, name: str, exec_line: str | None, filename: str | None = None,
                  extra: str = "") -> str:
    """Write a .service file (Exec= left out when `exec_line` is None); returns its path."""
    lines = ["[D-BUS Service]", f"Name={name}"]
    if exec_line is not None:
        lines.append(f"Exec={exec_line}")
    path = os.path.join(directory, filename or f"{name}.service")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n" + extra)
    return path


def activation_config(servicedir: str, timeout_ms: int, extra: str = "") -> str:
    """Extra bus configuration: one service directory and a service start timeout."""
    return (f"<servicedir>{servicedir}</servicedir>"
            f'<limit name="service_start_timeout">{timeout_ms}</limit>{extra}')


class Gate:
    """A FIFO the test service waits on before it requests its name (`--gate PATH`)."""

    def __init__(self, directory: str, label: str = "gate"):
        self.path = os.path.join(directory, f"{label}.fifo")
        os.mkfifo(self.path)
        self._fd: int | None = None

    def open(self) -> None:
        # Read-write: never blocks, and the line waits in the pipe until the service reads it.
        self._fd = os.open(self.path, os.O_RDWR)
        os.write(self._fd, b"go\n")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class CallError(Exception):
    """A call answered with a D-Bus error."""

    def __init__(self, name: str, text: str):
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


class Client:
    """One blocking connection to a bus."""

    def __init__(self, address: str, enable_fds: bool = False):
        self.conn = open_dbus_connection(address, enable_fds=enable_fds)
        self.unique_name: str = self.conn.unique_name
        self._kept: list[Message] = []

    def send(self, message: Message) -> int:
        serial = next(self.conn.outgoing_serial)
        self.conn.send(message, serial=serial)
        return serial

    def send_call(self, destination: str, path: str, interface: str, member: str, signature: str = "",
                  body: tuple = (), flags: int = 0) -> int:
        message = new_method_call(DBusAddress(path, bus_name=destination, interface=interface), member,
                                  signature or None, body)
        message.header.flags |= flags
        return self.send(message)

    def wait_for(self, wanted: Callable[[Message], bool], timeout: float = TIMEOUT) -> Message:
        for i, message in enumerate(self._kept):
            if wanted(message):
                return self._kept.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"nothing awaited arrived within {timeout}s")
            try:
                message = self.conn.receive(timeout=remaining)
            except TimeoutError:
                continue
            if wanted(message):
                return message
            self._kept.append(message)

    def unclaimed(self) -> list[Message]:
        """Messages read while waiting for something else, not yet taken by wait_for()."""
        return list(self._kept)

    def result(self, serial: int, timeout: float = TIMEOUT) -> tuple:
        """The body of the reply to `serial`; CallError when it is an error."""
        reply = self.wait_for(lambda m: m.header.fields.get(HeaderFields.reply_serial) == serial, timeout)
        if reply.header.message_type == MessageType.error:
            text = reply.body[0] if reply.body else ""
            raise CallError(reply.header.fields[HeaderFields.error_name], text)
        return reply.body

    def call(self, destination: str, path: str, interface: str, member: str, signature: str = "",
             body: tuple = (), flags: int = 0, timeout: float = TIMEOUT) -> tuple:
        return self.result(self.send_call(destination, path, interface, member, signature, body, flags), timeout)

    def call_bus(self, member: str, signature: str = "", body: tuple = (), interface: str = DBUS) -> tuple:
        return self.call(DBUS, DBUS_PATH, interface, member, signature, body)

    def call_service(self, name: str, member: str, signature: str = "", body: tuple = (), **options: Any) -> tuple:
        return self.call(name, "/", TEST_INTERFACE, member, signature, body, **options)

    def error_of(self, serial: int) -> CallError:
        """The error answering `serial` (the test fails if a normal reply comes instead)."""
        try:
            body = self.result(serial)
        except CallError as error:
            return error
        raise AssertionError(f"expected an error, got a reply {body!r}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def is_signal(member: str, interface: str = DBUS) -> Callable[[Message], bool]:
    def wanted(message: Message) -> bool:
        fields = message.header.fields
        return (message.header.message_type == MessageType.signal
                and fields.get(HeaderFields.interface) == interface and fields.get(HeaderFields.member) == member)
    return wanted
