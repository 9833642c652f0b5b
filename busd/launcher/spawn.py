"""Spawned services: their output logged line by line, their exit noticed and the process reaped."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import Any, Callable, Mapping

output_log = logging.getLogger("busd.service")


class ServiceProcess:
    """A spawned service: its output logged line by line, its exit noticed and the process reaped.

    Output goes to the "busd.service" logger, stdout at INFO and stderr at
    WARNING, each line prefixed with the bus name and pid.
    """

    MAX_LINE = 64 * 1024

    def __init__(self, loop: Any, service_name: str, argv: list[str], env: Mapping[str, str],
                 exited: Callable[["ServiceProcess"], None], **popen_args: Any):
        self.loop = loop
        self.service_name = service_name
        self.exited = exited
        self.returncode: int | None = None
        program = argv[0] if "/" in argv[0] else "./" + argv[0]  # no $PATH search, as dbus-daemon
        self.popen = subprocess.Popen(argv, executable=program, env=dict(env), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
                                      **popen_args)
        self.pid = self.popen.pid
        self._pending_output: dict[int, bytearray] = {}
        self._levels: dict[int, int] = {}
        self._pipes: dict[int, Any] = {}  # the Popen's file objects own the fds: they close them
        for pipe, level in ((self.popen.stdout, logging.INFO), (self.popen.stderr, logging.WARNING)):
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            self._pending_output[fd] = bytearray()
            self._levels[fd] = level
            self._pipes[fd] = pipe
            loop.add_reader(fd, self._on_output, fd)
        self._pidfd: int | None = None
        self._poll: Any = None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._poll = loop.call_later(0.1, self._on_poll)
        else:
            loop.add_reader(self._pidfd, self._on_exit)

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _on_output(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._on_output_eof(fd)
            return
        self._pending_output[fd] += data
        self._log_lines(fd, final=False)

    def _log_lines(self, fd: int, final: bool) -> None:
        buffer = self._pending_output[fd]
        level = self._levels[fd]
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if (final and buffer) or len(buffer) >= self.MAX_LINE:
                    end = len(buffer)
                else:
                    return
            line = bytes(buffer[:end]).decode("utf-8", "replace").rstrip("\r")
            del buffer[:end + 1]
            output_log.log(level, "%s[%d]: %s", self.service_name, self.pid, line)

    def _drain_output(self) -> None:
        for fd in list(self._pending_output):
            while fd in self._pending_output:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if data:
                    self._pending_output[fd] += data
                    self._log_lines(fd, final=False)
                else:
                    self._on_output_eof(fd)

    def _on_output_eof(self, fd: int) -> None:
        self._log_lines(fd, final=True)
        self.loop.remove_reader(fd)
        self._pipes.pop(fd).close()
        del self._pending_output[fd]

    def _on_exit(self) -> None:
        returncode = self.popen.poll()
        if returncode is None:
            return
        self.loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self._exited(returncode)

    def _on_poll(self) -> None:
        returncode = self.popen.poll()
        if returncode is None:
            self._poll = self.loop.call_later(0.1, self._on_poll)
            return
        self._poll = None
        self._exited(returncode)

    def _exited(self, returncode: int) -> None:
        self.returncode = returncode
        self._drain_output()  # what it wrote last comes before the news of its exit
        self.exited(self)

    def detach(self) -> None:
        """Stop watching (the daemon is exiting); the process itself is left alone, as dbus-daemon does."""
        for fd in list(self._pending_output):
            self.loop.remove_reader(fd)
        if self._pidfd is not None:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._poll is not None:
            self._poll.cancel()


def describe_exit(returncode: int) -> str:
    return f"received signal {-returncode}" if returncode < 0 else f"exited with status {returncode}"


__all__ = ["ServiceProcess", "describe_exit"]
