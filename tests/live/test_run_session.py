"""busd-run-session and the busd_session pytest fixture: private buses that live as long as their user."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

from buses import busd_available
from services.support import SERVICE_SCRIPT

pytestmark = [pytest.mark.live,
              pytest.mark.skipif(not busd_available(), reason="the busd daemon is not built yet")]

RUN_SESSION = [sys.executable, "-m", "busd.testing.run_session"]

# A program run inside the session: reports what it sees, as JSON on stdout.
PROBE = textwrap.dedent("""
    import json, os
    from jeepney import DBus
    from jeepney.io.blocking import open_dbus_connection
    address = os.environ["DBUS_SESSION_BUS_ADDRESS"]
    conn = open_dbus_connection(address)
    bus = DBus()
    pid = conn.send_and_get_reply(bus.GetConnectionUnixProcessID("org.freedesktop.DBus")).body[0]
    names = conn.send_and_get_reply(bus.ListNames()).body[0]
    with open(f"/proc/{pid}/comm") as f:
        program = f.read().strip()
    print(json.dumps({"address": address, "pid": pid, "names": names, "program": program,
                      "stale": [k for k in ("DBUS_STARTER_ADDRESS", "DBUS_STARTER_BUS_TYPE", "DBUS_SESSION_BUS_PID")
                                if k in os.environ]}))
""")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN_SESSION, *args], capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL)


def socket_path_of(address: str) -> str:
    params = dict(part.split("=", 1) for part in address.split(":", 1)[1].split(","))
    return params["path"]


def assert_bus_gone(report: dict) -> None:
    path = socket_path_of(report["address"])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        with pytest.raises(OSError):
            probe.connect(path)
    with pytest.raises(ProcessLookupError):
        os.kill(report["pid"], 0)


def test_the_program_gets_a_private_bus_that_is_gone_afterwards():
    env = dict(os.environ, DBUS_STARTER_ADDRESS="unix:path=/nonexistent", DBUS_STARTER_BUS_TYPE="session",
               DBUS_SESSION_BUS_PID="1")
    result = run("--", sys.executable, "-c", PROBE, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["address"].startswith("unix:")
    assert "org.freedesktop.DBus" in report["names"]
    assert report["program"].startswith("python")  # busd, not a dbus-daemon found elsewhere
    assert report["stale"] == []  # variables about some other bus are not passed on
    assert_bus_gone(report)


@pytest.mark.parametrize("script, status", [
    ("exit 0", 0), ("exit 7", 7), ("exit 255", 255), ("kill -TERM $$", 128 + 15), ("kill -KILL $$", 128 + 9),
])
def test_the_exit_status_is_the_programs(script, status):
    assert run("/bin/sh", "-c", script).returncode == status


def test_options_after_the_program_are_the_programs():
    result = run("/bin/sh", "-c", 'printf "%s\\n" "$@"', "sh", "--config-file=not-ours", "--", "-x")
    assert (result.returncode, result.stdout) == (0, "--config-file=not-ours\n--\n-x\n")


def test_a_config_file_chooses_the_bus(tmp_path):
    socket_path = os.path.join(str(tmp_path), "bus")
    config = tmp_path / "bus.conf"
    config.write_text(f"""<busconfig>
      <type>session</type>
      <listen>unix:path={socket_path}</listen>
      <auth>EXTERNAL</auth>
      <policy context="default"><allow send_destination="*"/><allow receive_sender="*"/><allow own="*"/></policy>
    </busconfig>""")
    result = run(f"--config-file={config}", sys.executable, "-c", PROBE)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert socket_path_of(report["address"]) == socket_path
    assert_bus_gone(report)
    assert not os.path.exists(socket_path)


def test_dbus_daemon_can_be_run_instead():
    result = run("--dbus-daemon=dbus-daemon", sys.executable, "-c", PROBE)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["program"] == "dbus-daemon"
    assert_bus_gone(report)


@pytest.mark.parametrize("args, status, message", [
    ((), 127, "busd-run-session: a non-option argument is required\n"),
    (("--bogus", "true"), 127, "busd-run-session: option '--bogus' is unknown\n"),
    (("--config-file",), 127, "busd-run-session: --config-file requires an argument\n"),
    (("/nonexistent/program",), 1, "busd-run-session: failed to exec '/nonexistent/program': No such file or directory\n"),
])
def test_usage_errors(args, status, message):
    result = run(*args)
    assert (result.returncode, result.stderr) == (status, message)


def test_a_bus_that_cannot_start_is_reported(tmp_path):
    result = run(f"--config-file={tmp_path / 'missing.conf'}", "true")
    assert result.returncode == 127
    assert result.stderr.splitlines()[-1] == "busd-run-session: EOF reading address from bus daemon"


def test_the_console_script_is_installed():
    script = shutil.which("busd-run-session")
    if script is None:
        pytest.skip("busd is not installed (pip install -e .)")
    result = subprocess.run([script, "/bin/sh", "-c", 'test -n "$DBUS_SESSION_BUS_ADDRESS" && exit 3'],
                            capture_output=True, timeout=60)
    assert result.returncode == 3


# ------------------------------------------------------------ the pytest plugin

INNER_TESTS = textwrap.dedent("""
    import asyncio, json, os, sys

    def test_sync(busd_session):
        assert os.environ["DBUS_SESSION_BUS_ADDRESS"] == busd_session.address
        names = busd_session.bus.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                      "ListNames")
        assert busd_session.bus.unique_name in names
        busd_session.add_service("dev.busd.Test.Plugin", [sys.executable, {script!r}, "dev.busd.Test.Plugin"])
        assert busd_session.bus.call("dev.busd.Test.Plugin", "/", "dev.busd.Test.Activatable", "Echo",
                                     "activated") == "activated"
        with open({record!r}, "w") as f:
            json.dump({{"address": busd_session.address}}, f)

    def test_async(busd_session):
        async def main():
            bus = await busd_session.connect()
            try:
                return await bus.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                      "GetId")
            finally:
                await bus.close()
        assert len(asyncio.run(main())) == 32
""")


def _plugin_registered() -> bool:
    return any(entry.value == "busd.testing.pytest_plugin" for entry in importlib.metadata.entry_points(group="pytest11"))


def test_the_fixture_gives_a_test_its_own_bus(tmp_path):
    record = str(tmp_path / "record.json")
    (tmp_path / "test_inner.py").write_text(INNER_TESTS.format(script=SERVICE_SCRIPT, record=record))
    plugin = [] if _plugin_registered() else ["-p", "busd.testing.pytest_plugin"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBUS_")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, "test_inner.py"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    with open(record) as f:
        address = json.load(f)["address"]
    assert not os.path.exists(socket_path_of(address))  # the bus went away with the test
