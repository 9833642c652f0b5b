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
import re
import shutil
import signal
import subprocess
import sys

import pytest

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


def run_tap(program: str, daemon: str, tmp_path) -> tuple[int, list[str], list[str], str]:
    env = dict(os.environ, DBUS_TEST_DAEMON=daemon, DBUS_TEST_EXEC=TESTS_DIR,
               DBUS_TEST_DATA=os.path.join(TESTS_DIR, "data"), TMPDIR=str(tmp_path))
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    result = subprocess.run([os.path.join(TESTS_DIR, program), "--tap"], env=env, cwd=str(tmp_path),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=240)
    out = result.stdout
    plan = re.search(r"^1\.\.(\d+)", out, re.M)
    passed = re.findall(r"^ok \d+ (\S+)", out, re.M)
    failed = re.findall(r"^not ok \d+ (\S+)", out, re.M)
    return (int(plan.group(1)) if plan else -1), passed, failed, out


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
        planned, passed, failed, out = run_tap(program, daemon, tmp_path)
    finally:
        stop_forked_daemons(tmp_path)
    bail = re.search(r"^Bail out!.*$", out, re.M)
    assert not failed and not bail, (bail.group(0) if bail else f"failed: {failed}") + "\n" + out[-3000:]
    assert planned > 0 and len(passed) == planned, f"{len(passed)} of {planned} ran\n{out[-3000:]}"
