"""busd-run-session: run a program on a private busd session bus that lives exactly as long as the program.

    busd-run-session [--config-file=FILE] [--dbus-daemon=BINARY] [--] PROGRAM [ARGUMENTS...]

Like dbus-run-session: the bus is started (busd --session, or the given
configuration), DBUS_SESSION_BUS_ADDRESS is set for PROGRAM, PROGRAM's exit
status becomes ours (128+N when it is killed by signal N) and the bus is
stopped when PROGRAM exits. Exit status 127 means the bus could not be
started or the command line was wrong; 1 means PROGRAM could not be run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

from .. import __version__

USAGE = """\
busd-run-session [OPTIONS] [--] PROGRAM [ARGUMENTS]
busd-run-session --version
busd-run-session --help

Run PROGRAM with a private session bus (busd) that stops when PROGRAM exits.

Options:
--config-file=FILENAME     pass to the bus daemon instead of --session
--dbus-daemon=BINARY       run BINARY (e.g. dbus-daemon) instead of busd
"""

EXIT_SETUP_FAILED = 127  # as dbus-run-session: bad command line, or no bus
EXIT_EXEC_FAILED = 1
STOP_TIMEOUT = 5.0  # seconds the bus gets to exit after SIGTERM
# Variables that describe some other bus, or a bus that started us: not this program's business.
STALE_VARIABLES = ("DBUS_SESSION_BUS_PID", "DBUS_SESSION_BUS_WINDOWID", "DBUS_STARTER_ADDRESS",
                   "DBUS_STARTER_BUS_TYPE")


class BusStartError(Exception):
    """The private bus did not come up; str() says why."""


@dataclass
class PrivateBus:
    """A bus daemon started for one program or one test."""

    address: str
    process: subprocess.Popen
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default: os.environ) with this bus as the session bus and stale bus variables removed."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in STALE_VARIABLES}
        env["DBUS_SESSION_BUS_ADDRESS"] = self.address
        return env

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the bus is still there after STOP_TIMEOUT; then run the cleanups (always)."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            for step in self.cleanup:
                step()
            self.cleanup.clear()

    def __enter__(self) -> PrivateBus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def bus_command(config_file: str | None = None, daemon: str | None = None) -> list[str]:
    """The daemon's command line, without --print-address."""
    program = [daemon] if daemon else [sys.executable, "-m", "busd"]
    config = [f"--config-file={config_file}"] if config_file else ["--session"]
    return [*program, *config, "--nofork", "--nopidfile"]


def start_private_bus(config_file: str | None = None, daemon: str | None = None,
                      env: Mapping[str, str] | None = None) -> PrivateBus:
    """Start a bus daemon in its own session and wait until it prints its address."""
    read_fd, write_fd = os.pipe()
    command = bus_command(config_file, daemon) + [f"--print-address={write_fd}"]
    try:
        # Its own session: a Ctrl-C meant for the program must not take the bus away from under it.
        process = subprocess.Popen(command, pass_fds=(write_fd,), stdin=subprocess.DEVNULL,
                                   env=None if env is None else dict(env), start_new_session=True)
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise BusStartError(f"cannot run {command[0]}: {exc.strerror}") from None
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        address = reader.readline().decode(errors="replace").strip()
    if not address:
        process.wait()
        raise BusStartError("EOF reading address from bus daemon")
    return PrivateBus(address, process)


def exit_status(returncode: int) -> int:
    """A shell's view of how a process ended: its status, or 128+N for signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _parse(argv: Sequence[str]) -> tuple[dict[str, str], list[str]] | int:
    """(options, program and arguments), or an exit status after printing help, version or an error."""
    options: dict[str, str] = {}
    valued = ("--config-file", "--dbus-daemon")
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        if arg == "--help":
            sys.stdout.write(USAGE)
            return 0
        if arg == "--version":
            sys.stdout.write(f"busd-run-session {__version__}\n")
            return 0
        name, has_value, value = arg.partition("=")
        if name not in valued:
            sys.stderr.write(f"busd-run-session: option '{arg}' is unknown\n")
            return EXIT_SETUP_FAILED
        if not has_value:
            if i + 1 >= len(argv):
                sys.stderr.write(f"busd-run-session: {name} requires an argument\n")
                return EXIT_SETUP_FAILED
            i += 1
            value = argv[i]
        if name in options:
            sys.stderr.write(f"busd-run-session: multiple {name} options given\n")
            return EXIT_SETUP_FAILED
        options[name] = value
        i += 1
    program = list(argv[i:])
    if not program:
        sys.stderr.write("busd-run-session: a non-option argument is required\n")
        return EXIT_SETUP_FAILED
    return options, program


@contextmanager
def _signals_forwarded_to(child: subprocess.Popen) -> Iterator[None]:
    """SIGTERM and SIGHUP go on to the program; SIGINT is left to it (a terminal sends it there too)."""
    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)
    handlers = {signal.SIGTERM: forward, signal.SIGHUP: forward, signal.SIGINT: signal.SIG_IGN}
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parsed = _parse(sys.argv[1:] if argv is None else argv)
    if isinstance(parsed, int):
        return parsed
    options, program = parsed
    daemon = options.get("--dbus-daemon")
    if daemon and os.path.sep not in daemon:
        daemon = shutil.which(daemon) or daemon
    try:
        bus = start_private_bus(options.get("--config-file"), daemon)
    except BusStartError as exc:
        sys.stderr.write(f"busd-run-session: {exc}\n")
        return EXIT_SETUP_FAILED
    with bus:
        try:
            child = subprocess.Popen(program, env=bus.environ())
        except OSError as exc:
            sys.stderr.write(f"busd-run-session: failed to exec '{program[0]}': {exc.strerror}\n")
            return EXIT_EXEC_FAILED
        with _signals_forwarded_to(child):
            returncode = child.wait()
    return exit_status(returncode)


if __name__ == "__main__":
    sys.exit(main())
