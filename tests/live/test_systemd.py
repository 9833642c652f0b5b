"""busd under systemd, without systemd as PID 1: the unit files, socket activation, sd_notify, systemd activation.

Socket activation runs the daemon through systemd-socket-activate (the
systemd package's tool that does what a .socket unit does). Readiness is read
from a NOTIFY_SOCKET this test binds. systemd activation talks to a stand-in
systemd: a test connection that owns org.freedesktop.systemd1, receives the
bus's ActivationRequest signals and starts the service itself, or answers
with ActivationFailure. busd and dbus-daemon are run side by side.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Iterator

import pytest
from jeepney import DBusAddress, HeaderFields, new_signal

from buses import SESSION_CONFIG, busd_available, daemon_command, start_bus
from services.support import (
    DBUS, DBUS_PATH, SERVICE_SCRIPT, TEST_INTERFACE, TIMEOUT, Client, activation_config, is_signal,
    service_command, unique_service_name, write_service,
)

pytestmark = pytest.mark.live

KINDS = ["busd", "dbus-daemon"]
UNITS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "systemd")
SYSTEMD_NAME = "org.freedesktop.systemd1"
ACTIVATOR = "org.freedesktop.systemd1.Activator"
START_TIMEOUT_MS = 20_000


def _need_busd(kind: str) -> None:
    if kind == "busd" and not busd_available():
        pytest.skip("the busd daemon is not built yet")


# ------------------------------------------------------------ unit files

@pytest.mark.parametrize("scope", ["system", "user"])
def test_unit_files_pass_systemd_analyze_verify(scope, tmp_path):
    analyze = shutil.which("systemd-analyze")
    busd = shutil.which("busd")
    if analyze is None or busd is None:
        pytest.skip("needs systemd-analyze and an installed busd")
    units = []
    for filename in sorted(os.listdir(os.path.join(UNITS, scope))):
        with open(os.path.join(UNITS, scope, filename)) as f:
            text = f.read()
        # verify checks that ExecStart= exists: point it at this machine's busd.
        (tmp_path / filename).write_text(text.replace("/usr/bin/busd", busd))
        units.append(f"./{filename}")
    assert units == ["./busd.service", "./busd.socket"]
    env = dict(os.environ)
    runtime_dir = tmp_path / "runtime"
    runtime_dir.mkdir(mode=0o700)
    env["XDG_RUNTIME_DIR"] = str(runtime_dir)  # the user manager needs one, even to verify
    scope_args = ["--user"] if scope == "user" else []
    result = subprocess.run([analyze, *scope_args, "verify", *units], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    complaints = [line for line in result.stderr.splitlines() if "busd" in line]
    assert complaints == []


def test_units_are_socket_activated_and_notify_readiness():
    for scope, address in (("system", "/run/dbus/system_bus_socket"), ("user", "%t/bus")):
        with open(os.path.join(UNITS, scope, "busd.socket")) as f:
            socket_unit = f.read()
        with open(os.path.join(UNITS, scope, "busd.service")) as f:
            service_unit = f.read()
        assert f"ListenStream={address}\n" in socket_unit
        assert "Type=notify\n" in service_unit
        exec_start = next(line for line in service_unit.splitlines() if line.startswith("ExecStart="))
        assert "--address=systemd:" in exec_start and "--nofork" in exec_start


# ------------------------------------------------------------ socket activation

@pytest.mark.parametrize("kind", KINDS)
def test_socket_activation_through_systemd_socket_activate(kind):
    _need_busd(kind)
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("needs systemd-socket-activate (package systemd)")
    workdir = tempfile.mkdtemp(prefix="busd-sa-")
    socket_path = os.path.join(workdir, "bus")
    config = os.path.join(workdir, "bus.conf")
    with open(config, "w") as f:
        f.write(SESSION_CONFIG.replace("{socket}", os.path.join(workdir, "unused")).replace("{extra}", ""))
    command = [tool, "-l", socket_path, *daemon_command(kind), f"--config-file={config}", "--address=systemd:",
               "--nofork", "--nopidfile"]
    activator = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert activator.stderr.readline().startswith(f"Listening on {socket_path}")
        # The first connection starts the daemon, which serves it on the socket it inherits.
        with Client(f"unix:path={socket_path}") as first, Client(f"unix:path={socket_path}") as second:
            (pid,) = first.call_bus("GetConnectionUnixProcessID", "s", (DBUS,))
            assert pid == activator.pid  # systemd-socket-activate execs the daemon in its own process
            (names,) = second.call_bus("ListNames")
            assert first.unique_name in names and second.unique_name in names
    finally:
        activator.terminate()
        activator.communicate(timeout=TIMEOUT)
        shutil.rmtree(workdir, ignore_errors=True)
    assert activator.returncode == 0


# ------------------------------------------------------------ sd_notify

class NotifyReader:
    """An abstract-namespace datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.name = f"@busd-test-notify-{os.getpid()}-{secrets.token_hex(4)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.settimeout(TIMEOUT)

    def wait_for(self, key: str) -> dict[str, str]:
        """The next notification that sets `key`, as a dict (earlier ones are skipped)."""
        while True:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                raise AssertionError(f"no {key}= notification within {TIMEOUT}s") from None
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            if key in fields:
                return fields

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_reader() -> Iterator[NotifyReader]:
    reader = NotifyReader()
    yield reader
    reader.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_notify_socket_hears_ready_and_stopping(kind, notify_reader, tmp_path, monkeypatch):
    _need_busd(kind)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_reader.name)
    name = unique_service_name("NotifyEnv")
    write_service(str(tmp_path), name, service_command(name))
    bus = start_bus(kind, activation_config(str(tmp_path), START_TIMEOUT_MS))
    try:
        ready = notify_reader.wait_for("READY")
        assert ready["READY"] == "1"
        with Client(bus.address) as client:
            (env,) = client.call_service(name, "Environment")
        assert "NOTIFY_SOCKET" not in env  # the daemon's, not the service's
    finally:
        bus.stop()
    assert notify_reader.wait_for("STOPPING")["STOPPING"] == "1"


