"""Run another project's installed test program (TAP output) and read its verdict.

The installed tests of libdbus and GLib print TAP: a plan (`1..N`), one `ok` or
`not ok` line per subtest, and `Bail out!` when the program aborts. They also start
bus daemons and helper processes that can outlive a program that crashed (GLib's
GTestDBus watcher keeps the daemon it spawned), so each program runs in its own
process group and anything left in that group is stopped afterwards.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TapResult:
    """What one run of a TAP test program reported."""

    returncode: int
    planned: int
    passed: list[str]
    failed: list[str]
    bail_out: str | None
    output: str

    def problems(self) -> str | None:
        """Why this run does not count as a full pass, or None if it does."""
        if self.bail_out:
            return self.bail_out
        if self.failed:
            return f"failed: {self.failed}"
        if self.planned <= 0 or len(self.passed) != self.planned:
            return f"{len(self.passed)} of {self.planned} subtests passed"
        if self.returncode != 0:
            return f"exit status {self.returncode}"
        return None


# The daemons a program starts share its output file and write their log prefix
# ("dbus-daemon[4008]: ") apart from the rest of the line, so a TAP line can land
# just after such a prefix.
_DAEMON_PREFIX = r"^(?:[\w.-]+\[\d+\]: )?"


def parse_tap(returncode: int, output: str) -> TapResult:
    plan = re.search(_DAEMON_PREFIX + r"1\.\.(\d+)\s*$", output, re.MULTILINE)
    bail = re.search(r"^Bail out!.*$", output, re.MULTILINE)
    return TapResult(returncode=returncode,
                     planned=int(plan.group(1)) if plan else -1,
                     passed=re.findall(_DAEMON_PREFIX + r"ok \d+ (\S+)", output, re.MULTILINE),
                     failed=re.findall(_DAEMON_PREFIX + r"not ok \d+ (\S+)", output, re.MULTILINE),
                     bail_out=bail.group(0) if bail else None,
                     output=output)


# Below pytest-timeout's 120 s, so a hung program is reported with its output so far.
PROGRAM_TIMEOUT = 100.0


def run_tap_program(argv: list[str], env: dict[str, str], workdir: Path,
                    timeout: float = PROGRAM_TIMEOUT) -> TapResult:
    """Run `argv` in `workdir`, its output going to a file (a pipe would stay open as
    long as any leftover daemon holds it), then stop whatever it left behind."""
    output_path = workdir / "tap-output.txt"
    timed_out = False
    with open(output_path, "w") as output:
        process = subprocess.Popen(argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            stop_process_group(process.pid)
            process.wait()
    result = parse_tap(process.returncode if timed_out else returncode, output_path.read_text(errors="replace"))
    if timed_out:
        result.bail_out = f"timed out after {timeout:.0f} s (the program hung; its output so far follows)"
    return result


def live_group_members(pgid: int) -> list[int]:
    """Processes still running in process group `pgid` (zombies excluded: an init
    that does not reap them would otherwise keep the group alive forever)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, pgrp, ...
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry))
    return members


def stop_process_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM every process left in the group (daemons then remove their sockets),
    wait for each to exit, and SIGKILL the group if some have not after `grace` seconds."""
    pidfds = []
    for pid in live_group_members(pgid):
        try:
            pidfds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            pass
    if not pidfds:
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        # A pidfd becomes readable when its process exits.
        exited = all(select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0] for fd in pidfds)
        if not exited:
            os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        for fd in pidfds:
            os.close(fd)
