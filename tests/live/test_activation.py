"""Service activation, live, on busd and on dbus-daemon: real .service files, real processes.

Each test writes its own .service files under a fresh bus name into the bus's
service directory (both daemons rescan their directories when asked for a name
they do not know), so one bus per daemon kind serves the whole module. The test
service (services/activatable.py) waits on a FIFO when told to, which keeps its
name unowned while callers queue up.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from jeepney import HeaderFields

from buses import SESSION_CONFIG, RunningBus, busd_available, start_bus
from services.support import (
    DBUS, TEST_INTERFACE, Client, Gate, activation_config, is_signal, service_command,
    unique_service_name, write_service,
)

pytestmark = pytest.mark.live

KINDS = ["busd", "dbus-daemon"]
START_TIMEOUT_MS = 20_000  # generous: a Python service on a loaded machine
SHORT_TIMEOUT_MS = 400
ERROR = "org.freedesktop.DBus.Error."


@dataclass
class ServiceBus:
    """A running bus and the service directory it reads."""

    bus: RunningBus
    servicedir: str

    @property
    def address(self) -> str:
        return self.bus.address

    def add(self, name: str, exec_line: str | None, **options: str) -> str:
        return write_service(self.servicedir, name, exec_line, **options)


def _start(kind: str, servicedir: str, timeout_ms: int, extra: str = "") -> RunningBus:
    if kind == "busd" and not busd_available():
        pytest.skip("the busd daemon is not built yet")
    return start_bus(kind, activation_config(servicedir, timeout_ms, extra))


@pytest.fixture(scope="module", params=KINDS)
def service_bus(request, tmp_path_factory) -> Iterator[ServiceBus]:
    servicedir = str(tmp_path_factory.mktemp("services"))
    bus = _start(request.param, servicedir, START_TIMEOUT_MS)
    yield ServiceBus(bus, servicedir)
    bus.stop()


@pytest.fixture(scope="module", params=KINDS)
def impatient_bus(request, tmp_path_factory) -> Iterator[ServiceBus]:
    """A bus that gives services SHORT_TIMEOUT_MS to appear."""
    servicedir = str(tmp_path_factory.mktemp("services"))
    bus = _start(request.param, servicedir, SHORT_TIMEOUT_MS)
    yield ServiceBus(bus, servicedir)
    bus.stop()


@pytest.fixture
def gate(tmp_path) -> Iterator[Gate]:
    gate = Gate(str(tmp_path))
    yield gate
    gate.close()


# ------------------------------------------------------------ auto-start

def test_auto_start_holds_every_call_and_delivers_them_in_order(service_bus, gate):
    name = unique_service_name("Ordered")
    service_bus.add(name, service_command(name, "--gate", gate.path))
    with Client(service_bus.address) as first, Client(service_bus.address) as second:
        sent = []
        for client, word in [(first, "a1"), (second, "b1"), (first, "a2"), (second, "b2"), (first, "a3")]:
            sent.append((client, client.send_call(name, "/", TEST_INTERFACE, "Echo", "s", (word,)), word))
            client.call_bus("GetId")  # answered after the bus has read, and held, the call before it
        assert first.call_bus("NameHasOwner", "s", (name,)) == (False,)
        gate.open()
        for client, serial, word in sent:
            assert client.result(serial) == (word,)
        assert first.call_service(name, "Log") == (["a1", "b1", "a2", "b2", "a3"],)


def test_a_held_call_keeps_its_file_descriptor(service_bus):
    name = unique_service_name("Fds")
    service_bus.add(name, service_command(name))
    read_end, write_end = os.pipe()
    os.write(write_end, b"passed through activation")
    os.close(write_end)
    with Client(service_bus.address, enable_fds=True) as client:
        serial = client.send_call(name, "/", TEST_INTERFACE, "ReadFd", "h", (read_end,))
        os.close(read_end)
        assert client.result(serial) == ("passed through activation",)


def test_a_caller_that_left_is_skipped_and_the_others_are_served(service_bus, gate):
    name = unique_service_name("Leaver")
    service_bus.add(name, service_command(name, "--gate", gate.path))
    with Client(service_bus.address) as stayer:
        with Client(service_bus.address) as leaver:
            leaver.send_call(name, "/", TEST_INTERFACE, "Echo", "s", ("from the leaver",))
            leaver.call_bus("GetId")
        serial = stayer.send_call(name, "/", TEST_INTERFACE, "Echo", "s", ("from the stayer",))
        stayer.call_bus("GetId")
        gate.open()
        assert stayer.result(serial) == ("from the stayer",)
        assert stayer.call_service(name, "Log") == (["from the stayer"],)


def test_start_service_by_name_then_already_running(service_bus):
    name = unique_service_name("Started")
    service_bus.add(name, service_command(name))
    with Client(service_bus.address) as client:
        assert client.call_bus("StartServiceByName", "su", (name, 0)) == (1,)  # DBUS_START_REPLY_SUCCESS
        assert client.call_bus("NameHasOwner", "s", (name,)) == (True,)
        assert client.call_bus("StartServiceByName", "su", (name, 0)) == (2,)  # ALREADY_RUNNING
        assert client.call_service(name, "Echo", "s", ("up",)) == ("up",)


def test_start_service_by_name_joins_a_start_in_progress(service_bus, gate):
    name = unique_service_name("Joined")
    service_bus.add(name, service_command(name, "--gate", gate.path))
    with Client(service_bus.address) as client:
        call = client.send_call(name, "/", TEST_INTERFACE, "Echo", "s", ("first",))
        start = client.send_call(DBUS, "/org/freedesktop/DBus", DBUS, "StartServiceByName", "su", (name, 0))
        client.call_bus("GetId")
        gate.open()
        assert client.result(call) == ("first",)
        assert client.result(start) == (1,)


def test_unknown_names_are_service_unknown(service_bus):
    name = unique_service_name("Nobody")
    with Client(service_bus.address) as client:
        for serial in (client.send_call(name, "/", TEST_INTERFACE, "Echo", "s", ("x",)),
                       client.send_call(DBUS, "/org/freedesktop/DBus", DBUS, "StartServiceByName", "su", (name, 0))):
            error = client.error_of(serial)
            assert (error.name, error.text) == (ERROR + "ServiceUnknown",
                                                f"The name {name} was not provided by any .service files")


# ------------------------------------------------------------ failures

FAILURES = {
    # case: (Exec= line or None for no Exec key, error name, error text with {name})
    "no Exec key": (None, "ServiceUnknown", "The name {name} was not provided by any .service files"),
    "program missing": ("/nonexistent/busd-test-program --flag", "Spawn.ExecFailed",
                        "Failed to execute program {name}: No such file or directory"),
    "relative program": ("sh -c true", "Spawn.ExecFailed",
                         "Failed to execute program {name}: No such file or directory"),
    "exits before owning the name": ("/bin/sh -c 'exit 3'", "Spawn.ChildExited",
                                     "Process {name} exited with status 3"),
    "killed before owning the name": ("/bin/sh -c 'kill -9 $$'", "Spawn.ChildSignaled",
                                      "Process {name} received signal 9"),
    "unclosed quote": ('/bin/echo "unclosed', "InvalidArgs", "Unclosed quotes in command line"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_failed_start_reaches_every_held_caller(service_bus, case):
    exec_line, error_name, text = FAILURES[case]
    name = unique_service_name("Failing")
    service_bus.add(name, exec_line)
    with Client(service_bus.address) as first, Client(service_bus.address) as second:
        serials = [(first, first.send_call(name, "/", TEST_INTERFACE, "Echo", "s", ("1",))),
                   (second, second.send_call(name, "/", TEST_INTERFACE, "Echo", "s", ("2",))),
                   (first, first.send_call(DBUS, "/org/freedesktop/DBus", DBUS, "StartServiceByName", "su",
                                           (name, 0)))]
        for client, serial in serials:
            error = client.error_of(serial)
            assert (error.name, error.text) == (ERROR + error_name, text.format(name=name))


@pytest.mark.parametrize("command", ["/bin/sleep 30", "/bin/true"], ids=["hangs", "exits 0 without the name"])
def test_a_service_that_never_owns_its_name_times_out(impatient_bus, command):
    name = unique_service_name("Slow")
    impatient_bus.add(name, command)
    with Client(impatient_bus.address) as client:
        serials = [client.send_call(name, "/", TEST_INTERFACE, "Echo", "s", ("x",)),
                   client.send_call(name, "/", TEST_INTERFACE, "Echo", "s", ("y",))]
        for serial in serials:
            error = client.error_of(serial)
            assert (error.name, error.text) == (
                ERROR + "TimedOut",
                f"Failed to activate service '{name}': timed out (service_start_timeout={SHORT_TIMEOUT_MS}ms)")


@pytest.mark.parametrize("kind", KINDS)
def test_pending_starts_are_limited(kind, tmp_path):
    servicedir = str(tmp_path / "services")
    os.mkdir(servicedir)
    gate = Gate(str(tmp_path))
    bus = _start(kind, servicedir, START_TIMEOUT_MS, '<limit name="max_pending_service_starts">2</limit>')
    try:
        name = unique_service_name("Limited")
        write_service(servicedir, name, service_command(name, "--gate", gate.path))
        with Client(bus.address) as client:
            held = [client.send_call(name, "/", TEST_INTERFACE, "Echo", "s", (str(i),)) for i in range(2)]
            refused = client.send_call(name, "/", TEST_INTERFACE, "Echo", "s", ("2",))
            error = client.error_of(refused)
            assert (error.name, error.text) == (
                ERROR + "LimitsExceeded",
                f"The maximum number of pending activations has been reached, activation of {name} failed "
                f"(max_pending_service_starts=2)")
            gate.open()
            assert [client.result(serial) for serial in held] == [("0",), ("1",)]
    finally:
        gate.close()
        bus.stop()


# ------------------------------------------------------------ what the child sees

@pytest.mark.parametrize("kind", KINDS)
def test_the_environment_an_activated_service_sees(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("BUSD_TEST_INHERITED", "from the daemon")
    monkeypatch.setenv("BUSD_TEST_REPLACED", "from the daemon")
    servicedir = str(tmp_path)
    bus = _start(kind, servicedir, START_TIMEOUT_MS)
    try:
        name = unique_service_name("Environment")
        write_service(servicedir, name, service_command(name))
        with Client(bus.address) as client:
            client.call_bus("UpdateActivationEnvironment", "a{ss}", ({
                "BUSD_TEST_REPLACED": "from UpdateActivationEnvironment",
                "BUSD_TEST_ADDED": "from UpdateActivationEnvironment",
                "DBUS_STARTER_ADDRESS": "the bus sets this one itself",
            },))
            (env,) = client.call_service(name, "Environment")
    finally:
        bus.stop()
    assert env["BUSD_TEST_INHERITED"] == "from the daemon"
    assert env["BUSD_TEST_REPLACED"] == "from UpdateActivationEnvironment"
    assert env["BUSD_TEST_ADDED"] == "from UpdateActivationEnvironment"
    assert env["DBUS_STARTER_ADDRESS"] == bus.address
    assert env["DBUS_STARTER_BUS_TYPE"] == "session"
    assert env["DBUS_SESSION_BUS_ADDRESS"] == bus.address


def test_exec_is_split_like_a_shell_command_without_a_shell(service_bus):
    name = unique_service_name("Argv")
    # As written in the file: \s and \\ are the desktop-file escapes, read before the command is split.
    # (dbus-daemon turns whitespace at the very end into one more, empty, argument: none here.)
    exec_line = service_command(name) + r""" 'two words' "say \\"hi\\"" back\\ slash 'a\sb' $HOME ""# a comment"""
    service_bus.add(name, exec_line)
    with Client(service_bus.address) as client:
        (argv,) = client.call_service(name, "Argv")
    assert argv[1:] == [name, "two words", 'say "hi"', "back slash", "a b", "$HOME", ""]


