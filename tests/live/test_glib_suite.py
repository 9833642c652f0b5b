"""GLib's own D-Bus tests (Debian's libglib2.0-tests package), run against busd.

GLib's gdbus, GApplication, GMenuModel, GAction and GNotification tests start a
private bus through GTestDBus, which runs `dbus-daemon` from PATH with dbus-daemon's
flags (--config-file=FILE --print-address=FD); its memory and power-profile monitor
tests start a system and a session bus through python-dbusmock (`dbus-daemon --fork
...`) and talk to a mocked service and the real xdg-desktop-portal over them.
tests/shims/dbus-daemon stands in for dbus-daemon and runs busd with the same
arguments, recording each start in a log that shows busd served the buses. Each
program prints TAP; every subtest it plans must pass, on busd and on dbus-daemon
(the reference, run the same way without the shim).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from buses import busd_available
from installed_tests import run_tap_program

TESTS_DIR = Path("/usr/libexec/installed-tests/glib")
SHIM_DIR = Path(__file__).resolve().parents[1] / "shims"
SHIM_STARTED_BUSD = "dbus-daemon shim: running busd"

# The programs that start a bus. Left out: those that never do, so test nothing of a
# bus (gdbus-peer, gdbus-overflow, gdbus-close-pending, gdbus-auth, gdbus-server-auth,
# gdbus-connection-flush, gdbus-message, gdbus-error, gdbus-address-get-session, ...),
# and gdbus-threading, which GLib itself skips whole as unreliable (glib#1515).
PROGRAMS = [
    "gdbus-bz627724", "gdbus-connection", "gdbus-connection-loss", "gdbus-connection-slow",
    "gdbus-exit-on-close", "gdbus-export", "gdbus-introspection", "gdbus-method-invocation",
    "gdbus-names", "gdbus-proxy", "gdbus-proxy-threads", "gdbus-proxy-unique-name",
    "gdbus-proxy-well-known-name", "gdbus-subscribe", "gdbus-test-codegen",
    "gdbus-test-codegen-min-required-2-64", "gdbus-test-codegen-old",
    "actions", "dbus-appinfo", "debugcontroller", "defaultvalue", "fdo-notification-backend",
    "gmenumodel", "gnotification",
]
# Python unittest programs (TAP without asking) that start their buses with dbusmock.
# memory-monitor-dbus.py is left out: Debian skips its only test (bugs.debian.org/995178).
DBUSMOCK_PROGRAMS = ["power-profile-monitor-dbus.py", "memory-monitor-portal.py", "power-profile-monitor-portal.py"]
# The portal tests run the real portal, which the package only recommends.
PORTAL = Path("/usr/libexec/xdg-desktop-portal")

# GLib 2.74's /gapplication/no-replace arms g_timeout_add_seconds(1, quit_already, app),
# never removes it and frees the app (later GLib keeps the source id and removes it).
# The stale timer fires 0.75-1.75 s after it was armed, in whichever test is then
# running a main loop, and g_application_quit() on the freed app aborts the program.
# On dbus-daemon (5 ms to start a bus) the program is over 0.55 s after the timer is
# armed, so it never fires; the four tests that follow start four buses, which take
# busd 0.3 s each, and dbus-daemon delayed by 0.3 s fails the same way every run. Run
# in a process of its own, that subtest's timer dies with it.
GAPPLICATION_RUNS = [
    pytest.param("gapplication", ["--tap", "-s", "/gapplication/no-replace"], id="gapplication"),
    pytest.param("gapplication", ["--tap", "-p", "/gapplication/no-replace"], id="gapplication-no-replace"),
]
RUNS = ([pytest.param(program, ["--tap"], id=program) for program in PROGRAMS]
        + [pytest.param(program, [], id=program) for program in DBUSMOCK_PROGRAMS]
        + GAPPLICATION_RUNS)

pytestmark = pytest.mark.skipif(not TESTS_DIR.is_dir(),
                                reason="GLib's installed tests are missing: apt-get install libglib2.0-tests")


def daemon_environment(daemon: str, busd_log: Path, workdir: Path) -> dict[str, str]:
    """The environment under which a GLib test's `dbus-daemon` is `daemon`."""
    env = dict(os.environ, TMPDIR=str(workdir))
    # GTestDBus prefers G_TEST_DBUS_DAEMON to PATH; the rest would point at another bus.
    for name in ("G_TEST_DBUS_DAEMON", "DBUS_SESSION_BUS_ADDRESS", "DBUS_STARTER_ADDRESS",
                 "DBUS_STARTER_BUS_TYPE", "DISPLAY"):
        env.pop(name, None)
    if daemon == "busd":
        if not busd_available():
            pytest.skip("busd is not installed (pip install -e .)")
        env.update(PATH=f"{SHIM_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
                   BUSD_PYTHON=sys.executable, BUSD_SHIM_LOG=str(busd_log))
    return env


@pytest.mark.parametrize("daemon", ["busd", "dbus-daemon"])
@pytest.mark.parametrize("program, args", RUNS)
def test_glib_dbus_tests_pass(daemon, program, args, tmp_path):
    if "portal" in program and not PORTAL.exists():
        pytest.skip("xdg-desktop-portal is missing: apt-get install xdg-desktop-portal")
    busd_log = tmp_path / "busd.log"
    result = run_tap_program([str(TESTS_DIR / program), *args],
                             daemon_environment(daemon, busd_log, tmp_path), tmp_path)
    log = busd_log.read_text(errors="replace") if busd_log.exists() else ""
    problem = result.problems()
    assert problem is None, f"{problem}\n{result.output[-3000:]}\n--- busd log ---\n{log[-2000:]}"
    if daemon == "busd":
        assert SHIM_STARTED_BUSD in log, f"no bus was started through the shim\n{result.output[-3000:]}"
        assert "Traceback" not in log, f"busd crashed\n{log[-3000:]}"
