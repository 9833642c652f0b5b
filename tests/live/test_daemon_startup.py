"""Live tests of how the daemon starts: closed standard streams, --fork and --print-pid, <user>.

Each runs the same scenario on busd and dbus-daemon and demands the same outcome:
a client connects and the driver answers.
"""

from __future__ import annotations

import itertools
import os
import pwd
import select
import shutil
import signal
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import pytest

from buses import SESSION_CONFIG, daemon_command, workdir
from busclient import BUS_KINDS, DBUS, DBUS_PATH, TIMEOUT, LineWatcher, RawClient, WaitTimeout, wait_exit

# How a shell closes each standard stream, as libdbus's test-dbus-daemon-fork.sh does.
CLOSE_REDIRECTION = {0: "<&-", 1: ">&-", 2: "2>&-"}
CLOSED_STREAM_SETS = [closed for n in (1, 2, 3) for closed in itertools.combinations((0, 1, 2), n)]


def write_session_config(directory: str, extra: str = "") -> str:
    path = os.path.join(directory, "bus.conf")
    with open(path, "w") as f:
        f.write(SESSION_CONFIG.replace("{socket}", os.path.join(directory, "bus")).replace("{extra}", extra))
    return path


def read_line(fd: int) -> str:
    """One line from a pipe the daemon writes, waiting at most a few seconds for it."""
    with os.fdopen(fd) as reader:
        if not select.select([reader], [], [], TIMEOUT * 2)[0]:
            raise WaitTimeout("the daemon printed nothing")
        return reader.readline().strip()


@dataclass
class Started:
    address: str
    pid: int  # the daemon's, as --print-pid says


@contextmanager
def started_with_closed_streams(kind: str, closed: tuple[int, ...], fork: bool) -> Iterator[Started]:
    """Run the daemon from a shell that closes the `closed` standard streams; stop it by its printed pid."""
    with workdir("busd-startup-test-") as directory:
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


# ---------------------------------------------------------------- <user>: privileges dropped after binding

DROPPED_TO = "messagebus"
# After the drop root is a stranger to the bus: let it in.
DROP_CONFIG = f'<user>{DROPPED_TO}</user><policy context="default"><allow user="*"/></policy>'
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PEER = "org.freedesktop.DBus.Peer"
PROPERTIES = "org.freedesktop.DBus.Properties"
# Driver calls after the drop: (path, interface, member, signature, body).
CALLS_AFTER_THE_DROP = [
    (DBUS_PATH, INTROSPECTABLE, "Introspect", "", []),
    ("/", INTROSPECTABLE, "Introspect", "", []),
    (DBUS_PATH, PEER, "Ping", "", []),
    (DBUS_PATH, PEER, "GetMachineId", "", []),
    (DBUS_PATH, PROPERTIES, "GetAll", "s", [DBUS]),
    (DBUS_PATH, DBUS, "GetId", "", []),
    (DBUS_PATH, DBUS, "ListNames", "", []),
    (DBUS_PATH, DBUS, "ListActivatableNames", "", []),
    (DBUS_PATH, DBUS, "RequestName", "su", ["com.example.AfterTheDrop", 0]),
    (DBUS_PATH, DBUS, "GetNameOwner", "s", ["com.example.AfterTheDrop"]),
    (DBUS_PATH, DBUS, "ReleaseName", "s", ["com.example.AfterTheDrop"]),
    (DBUS_PATH, DBUS, "AddMatch", "s", ["type='signal',member='Nothing'"]),
    (DBUS_PATH, DBUS, "RemoveMatch", "s", ["type='signal',member='Nothing'"]),
    (DBUS_PATH, DBUS, "GetConnectionUnixUser", "s", [DBUS]),
    (DBUS_PATH, DBUS, "GetConnectionCredentials", "s", [DBUS]),
    (DBUS_PATH, DBUS, "StartServiceByName", "su", ["com.example.Nowhere", 0]),
    (DBUS_PATH, DBUS, "UpdateActivationEnvironment", "a{ss}", [{"A": "B"}]),
    (DBUS_PATH, DBUS, "NoSuchMethod", "", []),
]