# ------------------------------------------------------------ the list of names

def test_activatable_names_come_from_the_files_that_parse(service_bus):
    good, no_exec, bad_escape = (unique_service_name(stem) for stem in ("Listed", "NoExec", "BadEscape"))
    service_bus.add(good, service_command(good))
    service_bus.add(no_exec, None)
    service_bus.add(bad_escape, "/bin/true \\q")
    with open(os.path.join(service_bus.servicedir, "garbage.service"), "w") as f:
        f.write("this is not a service file\n")
    with Client(service_bus.address) as client:
        client.call_bus("ReloadConfig")
        (names,) = client.call_bus("ListActivatableNames")
    assert DBUS in names
    assert good in names
    assert no_exec not in names and bad_escape not in names


def test_new_service_files_are_noticed_and_announced(service_bus, tmp_path):
    name = unique_service_name("Arrived")
    rule = f"type='signal',sender='{DBUS}',interface='{DBUS}',member='ActivatableServicesChanged'"
    with Client(service_bus.address) as client:
        client.call_bus("AddMatch", "s", (rule,))
        # Written elsewhere and renamed in, so the directory never holds half a file.
        staged = write_service(str(tmp_path), name, service_command(name))
        os.rename(staged, os.path.join(service_bus.servicedir, f"{name}.service"))
        names: list[str] = []
        while name not in names:
            client.wait_for(is_signal("ActivatableServicesChanged"))
            (names,) = client.call_bus("ListActivatableNames")
        client.call_bus("ReloadConfig")
        client.wait_for(is_signal("ActivatableServicesChanged"))
        (features,) = client.call_bus("Get", "ss", (DBUS, "Features"), interface="org.freedesktop.DBus.Properties")
    assert "ActivatableServicesChanged" in features[1]


