"""Live tests of the daemon process: dbus-daemon's command line, listen addresses, forking, signals, clean exit.

Where dbus-daemon 1.14 behaves the same, a test runs on both. Some promises are
busd's own and dbus-daemon does not keep them (it dies of SIGTERM leaving its
socket file, and fails when --print-address and --print-pid share a descriptor);
those tests run on busd only.
"""

from __future__ import annotations

import ipaddress
import os
import select
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import pytest

from buses import busd_available, workdir
from busclient import BUS_KINDS, DBUS, TIMEOUT, LineWatcher, RawClient, wait_exit

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  {listen}
  <auth>EXTERNAL</auth>
  {extra}
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""
ANONYMOUS = "<auth>ANONYMOUS</auth><allow_anonymous/>"


def command(kind: str) -> list[str]:
    if kind == "busd":
        if not busd_available():
            pytest.skip("the busd daemon is not built yet")
        return [sys.executable, "-m", "busd"]
    return ["dbus-daemon"]


@dataclass
class Launched:
    """A daemon started by a test, its working directory and what it printed."""

    process: subprocess.Popen
    workdir: str
    config_path: str
    lines: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.lines[0]


def write_config(directory: str, listen: list[str], extra: str = "", name: str = "bus.conf") -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(CONFIG.format(listen="\n  ".join(f"<listen>{a}</listen>" for a in listen), extra=extra))
    return path


@contextmanager
def launched(kind: str, directory: str, args: list[str], *, listen: list[str] | None = None, extra: str = "",
             lines: int = 1, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()) -> Iterator[Launched]:
    """Start a daemon with `args` (a config file is written unless args name one) and read `lines` of fd 3."""
    config = ""
    if not any(a.startswith("--config-file") for a in args) and listen is not None:
        config = write_config(directory, listen, extra)
        args = [f"--config-file={config}", *args]
    read_end, write_end = os.pipe()
    args = [a.replace("{fd}", str(write_end)) for a in args]
    process = subprocess.Popen(command(kind) + args, pass_fds=(write_end, *pass_fds), stdin=subprocess.DEVNULL,
                               env=env, stdout=subprocess.DEVNULL)
    os.close(write_end)
    result = Launched(process, directory, config)
    try:
        with os.fdopen(read_end) as reader:
            ready, _, _ = select.select([reader], [], [], TIMEOUT * 2)
            assert ready, f"{kind} printed nothing"
            for _ in range(lines):
                result.lines.append(reader.readline().strip())
        yield result
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(TIMEOUT)


def works(address: str, **options) -> str:
    """Connect, say Hello and ask the driver something; returns the unique name."""
    with RawClient(address, **options) as client:
        assert client.driver_value("GetNameOwner", "s", [DBUS]) == DBUS
        return client.unique_name


# ---------------------------------------------------------------- information flags


def test_version_and_help():
    busd = command("busd")
    version = subprocess.run(busd + ["--version"], capture_output=True, text=True, timeout=TIMEOUT)
    assert version.returncode == 0 and version.stdout.startswith("busd ")
    usage = subprocess.run(busd + ["--help"], capture_output=True, text=True, timeout=TIMEOUT)
    assert usage.returncode == 0
    for flag in ("--session", "--system", "--config-file", "--address", "--print-address", "--print-pid",
                 "--nofork", "--fork", "--nopidfile", "--syslog", "--nosyslog", "--syslog-only", "--introspect",
                 "--version", "--systemd-activation"):
        assert flag in usage.stdout


def test_introspect_prints_the_same_xml_as_dbus_daemon():
    ours = subprocess.run(command("busd") + ["--introspect"], capture_output=True, text=True, timeout=TIMEOUT)
    reference = subprocess.run(["dbus-daemon", "--introspect"], capture_output=True, text=True, timeout=TIMEOUT)
    assert ours.returncode == 0
    # dbus-daemon 1.14 prints its usage line after the XML; compare the XML.
    assert ours.stdout == reference.stdout[:reference.stdout.index("</node>\n") + len("</node>\n")]


