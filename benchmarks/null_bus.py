"""The null bus: the least a Python daemon on uvloop does for one connection of bench_bus.py's churn.

    python3 benchmarks/null_bus.py SOCKET_PATH      # prints "ready" once it listens

It accepts a connection, answers the AUTH line with OK and BEGIN with Hello's reply and
NameAcquired (the same canned bytes for every connection: rawclient's Hello has serial 1, and
every client is told it is :1.1), and closes the socket at the end of the stream. No bus, no
routing, no policy, no accounting: what is left is the event loop, the system calls and the
wakeups, which busd cannot do without. `bench_bus.py --buses busd,dbus-daemon,null-bus --only
churn` runs it beside the real daemons; its CPU per connection is the floor busd's churn
figure is made of plus busd's own work. It answers nothing else, so other workloads skip it.
"""

from __future__ import annotations

import os
import socket
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from busd.wire.build import build_message  # noqa: E402
from busd.wire.message import METHOD_RETURN, SIGNAL  # noqa: E402
from busd.wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH  # noqa: E402

GUID = "0" * 32
NAME = ":1.1"
OK = f"OK {GUID}\r\n".encode()
HELLO_ANSWER = (
    build_message(METHOD_RETURN, 1, reply_serial=1, destination=NAME, sender=DRIVER_NAME, signature="s",
                  body=(NAME,))
    + build_message(SIGNAL, 2, path=DRIVER_PATH, interface=DRIVER_INTERFACE, member="NameAcquired",
                    destination=NAME, sender=DRIVER_NAME, signature="s", body=(NAME,)))


def serve(path: str) -> None:
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        import asyncio
        loop = asyncio.new_event_loop()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    listener.setblocking(False)

    def readable(sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(sock.fileno())
            sock.close()
        elif b"AUTH " in data:
            sock.send(OK)
        elif data.startswith(b"BEGIN\r\n"):
            sock.send(HELLO_ANSWER)

    def accept() -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), readable, sock)

    loop.add_reader(listener.fileno(), accept)
    print("ready", flush=True)
    loop.run_forever()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    serve(sys.argv[1])