# ------------------------------------------------------------ the system bus: User= and the launch helper

SYSTEM_CONFIG = SESSION_CONFIG.replace("<type>session</type>", "<type>system</type>")


def _start_system(kind: str, servicedir: str, extra: str = "") -> RunningBus:
    if kind == "busd" and not busd_available():
        pytest.skip("the busd daemon is not built yet")
    return start_bus(kind, activation_config(servicedir, START_TIMEOUT_MS, extra), config_text=SYSTEM_CONFIG)


@pytest.mark.parametrize("kind", KINDS)
def test_a_launch_helper_starts_system_services_and_its_exit_codes_are_errors(kind, tmp_path):
    servicedir = str(tmp_path / "services")
    os.mkdir(servicedir)
    record = tmp_path / "helper-argv"
    helper = tmp_path / "launch-helper"
    # Exit status 6 is the launch helper's "bus name not found in system service directory".
    helper.write_text(f'#!/bin/sh\necho "$@" > {record}\nexit 6\n')
    helper.chmod(0o755)
    bus = _start_system(kind, servicedir, f"<servicehelper>{helper}</servicehelper>")
    try:
        with_user, without_user = unique_service_name("Helped"), unique_service_name("NoUser")
        write_service(servicedir, with_user, "/bin/false", extra="User=nobody\n")
        write_service(servicedir, without_user, "/bin/false")
        with Client(bus.address) as client:
            helped = client.error_of(client.send_call(with_user, "/", TEST_INTERFACE, "Echo", "s", ("x",)))
            refused = client.error_of(client.send_call(without_user, "/", TEST_INTERFACE, "Echo", "s", ("x",)))
    finally:
        bus.stop()
    assert (helped.name, helped.text) == (ERROR + "Spawn.ServiceNotFound",
                                          "Bus name not found in system service directory")
    assert record.read_text() == f"{with_user}\n"  # the helper is given the bus name, nothing else
    assert (refused.name, refused.text) == (ERROR + "Spawn.FileInvalid",
                                            "Cannot do system-bus activation with no user\n")