def test_busd_reports_its_status_and_feeds_the_watchdog(notify_reader, monkeypatch):
    _need_busd("busd")
    monkeypatch.setenv("NOTIFY_SOCKET", notify_reader.name)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    bus = start_bus("busd")
    try:
        ready = notify_reader.wait_for("READY")
        assert ready["MAINPID"] == str(bus.process.pid)
        assert ready["STATUS"] == f"Listening on {bus.address}"
        assert notify_reader.wait_for("WATCHDOG")["WATCHDOG"] == "1"
        assert notify_reader.wait_for("WATCHDOG")["WATCHDOG"] == "1"  # and again: it is periodic
    finally:
        bus.stop()
    assert notify_reader.wait_for("STOPPING")["STATUS"] == "Shutting down"


# ------------------------------------------------------------ systemd activation

@pytest.fixture(params=KINDS)
def systemd_bus(request, tmp_path):
    """A bus run with --systemd-activation, and its service directory."""
    _need_busd(request.param)
    servicedir = str(tmp_path / "services")
    os.mkdir(servicedir)
    bus = start_bus(request.param, activation_config(servicedir, START_TIMEOUT_MS), args=("--systemd-activation",))
    yield bus, servicedir
    bus.stop()


class StandInSystemd:
    """A connection that owns org.freedesktop.systemd1 and does what systemd would with the bus's requests."""

    def __init__(self, address: str):
        self.address = address
        self.client = Client(address)
        self.children: list[subprocess.Popen] = []
        assert self.client.call_bus("RequestName", "su", (SYSTEMD_NAME, 0)) == (1,)

    def next_request(self) -> str:
        """The unit named by the next ActivationRequest, after checking where it came from."""
        message = self.client.wait_for(is_signal("ActivationRequest", ACTIVATOR))
        fields = message.header.fields
        assert fields[HeaderFields.sender] == DBUS
        assert fields[HeaderFields.path] == DBUS_PATH
        assert fields.get(HeaderFields.destination) == SYSTEMD_NAME
        (unit,) = message.body
        return unit

    def start(self, name: str) -> None:
        """Start the test service for `name`, as systemd would start the unit."""
        env = dict(os.environ, DBUS_STARTER_ADDRESS=self.address, DBUS_STARTER_BUS_TYPE="session")
        self.children.append(subprocess.Popen([sys.executable, SERVICE_SCRIPT, name], env=env,
                                              stdin=subprocess.DEVNULL))

    def fail(self, unit: str, error: str, text: str) -> None:
        send_activation_failure(self.client, unit, error, text)

    def close(self) -> None:
        self.client.close()
        for child in self.children:
            child.terminate()
            child.wait(timeout=TIMEOUT)