def private_copy_of_busd(directory: str) -> str:
    """A copy of the busd package under a directory only root may enter, as pyenv's python in /root is."""
    import busd
    private = os.path.join(directory, "private")
    os.mkdir(private, 0o700)
    shutil.copytree(os.path.dirname(busd.__file__), os.path.join(private, "busd"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    return private


def outcomes_after_the_drop(kind: str) -> tuple[list[tuple], str]:
    """What each of CALLS_AFTER_THE_DROP gets from a bus that dropped to DROPPED_TO, and the bus's stderr."""
    with workdir("busd-startup-test-") as directory:
        config = write_session_config(directory, DROP_CONFIG)
        env = dict(os.environ)
        if kind == "busd":
            env["PYTHONPATH"] = private_copy_of_busd(directory)
        address_r, address_w = os.pipe()
        daemon = subprocess.Popen([*daemon_command(kind), f"--config-file={config}", "--nofork", "--nopidfile",
                                   f"--print-address={address_w}"], pass_fds=(address_w,), cwd=directory,
                                  env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        os.close(address_w)
        errors = LineWatcher(daemon.stderr)
        try:
            address = read_line(address_r)
            assert address, f"{kind} did not start:\n" + "\n".join(errors.wait_eof())
            outcomes = []
            with RawClient(address) as client:
                for path, interface, member, signature, body in CALLS_AFTER_THE_DROP:
                    reply = client.call_wait(DBUS, path, interface, member, signature, body)
                    outcomes.append((member, reply.kind, reply.error_name))
                    if member == "GetConnectionUnixUser":
                        outcomes.append(("uid", reply.body))
                    if member == "Introspect" and path == DBUS_PATH:
                        outcomes.append(("driver interface", f'<interface name="{DBUS}">' in reply.body[0]))
            assert daemon.poll() is None, f"{kind} died"
        finally:
            daemon.terminate()
            daemon.wait(TIMEOUT)
        return outcomes, "\n".join(errors.wait_eof())


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can start a bus that drops privileges")
def test_driver_works_after_dropping_privileges():
    try:
        uid = pwd.getpwnam(DROPPED_TO).pw_uid
    except KeyError:
        pytest.skip(f"no {DROPPED_TO} user here")
    reference, _ = outcomes_after_the_drop("dbus-daemon")
    assert ("uid", [uid]) in reference
    outcomes, stderr = outcomes_after_the_drop("busd")
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert outcomes == reference


@pytest.mark.parametrize("address", ["carrier-pigeon:coop=1", "launchd:env=X", "unixexec:path=/bin/true",
                                     "autolaunch:"])
@pytest.mark.parametrize("kind", BUS_KINDS)
def test_transports_busd_cannot_listen_on_are_refused_without_offering_them(kind, address):
    result = subprocess.run([*daemon_command(kind), "--session", "--nofork", f"--address={address}",
                             "--print-address"], capture_output=True, text=True, timeout=TIMEOUT * 2,
                            stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout) == (1, "")
    transport = address.split(":")[0]
    assert transport in result.stderr
    others = {"launchd", "autolaunch", "unixexec"} - {transport}
    assert [name for name in others if name in result.stderr] == []


@pytest.mark.parametrize("address", ["launchd:env=X", "unixexec:path=/bin/true", "carrier-pigeon:coop=1"])
def test_a_refused_listen_address_names_the_transports_busd_listens_on(address):
    result = subprocess.run([*daemon_command("busd"), "--session", "--nofork", f"--address={address}"],
                            capture_output=True, text=True, timeout=TIMEOUT * 2, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "busd listens on unix:, tcp: and systemd: addresses" in result.stderr
