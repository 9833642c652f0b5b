"""Live tests of how the daemon starts: closed standard streams, --fork and --print-pid.

Each runs the same scenario on busd and dbus-daemon and demands the same outcome:
a client connects and the driver answers.
"""

from __future__ import annotations

import itertools
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import pytest

from buses import SESSION_CONFIG, busd_available
from busclient import BUS_KINDS, DBUS, TIMEOUT, RawClient, WaitTimeout

# How a shell closes each standard stream, as libdbus's test-dbus-daemon-fork.sh does.
CLOSE_REDIRECTION = {0: "<&-", 1: ">&-", 2: "2>&-"}
CLOSED_STREAM_SETS = [closed for n in (1, 2, 3) for closed in itertools.combinations((0, 1, 2), n)]


def daemon_command(kind: str) -> list[str]:
    if kind == "busd":
        if not busd_available():
            pytest.skip("the busd daemon is not built yet")
        return [sys.executable, "-m", "busd"]
    return ["dbus-daemon"]


@contextmanager
def workdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="busd-startup-test-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_session_config(directory: str) -> str:
    path = os.path.join(directory, "bus.conf")
    with open(path, "w") as f:
        f.write(SESSION_CONFIG.replace("{socket}", os.path.join(directory, "bus")).replace("{extra}", ""))
    return path


def read_line(fd: int) -> str:
    """One line from a pipe the daemon writes, waiting at most a few seconds for it."""
    with os.fdopen(fd) as reader:
        if not select.select([reader], [], [], TIMEOUT * 2)[0]:
            raise WaitTimeout("the daemon printed nothing")
        return reader.readline().strip()


def wait_exit(pid: int, timeout: float = TIMEOUT) -> None:
    """Wait until process `pid` (perhaps not our child) has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            raise WaitTimeout(f"process {pid} is still running")
    finally:
        os.close(pidfd)


@dataclass
class Started:
    address: str
    pid: int  # the daemon's, as --print-pid says


@contextmanager
def started_with_closed_streams(kind: str, closed: tuple[int, ...], fork: bool) -> Iterator[Started]:
    """Run the daemon from a shell that closes the `closed` standard streams; stop it by its printed pid."""
    with workdir() as directory:
        config = write_session_config(directory)
        address_r, address_w = os.pipe()
        pid_r, pid_w = os.pipe()
        argv = [*daemon_command(kind), f"--config-file={config}", "--fork" if fork else "--nofork",
                "--nopidfile", f"--print-address={address_w}", f"--print-pid={pid_w}"]
        redirections = " ".join(CLOSE_REDIRECTION[fd] for fd in closed)
        shell = subprocess.Popen(["sh", "-c", f'exec "$@" {redirections}', "sh", *argv],
                                 pass_fds=(address_w, pid_w))
        os.close(address_w)
        os.close(pid_w)
        pid = None
        try:
            address = read_line(address_r)
            pid = int(read_line(pid_r))
            if fork:
                assert shell.wait(TIMEOUT) == 0  # the parent returns once the daemon is ready
            yield Started(address, pid)
        finally:
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
                wait_exit(pid)
            if shell.poll() is None:
                shell.kill()
            shell.wait()


@pytest.mark.parametrize("fork", [False, True], ids=["nofork", "fork"])
@pytest.mark.parametrize("closed", CLOSED_STREAM_SETS, ids=lambda closed: "closed-" + "".join(map(str, closed)))
@pytest.mark.parametrize("kind", BUS_KINDS)
def test_daemon_serves_with_standard_streams_closed(kind, closed, fork):
    with started_with_closed_streams(kind, closed, fork) as daemon:
        with RawClient(daemon.address) as client:
            assert client.driver_value("GetNameOwner", "s", [DBUS]) == DBUS
            assert client.unique_name in client.driver_value("ListNames")
            assert client.driver_value("GetConnectionUnixProcessID", "s", [DBUS]) == daemon.pid


def test_help_says_how_to_stop_a_forked_daemon():
    help_text = subprocess.run([*daemon_command("busd"), "--help"], capture_output=True, text=True,
                               timeout=TIMEOUT, check=True).stdout
    option_help = help_text.split("\n  --print-pid", 1)[1].split("\n  --", 1)[0]
    assert "--fork" in option_help and "kill" in option_help