def send_activation_failure(client: Client, unit: str, error: str, text: str) -> None:
    message = new_signal(DBusAddress(DBUS_PATH, interface=ACTIVATOR), "ActivationFailure", "sss", (unit, error, text))
    message.header.fields[HeaderFields.destination] = DBUS
    client.send(message)
    client.call_bus("GetId")  # the bus has handled the signal once this is answered


def _systemd_service(servicedir: str, stem: str) -> tuple[str, str]:
    name = unique_service_name(stem)
    unit = f"busd-test-{name.rsplit('.', 1)[-1].lower()}.service"
    # Exec= is required even when systemd starts the unit; /bin/false shows it is never run.
    write_service(servicedir, name, "/bin/false", extra=f"SystemdService={unit}\n")
    return name, unit


@pytest.fixture
def stand_ins() -> Iterator[list[StandInSystemd]]:
    made: list[StandInSystemd] = []
    yield made
    for stand_in in made:
        stand_in.close()


def test_systemd_starts_a_unit_on_request(systemd_bus, stand_ins):
    bus, servicedir = systemd_bus
    name, unit = _systemd_service(servicedir, "ViaSystemd")
    systemd = StandInSystemd(bus.address)
    stand_ins.append(systemd)
    with Client(bus.address) as caller:
        serials = [caller.send_call(name, "/", TEST_INTERFACE, "Echo", "s", (word,)) for word in ("one", "two")]
        start = caller.send_call(DBUS, DBUS_PATH, DBUS, "StartServiceByName", "su", (name, 0))
        assert systemd.next_request() == unit
        systemd.start(name)
        assert [caller.result(serial) for serial in serials] == [("one",), ("two",)]
        assert caller.result(start) == (1,)


def test_the_request_waits_for_systemd_to_connect(systemd_bus, stand_ins):
    bus, servicedir = systemd_bus
    name, unit = _systemd_service(servicedir, "EarlyBoot")
    with Client(bus.address) as caller:
        serial = caller.send_call(name, "/", TEST_INTERFACE, "Echo", "s", ("before systemd",))
        caller.call_bus("GetId")
        systemd = StandInSystemd(bus.address)
        stand_ins.append(systemd)
        assert systemd.next_request() == unit
        systemd.start(name)
        assert caller.result(serial) == ("before systemd",)


def test_activation_failure_from_systemd_reaches_the_callers(systemd_bus, stand_ins):
    bus, servicedir = systemd_bus
    name, unit = _systemd_service(servicedir, "NoSuchUnit")
    systemd = StandInSystemd(bus.address)
    stand_ins.append(systemd)
    with Client(bus.address) as caller:
        serials = [caller.send_call(name, "/", TEST_INTERFACE, "Echo", "s", ("x",)),
                   caller.send_call(DBUS, DBUS_PATH, DBUS, "StartServiceByName", "su", (name, 0))]
        assert systemd.next_request() == unit
        systemd.fail(unit, "org.freedesktop.systemd1.NoSuchUnit", f"Unit {unit} not found.")
        for serial in serials:
            error = caller.error_of(serial)
            assert (error.name, error.text) == ("org.freedesktop.systemd1.NoSuchUnit", f"Unit {unit} not found.")


def test_activation_failure_from_anyone_else_is_ignored(systemd_bus, stand_ins):
    bus, servicedir = systemd_bus
    name, unit = _systemd_service(servicedir, "Spoofed")
    systemd = StandInSystemd(bus.address)
    stand_ins.append(systemd)
    with Client(bus.address) as caller, Client(bus.address) as impostor:
        serial = caller.send_call(name, "/", TEST_INTERFACE, "Echo", "s", ("still served",))
        assert systemd.next_request() == unit
        send_activation_failure(impostor, unit, "org.freedesktop.systemd1.NoSuchUnit", "spoofed")
        systemd.start(name)
        assert caller.result(serial) == ("still served",)


def test_services_without_a_systemd_unit_are_spawned_directly(systemd_bus, stand_ins):
    bus, servicedir = systemd_bus
    name = unique_service_name("Direct")
    write_service(servicedir, name, service_command(name))
    systemd = StandInSystemd(bus.address)
    stand_ins.append(systemd)
    with Client(bus.address) as caller:
        assert caller.call_service(name, "Echo", "s", ("spawned by the bus",)) == ("spawned by the bus",)
    # The stand-in was never asked: the next thing it reads is the GetId answer, not an ActivationRequest.
    systemd.client.call_bus("GetId")
    assert not any(is_signal("ActivationRequest", ACTIVATOR)(message) for message in systemd.client.unclaimed())
