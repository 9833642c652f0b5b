"""The daemon's per-message path in one process, timed in CPU time: compiled against pure Python.

    python3 benchmarks/bench_path.py                 # both modes, each in its own process
    python3 benchmarks/bench_path.py --json

A real Bus and real server Connections on socketpairs; the clients are raw
sockets in the same process. For each workload a client's socket holds a batch
of messages (BATCH of them, written before timing), and what is timed is one
call of the connection's read callback: the read, the framing, the header parse,
routing, stamping, queueing and the sendmsg() to each recipient, as the event
loop would run it. The recipients' sockets are drained outside the timing.
Time is the thread's CPU time, so other load on the machine changes the figures
little (benchmarks/bench_bus.py measures the whole daemon against dbus-daemon
and dbus-broker, event loop included, and needs a quiet machine).

Workloads: "call" (a method call to a service), "reply" (the service's reply to a
pending call), "signal-1" and "signal-10" (a broadcast to 1 and 10 subscribers
with a match rule each), and "connect": one connection's whole life on the bus's
side, per connection rather than per message (the server Connection made on a
fresh socketpair, the AUTH EXTERNAL read, the BEGIN and Hello read with their
replies written, and the read of the end of the stream that drops it: bench_bus.py's
churn without accept(), the auth timer and the event loop), also shown in those
four parts, each its own 10th percentile ("connect: made", "connect: AUTH",
"connect: BEGIN+Hello", "connect: closed"). The bus has no
policy (every config file's own rules cost more, in both modes alike).
"connect, as the daemon" is the same life as the daemon lives it: accepted on a
listening unix socket (Listener.accept), with the daemon's SASL settings, its
auth_timeout deadline, and a second bus under the built-in session
configuration's policy. This is a measurement: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

BATCH = 64
ROUNDS = 300
WORKLOADS = ("call", "reply", "signal-1", "signal-10", "connect", "connect, as the daemon")
# The connect workload's parts, each its own 10th percentile: where a connection's time goes.
CONNECT_PARTS = ("connect: made", "connect: AUTH", "connect: BEGIN+Hello", "connect: closed")
FIGURES = WORKLOADS + CONNECT_PARTS


def _measure(rounds: int, batch: int = BATCH) -> dict[str, float]:
    """CPU µs per message of each workload, in this process (its mode is the environment's)."""
    import asyncio

    from busd.bus.router import Bus
    from busd.interfaces import introspection_xml
    from busd.transport.connection import Connection
    from busd.wire.message import METHOD_CALL, METHOD_RETURN, SIGNAL, build_message
    from busd.wire.sasl_server import ServerAuthenticator
    from busd.wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH

    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    guid = "0" * 32
    bus = Bus(loop, guid, machine_id="0" * 32, introspection=introspection_xml(DRIVER_NAME))

    class Client:
        def __init__(self, label: str):
            ours, self.sock = socket.socketpair()
            ours.setblocking(False)
            for s in (ours, self.sock):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.conn = Connection(bus, ours, lambda creds: ServerAuthenticator(guid, peer_uid=creds.uid), label)
            self.conn.data_received(b"\0AUTH EXTERNAL\r\nDATA\r\nBEGIN\r\n")
            self.serial = 0
            deadline = time.monotonic() + 10
            while self.conn.peer is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("the connection was not admitted")
                loop.run_until_complete(asyncio.sleep(0.001))
            self.call_driver("Hello")
            self.name = self.conn.peer.unique_name
            self.drain()

        def call_driver(self, member: str, signature: str = "", body: tuple = ()) -> None:
            self.send([build_message(METHOD_CALL, self.next_serial(), path=DRIVER_PATH, interface=DRIVER_INTERFACE,
                                     member=member, destination=DRIVER_NAME, signature=signature, body=body)])

        def next_serial(self) -> int:
            self.serial += 1
            return self.serial

        def send(self, messages: list[bytes], timed: list[float] | None = None) -> None:
            self.sock.sendall(b"".join(messages))
            start = time.thread_time()
            self.conn._on_readable()
            bus._flush_all()
            if timed is not None:
                timed.append(time.thread_time() - start)

        def drain(self) -> None:
            self.sock.setblocking(False)
            try:
                while self.sock.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass

    caller, service = Client("caller"), Client("service")
    subscribers = [Client(f"subscriber{i}") for i in range(10)]
    # signal-1's member has one subscriber, signal-10's ten: the rules never change while timing
    for i, sub in enumerate(subscribers):
        for member in ("Tick1", "Tick10") if i == 0 else ("Tick10",):
            sub.call_driver("AddMatch", "s", (f"type='signal',interface='org.example.Bench',member='{member}'",))
        sub.drain()
    figures = {}

    def calls(count: int) -> list[bytes]:
        return [build_message(METHOD_CALL, caller.next_serial(), path="/org/example/Bench",
                              interface="org.example.Bench", member="Ping", destination=service.name,
                              signature="s", body=("hello",)) for _ in range(count)]

    def replies(serials: range) -> list[bytes]:
        return [build_message(METHOD_RETURN, service.next_serial(), reply_serial=serial, destination=caller.name,
                              signature="s", body=("pong",)) for serial in serials]

    def signals(count: int, member: str) -> list[bytes]:
        return [build_message(SIGNAL, caller.next_serial(), path="/org/example/Bench",
                              interface="org.example.Bench", member=member, signature="u", body=(7,))
                for _ in range(count)]

    auth_line = b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n"
    hello = build_message(METHOD_CALL, 1, path=DRIVER_PATH, interface=DRIVER_INTERFACE, member="Hello",
                          destination=DRIVER_NAME)

    from busd.config.builtin import builtin_session_config
    from busd.launcher.policy import compile_policy
    from busd.transport.connection import HandshakeDeadlines
    from busd.transport.listeners import listen

    session_bus = Bus(loop, guid, machine_id="0" * 32, introspection=introspection_xml(DRIVER_NAME))
    session_bus.set_policy(compile_policy(builtin_session_config()))
    deadlines = HandshakeDeadlines(loop)
    [listener] = listen(f"unix:tmpdir={tempfile.gettempdir()}")
    listener_path = listener.cleanup_path

    def daemon_authenticator(creds):  # what Daemon._make_authenticator makes for a unix listener
        return ServerAuthenticator(guid, mechanisms=("EXTERNAL",), peer_uid=creds.uid, allow_anonymous=False,
                                   unix_fd_possible=True, defer_cookies=True)

    def connect_as_daemon(timed: list[float] | None) -> None:
        """One connection as the daemon lives it (accept, deadline, the session policy), whole."""
        theirs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.connect(listener_path)
        theirs.sendall(auth_line)
        start = time.thread_time()
        conn = Connection(session_bus, listener.accept(), daemon_authenticator, "churn", None, True)
        deadlines.start(conn, 30000)
        conn._on_readable()
        session_bus._flush_all()
        spent = time.thread_time() - start
        theirs.recv(4096)  # OK <guid>
        theirs.sendall(b"BEGIN\r\n" + hello)
        start = time.thread_time()
        conn._on_readable()
        session_bus._flush_all()
        spent += time.thread_time() - start
        if conn.peer is None or conn.closed:
            raise RuntimeError("the connection was not admitted at once (the uid's groups were not cached)")
        theirs.close()
        start = time.thread_time()
        conn._on_readable()
        spent += time.thread_time() - start
        if timed is not None:
            timed.append(spent)

    def connect(timed: list[float] | None, parts: dict[str, list[float]]) -> None:
        """One connection, start to end, as the bus sees it; its CPU time goes to `timed`, and that of
        each part of its life to `parts` (when timed)."""
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.sendall(auth_line)
        made = time.thread_time()
        conn = Connection(bus, ours, lambda creds: ServerAuthenticator(guid, peer_uid=creds.uid), "churn")
        authenticating = time.thread_time()
        conn._on_readable()
        bus._flush_all()
        authenticated = time.thread_time()
        theirs.recv(4096)  # OK <guid>
        theirs.sendall(b"BEGIN\r\n" + hello)
        beginning = time.thread_time()
        conn._on_readable()
        bus._flush_all()
        begun = time.thread_time()
        if conn.peer is None or conn.closed:
            raise RuntimeError("the connection was not admitted at once (the uid's groups were not cached)")
        theirs.close()
        closing = time.thread_time()
        conn._on_readable()  # the end of the stream: dropped
        closed = time.thread_time()
        if timed is not None:
            spans = (authenticating - made, authenticated - authenticating, begun - beginning, closed - closing)
            timed.append(sum(spans))
            for part, span in zip(CONNECT_PARTS, spans):
                parts[part].append(span)

    # Every workload runs twice and only the second pass counts: the first warms the caches and the
    # process (a fresh process ran its first workload up to twice as slowly, whichever it was).
    warmed: set[str] = set()
    for workload in (*WORKLOADS, *WORKLOADS):
        timed: list[float] = []
        sample = timed if workload in warmed else None
        if workload == "connect, as the daemon":
            for _ in range(rounds):
                connect_as_daemon(sample)
            if timed:
                figures[workload] = statistics.quantiles(timed, n=10)[0] * 1e6
            warmed.add(workload)
            continue
        if workload == "connect":
            parts: dict[str, list[float]] = {part: [] for part in CONNECT_PARTS}
            for _ in range(rounds):
                connect(sample, parts)
            if timed:
                figures[workload] = statistics.quantiles(timed, n=10)[0] * 1e6  # per connection
                for part, spans in parts.items():
                    figures[part] = statistics.quantiles(spans, n=10)[0] * 1e6
            warmed.add(workload)
            continue
        for _ in range(rounds):
            if workload in ("call", "reply"):
                first = caller.serial + 1
                caller.send(calls(batch), sample if workload == "call" else None)
                service.drain()
                service.send(replies(range(first, first + batch)), sample if workload == "reply" else None)
                caller.drain()
            else:
                caller.send(signals(batch, "Tick1" if workload == "signal-1" else "Tick10"), sample)
                for sub in subscribers:
                    sub.drain()
        if timed:
            # the 10th percentile: other processes' load only ever adds time, so the low end is the path's own
            figures[workload] = statistics.quantiles(timed, n=10)[0] / batch * 1e6
        warmed.add(workload)
    listener.close()
    deadlines.close()
    return figures


def _run_mode(pure: bool, rounds: int, batch: int) -> dict:
    env = dict(os.environ)
    env.pop("BUSD_NO_EXTENSIONS", None)
    if pure:
        env["BUSD_NO_EXTENSIONS"] = "1"
    out = subprocess.run([sys.executable, __file__, "--child", str(rounds), "--batch", str(batch)], env=env,
                         check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"batches of {BATCH} per workload (default "
                                                                    f"{ROUNDS})")
    parser.add_argument("--batch", type=int, default=BATCH,
                        help=f"messages per read (default {BATCH}); 1 is what a caller waiting for each reply sends")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        from busd._extensions import mode
        figures = _measure(args.child, args.batch)
        print(json.dumps({"mode": mode(), "figures": figures}))
        return 0
    # the modes alternate, three processes each, and each figure is the lowest of its three
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(3):
        for pure_mode in (False, True):
            runs[pure_mode].append(_run_mode(pure_mode, args.rounds, args.batch))
    compiled, pure = ({"mode": runs[m][0]["mode"],
                       "figures": {f: min(r["figures"][f] for r in runs[m]) for f in FIGURES}}
                      for m in (False, True))
    if args.json:
        print(json.dumps({"batch": args.batch, "rounds": args.rounds, "compiled": compiled, "pure": pure}, indent=1))
        return 0
    print(f"CPU µs per message, batches of {args.batch} (connect: per connection): 10th percentile of {args.rounds} "
          f"batches, lowest of 3 processes")
    print(f"  first column: {compiled['mode']}; second: {pure['mode']}")
    print(f"{'workload':<23} {'compiled':>9} {'pure':>9} {'ratio':>6}")
    for figure in FIGURES:
        a, b = compiled["figures"][figure], pure["figures"][figure]
        print(f"{figure:<23} {a:9.2f} {b:9.2f} {a / b:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
