"""Run Debian's dbus-broker without systemd, so the benchmarks can measure it beside busd and dbus-daemon.

dbus-broker is two processes: `dbus-broker-launch` reads the dbus-daemon-style
configuration and starts `dbus-broker`, the bus itself, whose CPU and memory are
what a benchmark measures. Without systemd the launcher needs two things systemd
would give it:

- its listening socket, passed in the socket-activation protocol (fd 3,
  LISTEN_FDS=1, LISTEN_PID its own pid), so the config's <listen> is ignored;
- a journal to log to: it will not start unless /run/systemd/journal/socket
  accepts datagrams. So the launcher runs in a private mount namespace
  (`unshare --mount`, root only) with a tmpfs on /run/systemd, where this module
  binds that socket and copies what arrives to a log file.

    python3 benchmarks/broker.py --serve SOCKET CONFIG LOG   (what start_broker runs, inside unshare)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "tests")]

import rawclient as rc  # noqa: E402
from buses import START_TIMEOUT, RunningBus, register_running, write_config  # noqa: E402

JOURNAL_SOCKET = "/run/systemd/journal/socket"


def unavailable_reason() -> str | None:
    """Why dbus-broker cannot run here, or None when it can."""
    if shutil.which("dbus-broker-launch") is None or shutil.which("dbus-broker") is None:
        return "dbus-broker is not installed (Debian: apt-get install dbus-broker)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing: the launcher needs a private /run/systemd"
    if os.geteuid() != 0:
        return "running dbus-broker without systemd needs root (a private mount namespace for its journal socket)"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"no private mount namespace here (unshare --mount: {probe.stderr.strip()})"
    return None


def start_broker(extra_config: str = "", config_text: str | None = None) -> RunningBus:
    """Start dbus-broker on a socket in a fresh directory and wait until it answers Hello.

    The RunningBus's process is the wrapper (SIGTERM ends the launcher and the bus);
    its daemon_pid is the `dbus-broker` process, the one to measure.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    workdir = tempfile.mkdtemp(prefix="dbus-broker-test-")
    process = None
    try:
        config_path = write_config(workdir, extra_config, config_text)
        socket_path = os.path.join(workdir, "bus")  # serve() binds it and passes it as fd 3 (<listen> is ignored)
        process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
             'mount -t tmpfs tmpfs /run/systemd && exec "$0" "$@"',
             sys.executable, os.path.abspath(__file__), "--serve", socket_path, config_path,
             os.path.join(workdir, "journal.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        line = process.stdout.readline().strip()  # the launcher's pid, once the socket listens
        if not line.isdigit():
            raise RuntimeError(f"the dbus-broker wrapper did not start (status {process.wait(10)})")
        address = f"unix:path={socket_path}"
        # Hello answered: the launcher has started the bus and handed it the socket.
        rc.Connection.open(address, timeout=START_TIMEOUT, sync=False).sock.close()
        daemon_pid = _child_named(int(line), "dbus-broker")
    except BaseException:
        if process is not None:
            process.terminate()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return register_running(RunningBus(kind="dbus-broker", address=address, process=process, workdir=workdir,
                                       daemon_pid=daemon_pid))


def _child_named(parent: int, name: str) -> int:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and comm == name:
            return int(entry)
    raise RuntimeError(f"the dbus-broker launcher (pid {parent}) answered Hello but has no {name} child")


def serve(socket_path: str, config_path: str, log_path: str) -> int:
    """Inside the private namespace: the journal socket, the listening socket, then the launcher."""
    os.makedirs(os.path.dirname(JOURNAL_SOCKET), exist_ok=True)
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(JOURNAL_SOCKET)
    threading.Thread(target=_copy_journal, args=(journal, log_path), daemon=True).start()

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(4096)
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(listener.fileno(), 3)  # socket activation: the first passed fd is 3
            os.set_inheritable(3, True)
            env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()),
                       # the launcher connects to the bus it launches, as its user-scope client
                       DBUS_SESSION_BUS_ADDRESS=f"unix:path={socket_path}")
            env.pop("LISTEN_FDNAMES", None)
            os.execvpe("dbus-broker-launch", ["dbus-broker-launch", "--scope", "user", "--config-file",
                                              config_path], env)
        finally:
            os._exit(127)
    listener.close()
    print(pid, flush=True)

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0


def _copy_journal(journal: socket.socket, log_path: str) -> None:
    with open(log_path, "ab") as log:
        while True:
            try:
                entry = journal.recv(1 << 20)
            except OSError:
                return
            # One journal entry is KEY=value lines; one log line per entry.
            log.write(time.strftime("%H:%M:%S ").encode() + entry.replace(b"\n", b" | ") + b"\n")
            log.flush()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        sys.exit(serve(*sys.argv[2:]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
