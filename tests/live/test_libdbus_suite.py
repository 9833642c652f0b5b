"""libdbus's own bus tests (Debian's dbus-tests package), run against busd.

The reference implementation's installed tests start a bus daemon named by
DBUS_TEST_DAEMON, drive it with libdbus and GLib clients and check dbus-daemon's
exact behaviour: driver methods, limits, monitors, eavesdropping, fd passing,
header filtering, corrupt input, systemd activation and more. Each test program
prints TAP; every subtest it plans must pass on busd (as all pass on dbus-daemon).
test-dbus-daemon-fork.sh is a shell script that prints TAP too but stops at the
first failure (set -e), leaving that run's forked daemon behind: the test stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys

import pytest

from installed_tests import run_tap_program

TESTS_DIR = "/usr/lib/dbus-1.0/installed-tests/dbus"
PROGRAMS = [
    "test-dbus-daemon", "test-dbus-daemon-eavesdrop", "test-monitor", "test-fdpass", "test-header-fields",
    "test-corrupt", "test-relay", "test-sd-activation", "test-containers", "test-uid-permissions",
    "test-dbus-daemon-fork.sh",
]
# Spawns the daemon as other users, which must then be able to run it: not so for a
# busd installed under a home directory only root can enter (as pyenv's is here).
NEEDS_WORLD_EXECUTABLE_BUSD = {"test-uid-permissions"}

pytestmark = pytest.mark.skipif(not os.path.isdir(TESTS_DIR),
                                reason="libdbus's installed tests are missing: apt-get install dbus-tests")


def busd_command() -> str:
    """An executable that runs busd (the test programs exec DBUS_TEST_DAEMON with dbus-daemon's flags)."""
    found = shutil.which("busd")
    if found:
        return found
    pytest.skip("the busd command is not installed (pip install -e .)")


def reachable_by_everyone(path: str) -> bool:
    """Whether every directory on the way to `path` (and the interpreter) lets other users through."""
    for target in (os.path.realpath(path), os.path.realpath(sys.executable)):
        directory = os.path.dirname(target)
        while directory not in ("/", ""):
            if not os.stat(directory).st_mode & 0o001:
                return False
            directory = os.path.dirname(directory)
    return True


def daemon_environment(daemon: str, tmp_path) -> dict[str, str]:
    """The environment under which libdbus's test programs start `daemon` as their bus."""
    env = dict(os.environ, DBUS_TEST_DAEMON=daemon, DBUS_TEST_EXEC=TESTS_DIR,
               DBUS_TEST_DATA=os.path.join(TESTS_DIR, "data"), TMPDIR=str(tmp_path))
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    return env


def stop_forked_daemons(tmp_path) -> None:
    """SIGTERM the daemons whose pids test-dbus-daemon-fork.sh wrote under tmp_path and did not kill."""
    for pid_file in tmp_path.glob("*/pid"):
        text = pid_file.read_text().strip()
        if not text.isdigit():
            continue
        try:
            with open(f"/proc/{text}/cmdline", "rb") as f:
                is_busd = b"busd" in f.read()
        except OSError:
            continue  # already gone
        if is_busd:
            os.kill(int(text), signal.SIGTERM)


@pytest.mark.parametrize("program", PROGRAMS)
def test_libdbus_bus_tests_pass_on_busd(program, tmp_path):
    daemon = busd_command()
    if program in NEEDS_WORLD_EXECUTABLE_BUSD and not reachable_by_everyone(daemon):
        pytest.skip(f"{program} runs the daemon as other users, who cannot reach {daemon}")
    try:
        result = run_tap_program([os.path.join(TESTS_DIR, program), "--tap"], daemon_environment(daemon, tmp_path),
                                 tmp_path)
    finally:
        stop_forked_daemons(tmp_path)  # --fork leaves the program's process group
    problem = result.problems()
    assert problem is None, f"{problem}\n{result.output[-3000:]}"
