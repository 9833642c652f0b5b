#!/usr/bin/env python3
"""A D-Bus service for activation tests: owns a name, records what it is sent, reports its environment.

Usage: activatable.py NAME [--gate FIFO] [ARGS...]

It connects to $DBUS_STARTER_ADDRESS (the bus that started it), optionally
waits until the test writes a line into FIFO (so callers can queue up while
the name is still unowned), requests NAME and serves, on any object path:

  Echo(s) -> s             returns its argument and appends it to the log
  ReadFd(h) -> s           everything readable from the passed file descriptor
  Log() -> as              every Echo argument so far, in arrival order
  Environment() -> a{ss}   this process's environment
  Argv() -> as             this process's argv
  Quit()                   replies, then exits

It exits when the bus connection closes.
"""

from __future__ import annotations

import os
import sys

from jeepney import DBus, HeaderFields, MessageType, new_error, new_method_return
from jeepney.fds import FileDescriptor
from jeepney.io.blocking import open_dbus_connection


def _read_all(fd: FileDescriptor) -> str:
    with fd.to_file("rb") as f:
        return f.read().decode()


def main(argv: list[str]) -> int:
    name = argv[1]
    address = os.environ.get("DBUS_STARTER_ADDRESS") or os.environ["DBUS_SESSION_BUS_ADDRESS"]
    conn = open_dbus_connection(address, enable_fds=True)
    if "--gate" in argv:
        with open(argv[argv.index("--gate") + 1]) as gate:
            gate.readline()
    # The reply to RequestName is read in the main loop: held calls may arrive before it.
    request_serial = next(conn.outgoing_serial)
    conn.send(DBus().RequestName(name, 0x4), serial=request_serial)  # DO_NOT_QUEUE
    log: list[str] = []
    handlers = {
        "Echo": lambda args: ("s", (log.append(args[0]) or args[0],)),
        "Log": lambda args: ("as", (list(log),)),
        "ReadFd": lambda args: ("s", (_read_all(args[0]),)),
        "Environment": lambda args: ("a{ss}", (dict(os.environ),)),
        "Argv": lambda args: ("as", (list(sys.argv),)),
        "Quit": lambda args: ("", ()),
    }
    while True:
        try:
            msg = conn.receive()
        except (ConnectionError, OSError, EOFError):
            return 0
        header = msg.header
        if header.fields.get(HeaderFields.reply_serial) == request_serial:
            if msg.body != (1,):
                sys.stderr.write(f"activatable.py: could not own {name}: {msg.body}\n")
                return 3
            continue
        if header.message_type != MessageType.method_call:
            continue
        member = header.fields.get(HeaderFields.member)
        handler = handlers.get(member)
        if handler is None:
            conn.send(new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", "s", (f"no method {member}",)))
            continue
        signature, body = handler(msg.body)
        conn.send(new_method_return(msg, signature, body))
        if member == "Quit":
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
