"""Start real bus daemons for live tests: busd and the reference dbus-daemon.

Each bus runs in its own temporary directory on a unix socket; the address is
read from --print-address, so a test waits for the bus to be ready instead of
sleeping. The directory goes with the bus whatever happens: a failed start, a
daemon that crashed, or a test process interrupted (buses still running at exit
are stopped then).
"""

from __future__ import annotations

import atexit
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

SESSION_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  {extra}
</busconfig>
"""


START_TIMEOUT = 30  # seconds for a daemon to print its address (a loaded 2-core machine is slow)


@dataclass
class RunningBus:
    """A bus daemon process started for a test."""

    kind: str
    address: str
    process: subprocess.Popen
    workdir: str
    env: dict[str, str] = field(default_factory=dict)
    daemon_pid: int | None = None  # the bus process, when `process` is a wrapper around it (dbus-broker)

    @property
    def pid(self) -> int:
        """The process whose CPU and memory are the bus's."""
        return self.daemon_pid if self.daemon_pid is not None else self.process.pid

    def client_env(self) -> dict[str, str]:
        """The environment a client process needs to use this bus as its session bus."""
        env = helper_env()
        env["DBUS_SESSION_BUS_ADDRESS"] = self.address
        return env

    def stop(self) -> None:
        try:
            stop_process(self.process)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
            _RUNNING[:] = [bus for bus in _RUNNING if bus is not self]



TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def helper_env() -> dict[str, str]:
    """This environment, with tests/ on PYTHONPATH: a test file run as a script imports these helpers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS_DIR, env.get("PYTHONPATH")]))
    return env

# Buses not stopped yet: whatever ends the test process (KeyboardInterrupt included) stops them at exit.
_RUNNING: list[RunningBus] = []


@atexit.register
def _stop_running_buses() -> None:
    for bus in list(_RUNNING):
        bus.stop()


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM (a daemon removes its socket files), SIGKILL if it is still there 10s later."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def busd_available() -> bool:
    try:
        import busd.daemon.settings  # noqa: F401  (the daemon with its config loader)
    except ImportError:
        return False
    return True


@contextmanager
def workdir(prefix: str) -> Iterator[str]:
    """A temporary directory for one test's files, removed whatever happens."""
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def daemon_command(kind: str) -> list[str]:
    """The command line that starts a bus daemon of `kind` ("busd", "busd-pure" or "dbus-daemon")."""
    if kind == "dbus-daemon":
        return ["dbus-daemon"]
    if kind == "busd":
        return [sys.executable, "-m", "busd"]
    if kind == "busd-pure":  # the per-message path's pure-Python twin, whether or not it is compiled
        return ["env", "BUSD_NO_EXTENSIONS=1", sys.executable, "-m", "busd"]
    raise ValueError(f"unknown bus kind {kind!r}")


def write_config(workdir: str, extra_config: str = "", config_text: str | None = None) -> str:
    """Write the bus's configuration (SESSION_CONFIG unless given) into `workdir`, listening on
    `workdir`/bus; returns the file's path."""
    config_path = os.path.join(workdir, "bus.conf")
    text = config_text if config_text is not None else SESSION_CONFIG
    with open(config_path, "w") as f:
        f.write(text.replace("{socket}", os.path.join(workdir, "bus")).replace("{extra}", extra_config))
    return config_path


def start_bus(kind: str, extra_config: str = "", config_text: str | None = None,
              args: tuple[str, ...] = ()) -> RunningBus:
    """Start a bus daemon of `kind` ("busd" or "dbus-daemon") and wait until it listens."""
    workdir = tempfile.mkdtemp(prefix=f"{kind}-test-")
    process = None
    try:
        config_path = write_config(workdir, extra_config, config_text)
        read_fd, write_fd = os.pipe()
        cmd = daemon_command(kind) + [
            f"--config-file={config_path}", "--nofork", "--nopidfile",
            f"--print-address={write_fd}", *args,
        ]
        try:
            process = subprocess.Popen(cmd, pass_fds=(write_fd,), stdin=subprocess.DEVNULL)
        finally:
            os.close(write_fd)
        with os.fdopen(read_fd) as reader:
            printed = select.select([reader], [], [], START_TIMEOUT)[0]
            address = reader.readline().strip() if printed else ""
        if not printed:
            raise RuntimeError(f"{kind} printed no address within {START_TIMEOUT}s")
        if not address:
            raise RuntimeError(f"{kind} exited without printing its address (status {process.wait(10)})")
    except BaseException:
        if process is not None:
            stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return register_running(RunningBus(kind=kind, address=address, process=process, workdir=workdir))


def register_running(bus: RunningBus) -> RunningBus:
    """Stop `bus` at exit if nobody has by then."""
    _RUNNING.append(bus)
    return bus