def test_busd_runs_a_system_service_as_its_user_when_it_can(tmp_path):
    import pwd
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    servicedir = str(tmp_path / "services")
    os.mkdir(servicedir)
    # Somewhere 'nobody' may write: pytest's own directories are private to root.
    outbox = Path(tempfile.mkdtemp(prefix="busd-outbox-"))
    outbox.chmod(0o777)
    bus = _start_system("busd", servicedir)
    try:
        name = unique_service_name("AsNobody")
        write_service(servicedir, name, f"/bin/sh -c 'id -u > {outbox}/uid; id -g > {outbox}/gid; exit 5'",
                      extra="User=nobody\n")
        with Client(bus.address) as client:
            error = client.error_of(client.send_call(name, "/", TEST_INTERFACE, "Echo", "s", ("x",)))
        assert (error.name, error.text) == (ERROR + "Spawn.ChildExited", f"Process {name} exited with status 5")
        assert (outbox / "uid").read_text() == f"{nobody.pw_uid}\n"
        assert (outbox / "gid").read_text() == f"{nobody.pw_gid}\n"
    finally:
        bus.stop()
        shutil.rmtree(outbox, ignore_errors=True)


# ------------------------------------------------------------ busd's own care of its children

def test_busd_logs_what_a_service_prints_and_reaps_it(tmp_path):
    if not busd_available():
        pytest.skip("the busd daemon is not built yet")
    workdir = tempfile.mkdtemp(prefix="busd-log-")
    servicedir = str(tmp_path)
    config = os.path.join(workdir, "bus.conf")
    with open(config, "w") as f:
        f.write(SESSION_CONFIG.replace("{socket}", os.path.join(workdir, "bus"))
                .replace("{extra}", activation_config(servicedir, START_TIMEOUT_MS)))
    name = unique_service_name("Chatty")
    write_service(servicedir, name, "/bin/sh -c 'echo to stdout; echo to stderr >&2; exit 4'")
    daemon = subprocess.Popen([sys.executable, "-m", "busd", f"--config-file={config}", "--nofork", "--nopidfile",
                               "--print-address=1", "--log-level=info"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = daemon.stdout.readline().strip()
        with Client(address) as client:
            error = client.error_of(client.send_call(name, "/", TEST_INTERFACE, "Echo", "s", ("x",)))
    finally:
        daemon.terminate()
        _, log = daemon.communicate(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    assert (error.name, error.text) == (ERROR + "Spawn.ChildExited", f"Process {name} exited with status 4")
    printed = re.findall(rf"(INFO|WARNING) busd\.service: {re.escape(name)}\[(\d+)\]: (.*)", log)
    # Each stream in its own right, stdout at INFO and stderr at WARNING (the two may interleave either way).
    assert sorted((level, text) for level, _pid, text in printed) == [("INFO", "to stdout"),
                                                                        ("WARNING", "to stderr")]
    pid = int(printed[0][1])
    # Reaped before the caller heard of the exit: no zombie left behind.
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state != "Z"


def test_a_monitor_sees_a_held_call_once(service_bus, gate):
    name = unique_service_name("Monitored")
    service_bus.add(name, service_command(name, "--gate", gate.path))
    with Client(service_bus.address) as monitor, Client(service_bus.address) as caller:
        monitor.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus.Monitoring",
                     "BecomeMonitor", "asu", ([f"destination='{name}'"], 0))
        held = caller.send_call(name, "/", TEST_INTERFACE, "Echo", "s", ("held",))
        caller.call_bus("GetId")
        gate.open()
        assert caller.result(held) == ("held",)
        caller.call_service(name, "Echo", "s", ("after",))
        seen = []
        while "after" not in seen:
            message = monitor.wait_for(lambda m: m.header.fields.get(HeaderFields.member) == "Echo")
            seen.append(message.body[0])
    assert seen == ["held", "after"]