# ---------------------------------------------------------------- printing the address and pid


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_print_address_to_stdout(kind):
    with workdir("busd-daemon-test-") as directory:
        config = write_config(directory, [f"unix:path={directory}/bus"])
        process = subprocess.Popen(command(kind) + [f"--config-file={config}", "--nofork", "--print-address"],
                                   stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        try:
            address = process.stdout.readline().strip()
            assert address.startswith(f"unix:path={directory}/bus,guid=")
            works(address)
        finally:
            process.terminate()
            process.wait(TIMEOUT)
            process.stdout.close()


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_print_address_and_pid_to_separate_fds(kind):
    with workdir("busd-daemon-test-") as directory:
        pid_read, pid_write = os.pipe()
        with os.fdopen(pid_read) as pid_reader:
            try:
                with launched(kind, directory, ["--nofork", "--print-address={fd}", f"--print-pid={pid_write}"],
                              listen=[f"unix:path={directory}/bus"], pass_fds=(pid_write,)) as bus:
                    os.close(pid_write)
                    pid_write = -1
                    assert pid_reader.readline().strip() == str(bus.process.pid)
                    works(bus.address)
            finally:
                if pid_write >= 0:
                    os.close(pid_write)


def test_print_address_and_pid_to_one_fd():
    with workdir("busd-daemon-test-") as directory, launched("busd", directory, ["--nofork", "--print-address={fd}", "--print-pid={fd}"],
                                          listen=[f"unix:path={directory}/bus"], lines=2) as bus:
        assert bus.lines[0].startswith("unix:path=") and ",guid=" in bus.lines[0]
        assert bus.lines[1] == str(bus.process.pid)


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_address_flag_overrides_the_configs_listen(kind):
    with workdir("busd-daemon-test-") as directory, launched(kind, directory, ["--nofork", "--print-address={fd}",
                                                            f"--address=unix:path={directory}/override"],
                                          listen=[f"unix:path={directory}/configured"]) as bus:
        assert bus.address.startswith(f"unix:path={directory}/override,guid=")
        assert not os.path.exists(f"{directory}/configured")
        works(bus.address)


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_the_config_file_may_go_once_the_address_is_printed(kind):
    with workdir("busd-daemon-test-") as directory:
        included = os.path.join(directory, "limits.conf")
        with open(included, "w") as f:
            f.write('<busconfig><limit name="max_match_rules_per_connection">1</limit></busconfig>')
        with launched(kind, directory, ["--nofork", "--print-address={fd}"],
                      listen=[f"unix:path={directory}/bus"], extra=f"<include>{included}</include>") as bus:
            os.unlink(bus.config_path)
            os.unlink(included)
            with RawClient(bus.address) as client:
                client.add_match("member='One'")
                # The included limit was read before the address was printed.
                assert client.driver_error("AddMatch", "s", ["member='Two'"]).endswith("LimitsExceeded")


# ---------------------------------------------------------------- listen addresses


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_listen_on_every_kind_of_address_at_once(kind):
    with workdir("busd-daemon-test-") as directory:
        name = os.path.basename(directory)
        listen = [f"unix:path={directory}/bus", f"unix:abstract=busd-test-{name}", f"unix:dir={directory}",
                  f"unix:tmpdir={directory}", "unix:runtime=yes", "tcp:host=127.0.0.1,port=0", "tcp:host=localhost"]
        env = {**os.environ, "XDG_RUNTIME_DIR": os.path.join(directory, "runtime")}
        os.mkdir(env["XDG_RUNTIME_DIR"], 0o700)
        with launched(kind, directory, ["--nofork", "--print-address={fd}"], listen=listen, extra=ANONYMOUS,
                      env=env) as bus:
            addresses = bus.address.split(";")
            assert len(addresses) == len(listen)
            # (dbus-daemon prints them last first; busd in the config's order)
            for prefix in (f"unix:path={directory}/bus,guid=", f"unix:abstract=busd-test-{name},guid=",
                           f"unix:path={directory}/runtime/bus,guid=", "tcp:host=127.0.0.1,port=",
                           "tcp:host=localhost,"):
                assert [a for a in addresses if a.startswith(prefix)], prefix
            names = set()
            for address in addresses:
                names.add(works(address, mechanisms=("ANONYMOUS",) if address.startswith("tcp:") else ("EXTERNAL",)))
            assert len(names) == len(addresses)  # one bus: every client got its own unique name


def test_tcp_listens_on_loopback_by_default():
    with workdir("busd-daemon-test-") as directory, launched("busd", directory, ["--nofork", "--print-address={fd}"],
                                          listen=["tcp:port=0"], extra=ANONYMOUS) as bus:
        port = int(bus.address.split("port=")[1].split(",")[0])
        local = listening_addresses(port)
        assert local and all(ipaddress.ip_address(a).is_loopback for a in local), local
        works(bus.address, mechanisms=("ANONYMOUS",))


def listening_addresses(port: int) -> list[str]:
    """The local addresses of TCP sockets listening on `port`, from /proc/net/tcp and tcp6."""
    found = []
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with open(table) as f:
            rows = [line.split() for line in f.readlines()[1:]]
        for row in rows:
            address, port_hex = row[1].split(":")
            if row[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word in host (little-endian) order.
                packed = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
                found.append(str(ipaddress.ip_address(packed)))
    return found


# ---------------------------------------------------------------- process life


@pytest.mark.parametrize("kind", BUS_KINDS)
@pytest.mark.parametrize("flags", [["--systemd-activation", "--syslog"], ["--syslog-only"], ["--session", "--nosyslog"]])
def test_accepted_flags(kind, flags):
    with workdir("busd-daemon-test-") as directory:
        args = ["--nofork", "--print-address={fd}", f"--address=unix:path={directory}/bus", *flags]
        with launched(kind, directory, args, listen=None if "--session" in flags else [f"unix:dir={directory}"]) \
                as bus:
            works(bus.address)


def test_fork_detaches_from_the_callers_streams():
    with workdir("busd-daemon-test-") as directory:
        config = write_config(directory, [f"unix:dir={directory}"])
        parent = subprocess.Popen(command("busd") + [f"--config-file={config}", "--fork", "--print-address",
                                                      "--print-pid", "--nopidfile"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        # EOF on both pipes: the parent exited and the daemon kept neither stream.
        out, err = parent.communicate(timeout=TIMEOUT * 2)
        assert parent.returncode == 0, err
        address, pid_text = out.splitlines()
        pid = int(pid_text)
        try:
            assert pid != parent.pid and os.path.exists(f"/proc/{pid}")
            works(address)
            socket_path = address.split("path=")[1].split(",")[0]
            assert os.path.exists(socket_path)
        finally:
            os.kill(pid, signal.SIGTERM)
            wait_exit(pid)
        assert not os.path.exists(socket_path)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_clean_exit_removes_socket_files(signum):
    with workdir("busd-daemon-test-") as directory:
        with launched("busd", directory, ["--nofork", "--print-address={fd}"],
                      listen=[f"unix:path={directory}/bus", f"unix:dir={directory}"]) as bus:
            paths = [a.split("path=")[1].split(",")[0] for a in bus.address.split(";")]
            assert all(os.path.exists(p) for p in paths)
            client = RawClient(bus.address.split(";")[0])
            bus.process.send_signal(signum)
            assert bus.process.wait(TIMEOUT) == 0
            client.wait_closed()
            client.close()
        assert [p for p in paths if os.path.exists(p)] == []


def test_pidfile_is_written_and_removed():
    with workdir("busd-daemon-test-") as directory:
        pidfile = os.path.join(directory, "bus.pid")
        with launched("busd", directory, ["--nofork", "--print-address={fd}"], listen=[f"unix:dir={directory}"],
                      extra=f"<pidfile>{pidfile}</pidfile>") as bus:
            with open(pidfile) as f:
                assert f.read().strip() == str(bus.process.pid)
            bus.process.terminate()
            assert bus.process.wait(TIMEOUT) == 0
        assert not os.path.exists(pidfile)
        with launched("busd", directory, ["--nofork", "--print-address={fd}", "--nopidfile"],
                      listen=[f"unix:dir={directory}"], extra=f"<pidfile>{pidfile}</pidfile>") as bus:
            works(bus.address)
            assert not os.path.exists(pidfile)


def test_no_config_file_runs_the_builtin_session_bus():
    with workdir("busd-daemon-test-") as directory:
        env = {**os.environ, "TMPDIR": directory, "XDG_RUNTIME_DIR": directory}
        with launched("busd", directory, ["--nofork", "--print-address={fd}"], env=env) as bus:
            assert bus.address.startswith("unix:")
            works(bus.address)


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_sighup_reloads_and_keeps_every_connection(kind):
    with workdir("busd-daemon-test-") as directory:
        read_end, write_end = os.pipe()
        config = write_config(directory, [f"unix:path={directory}/bus"])
        args = [f"--config-file={config}", "--nofork", f"--print-address={write_end}"]
        if kind == "busd":
            args.append("--log-level=info")
        process = subprocess.Popen(command(kind) + args, pass_fds=(write_end,), stdin=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        os.close(write_end)
        log = LineWatcher(process.stderr)
        try:
            with os.fdopen(read_end) as reader:
                address = reader.readline().strip()
            with RawClient(address) as client:
                client.request_name("org.example.Daemon.Kept")
                process.send_signal(signal.SIGHUP)
                log.wait_for(r"[Rr]eloaded configuration|configuration reloaded")
                assert client.driver_value("GetNameOwner", "s", ["org.example.Daemon.Kept"]) == client.unique_name
                assert client.driver_value("ReloadConfig") is None
                assert client.driver_value("GetNameOwner", "s", [client.unique_name]) == client.unique_name
        finally:
            process.terminate()
            process.wait(TIMEOUT)
            log.wait_eof()


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_a_broken_config_is_refused_on_reload_and_the_old_one_kept(kind):
    with workdir("busd-daemon-test-") as directory, launched(kind, directory, ["--nofork", "--print-address={fd}"],
                                          listen=[f"unix:path={directory}/bus"],
                                          extra='<limit name="max_match_rules_per_connection">1</limit>') as bus, \
            RawClient(bus.address) as client:
        with open(bus.config_path, "w") as f:
            f.write("<busconfig><no-such-element/></busconfig>")
        assert client.driver_error("ReloadConfig") == "org.freedesktop.DBus.Error.Failed"
        client.add_match("member='One'")
        assert client.driver_error("AddMatch", "s", ["member='Two'"]).endswith("LimitsExceeded")
