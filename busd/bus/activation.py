"""Service activation: .service files, starting services on demand, and holding their messages meanwhile.

Theory. A `ServiceCatalog` maps bus names to the `.service` files of the
configured service directories, re-reading only files whose stat changed.
A message to an activatable name nobody owns opens a `PendingStart` for that
name: the service is spawned (or systemd is asked to start its unit) and the
message, and every later one for the name, is held in arrival order. When a
connection acquires the name, each held message is handed back to
`Bus.receive()`, so it takes the ordinary path (policy, reply tracking,
monitors) as if it had just arrived. When the start fails, every held caller
gets the error dbus-daemon would send. Rules and error texts follow
dbus-daemon's bus/activation.c and bus/desktop-file.c.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import signal
import stat
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from ..config.model import ServiceDir
from ..wire.message import METHOD_CALL, NO_REPLY_EXPECTED, SIGNAL, Header, build_message, read_body
from ..wire.names import is_valid_bus_name, is_valid_error_name
from ..wire.wellknown import DRIVER_NAME, DRIVER_PATH
from . import errors
from .core import _close
from .ownership import NameEvent

if TYPE_CHECKING:
    from .core import Bus, Peer

log = logging.getLogger("busd.activation")
output_log = logging.getLogger("busd.service")

SERVICE_SECTION = "D-BUS Service"
SYSTEMD_NAME = "org.freedesktop.systemd1"
SYSTEMD_ACTIVATOR = "org.freedesktop.systemd1.Activator"


MAX_SERVICE_FILE_SIZE = 128 * 1024  # dbus-daemon refuses bigger desktop files
STAT_RETRY_SECONDS = 2.0  # polling period when inotify is unavailable
WATCH_SETTLE_SECONDS = 0.05  # one rescan for a burst of directory events

# The launch helper's exit codes (dbus-daemon's activation-exit-codes.h) and what the caller sees.
SERVICEHELPER_EXIT_ERRORS: dict[int, tuple[str, str]] = {
    2: (errors.NO_MEMORY, "Launcher could not run (out of memory)"),
    3: (errors.SPAWN_CONFIG_INVALID, "Invalid configuration (missing or empty <user>?)"),
    4: (errors.SPAWN_SETUP_FAILED, "Failed to setup environment correctly"),
    5: (errors.SPAWN_SERVICE_INVALID, "Bus name is not valid or missing"),
    6: (errors.SPAWN_SERVICE_NOT_FOUND, "Bus name not found in system service directory"),
    7: (errors.SPAWN_PERMISSIONS_INVALID, "The permission of the setuid helper is not correct"),
    8: (errors.SPAWN_PERMISSIONS_INVALID, "The service file is incorrect or does not have all required attributes"),
    9: (errors.SPAWN_EXEC_FAILED, "Cannot launch daemon, file not found or permissions invalid"),
    10: (errors.INVALID_ARGS, "Invalid arguments to command line"),
    11: (errors.SPAWN_CHILD_SIGNALED, "Launched child was signaled, it probably crashed"),
}

# Variables systemd sets for the daemon itself, not for the services it starts (as dbus-daemon drops them).
DAEMON_ONLY_VARIABLES = ("JOURNAL_STREAM", "LISTEN_FDNAMES", "LISTEN_FDS", "LISTEN_PID", "NOTIFY_SOCKET",
                         "INVOCATION_ID", "WATCHDOG_USEC", "WATCHDOG_PID")
BUS_ADDRESS_VARIABLES = {"session": "DBUS_SESSION_BUS_ADDRESS", "system": "DBUS_SYSTEM_BUS_ADDRESS"}


class ActivationError(Exception):
    """A start that cannot go on: `name` is the D-Bus error every held caller receives."""

    def __init__(self, name: str, text: str):
        super().__init__(text)
        self.name = name
        self.text = text


# ------------------------------------------------------------ .service files

class ServiceFileError(Exception):
    """A .service file that is skipped; str() is the reason."""


@dataclass(frozen=True)
class ServiceFile:
    """One activatable name, as a .service file describes it."""

    name: str
    exec: str
    path: str
    user: str | None = None
    systemd_service: str | None = None
    stat_key: tuple[int, ...] = ()


_KEY_RE = re.compile(r"[A-Za-z0-9-]+")
_LINE_END_RE = re.compile(r"\r\n|\r|\n")
_VALUE_ESCAPES = {"s": " ", "t": "\t", "n": "\n", "r": "\r", "\\": "\\"}


def parse_desktop_file(text: str) -> dict[str, dict[str, str]]:
    """Sections of a desktop-entry style file: the first section and key of each name win, as in dbus-daemon."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for number, line in enumerate(_LINE_END_RE.split(text), 1):
        if not line.strip(" \t\r\f") or line.startswith("#"):
            continue
        if line.startswith("["):
            if len(line) <= 2 or not line.endswith("]"):
                raise ServiceFileError(f"line {number}: invalid syntax for section header")
            section = line[1:-1]
            if any(ord(c) < 0x20 or ord(c) > 0x7E or c in "[]" for c in section):
                raise ServiceFileError(f"line {number}: invalid characters in section name")
            if section in sections:
                current = {}  # a repeated section: only the first one is read, as in dbus-daemon
            else:
                current = sections[section] = {}
            continue
        if current is None:
            raise ServiceFileError(f"line {number}: key=value before [Section]")
        key_match = _KEY_RE.match(line)
        if key_match is None:
            raise ServiceFileError(f"line {number}: empty key name")
        key = key_match.group()
        rest = line[key_match.end():]
        if rest.startswith("["):
            continue  # a localized key: ignored, as dbus-daemon does
        rest = rest.lstrip(" ")
        if not rest:
            raise ServiceFileError(f"line {number}: no '=' in key/value pair")
        if rest[0] != "=":
            raise ServiceFileError(f"line {number}: invalid characters in key name")
        current.setdefault(key, _unescape_value(rest[1:].lstrip(" "), number))
    return sections


def _unescape_value(raw: str, number: int) -> str:
    if "\0" in raw:
        raise ServiceFileError(f"line {number}: value contains a NUL byte")
    if "\\" not in raw:
        return raw
    out = []
    chars = iter(raw)
    for c in chars:
        if c != "\\":
            out.append(c)
            continue
        escaped = next(chars, None)
        if escaped is None:
            raise ServiceFileError(f"line {number}: value ends in a backslash")
        if escaped not in _VALUE_ESCAPES:
            raise ServiceFileError(f"line {number}: invalid escape sequence \\{escaped}")
        out.append(_VALUE_ESCAPES[escaped])
    return "".join(out)


def read_service_file(path: str, strict_naming: bool = False) -> ServiceFile:
    """Parse one .service file; raise ServiceFileError saying why it cannot be used."""
    try:
        st = os.stat(path)
        if st.st_size > MAX_SERVICE_FILE_SIZE:
            raise ServiceFileError(f"file is too large ({st.st_size} bytes, the limit is {MAX_SERVICE_FILE_SIZE})")
        with open(path, "rb") as f:
            data = f.read(MAX_SERVICE_FILE_SIZE + 1)
    except OSError as exc:
        raise ServiceFileError(f"cannot read it: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ServiceFileError("not valid UTF-8") from None
    section = parse_desktop_file(text).get(SERVICE_SECTION)
    if section is None:
        raise ServiceFileError(f"no [{SERVICE_SECTION}] section")
    name = section.get("Name")
    if name is None:
        raise ServiceFileError('no "Name" key')
    if not is_valid_bus_name(name):
        raise ServiceFileError(f'"{name}" is not a valid bus name')
    if name.startswith(":"):
        raise ServiceFileError(f'bus name "{name}" cannot be activatable because it starts with \':\'')
    if name == DRIVER_NAME:
        raise ServiceFileError(f'bus name "{name}" cannot be activatable because it is reserved for the message bus')
    command = section.get("Exec")
    if command is None:
        raise ServiceFileError('no "Exec" key')
    expected = name + ".service"
    if strict_naming and os.path.basename(path) != expected:
        raise ServiceFileError(f'it should have been named "{expected}" (files in this directory must be)')
    return ServiceFile(name=name, exec=command, path=path, user=section.get("User"),
                       systemd_service=section.get("SystemdService"), stat_key=_stat_key(st))


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def split_command_line(text: str) -> list[str]:
    """Split an Exec= line into argv as dbus-daemon does: shell quoting and comments, no expansion.

    Single quotes keep everything literally; double quotes let a backslash escape
    only " \\ ` $ and newline; an unquoted backslash escapes any character; an
    unquoted # starts a comment up to the end of the line. Raises ActivationError
    (InvalidArgs) for an unclosed quote.
    """
    args: list[str] = []
    word: list[str] = []
    in_word = False  # a quoted empty string is still a word
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\n":
            if in_word:
                args.append("".join(word))
                word, in_word = [], False
            i += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c == "\\":
            if i + 1 >= n:
                raise ActivationError(errors.INVALID_ARGS, "Unclosed quotes in command line")
            if text[i + 1] != "\n":
                word.append(text[i + 1])
                in_word = True
            i += 2
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ActivationError(errors.INVALID_ARGS, "Unclosed quotes in command line")
            word.append(text[i + 1:end])
            in_word = True
            i = end + 1
        elif c == '"':
            in_word = True
            i += 1
            while True:
                if i >= n:
                    raise ActivationError(errors.INVALID_ARGS, "Unclosed quotes in command line")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and text[i + 1] in '"\\`$\n':
                    word.append(text[i + 1])
                    i += 2
                    continue
                word.append(c)
                i += 1
        else:
            word.append(c)
            in_word = True
            i += 1
    if in_word:
        args.append("".join(word))
    return args


class ServiceCatalog:
    """The activatable names of a list of service directories, kept in step with the files."""

    def __init__(self, dirs: Sequence[ServiceDir]):
        self.dirs = list(dirs)
        self.services: dict[str, ServiceFile] = {}
        # path -> (stat key, parsed file or None when it was malformed): a rescan re-reads changed files only
        self._files: dict[str, tuple[tuple[int, ...], ServiceFile | None]] = {}

    def names(self) -> list[str]:
        return list(self.services)

    def scan(self) -> None:
        """Re-list every directory; earlier directories win a name, then file names in sorted order."""
        services: dict[str, ServiceFile] = {}
        files: dict[str, tuple[tuple[int, ...], ServiceFile | None]] = {}
        for directory in self.dirs:
            try:
                entries = sorted(os.listdir(directory.path))
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot read service directory %s: %s", directory.path, exc.strerror)
                continue
            for filename in entries:
                if not filename.endswith(".service"):
                    continue
                path = os.path.join(directory.path, filename)
                try:
                    st = os.stat(path)
                except OSError:
                    continue  # a dangling symlink, or removed since the listing
                if not stat.S_ISREG(st.st_mode):
                    continue
                key = _stat_key(st)
                known = self._files.get(path)
                if known is not None and known[0] == key:
                    service = known[1]
                else:
                    service = self._load(path, directory)
                files[path] = (service.stat_key if service else key, service)
                if service is None:
                    continue
                if service.name in services:
                    if known is None or known[0] != key:
                        log.info("service file %s: %s is already provided by %s; ignoring this one",
                                 path, service.name, services[service.name].path)
                    continue
                services[service.name] = service
        self._files = files
        self.services = services

    def _load(self, path: str, directory: ServiceDir) -> ServiceFile | None:
        try:
            return read_service_file(path, strict_naming=directory.transient)
        except ServiceFileError as exc:
            log.warning("ignoring service file %s: %s", path, exc)
            return None

    def find(self, name: str) -> ServiceFile | None:
        """The file for `name`, rescanning when it is unknown or its file changed (as dbus-daemon does)."""
        service = self.services.get(name)
        if service is not None:
            try:
                current = _stat_key(os.stat(service.path))
            except OSError:
                current = ()
            if current == service.stat_key:
                return service
        self.scan()
        return self.services.get(name)

    def watched_paths(self) -> list[str]:
        # $XDG_RUNTIME_DIR/dbus-1/services is not watched: a miss rescans it instead.
        return [d.path for d in self.dirs if not d.transient]


# ------------------------------------------------------------ watching directories

class DirectoryWatcher:
    """Calls `changed` after files come, go or change in some directories (inotify; polling without it)."""

    IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x4, 0x8, 0x40, 0x80
    IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF, IN_ONLYDIR = 0x100, 0x200, 0x400, 0x800, 0x1000000
    MASK = (IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
            | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

    def __init__(self, loop: Any, paths: Iterable[str], changed: Callable[[], None]):
        self.loop = loop
        self.paths = [p for p in paths if os.path.isdir(p)]
        self.changed = changed
        self._settle: Any = None
        self._poll: Any = None
        self._fd = self._inotify(self.paths)
        if self._fd is not None:
            loop.add_reader(self._fd, self._on_events)
        elif self.paths:
            self._snapshot = self._listing()
            self._poll = loop.call_later(STAT_RETRY_SECONDS, self._on_poll)

    def _inotify(self, paths: list[str]) -> int | None:
        if not paths:
            return None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        add_watch = libc.inotify_add_watch
        add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        for path in paths:
            if add_watch(fd, os.fsencode(path), self.MASK) < 0:
                log.info("cannot watch service directory %s: %s", path, os.strerror(ctypes.get_errno()))
        return fd

    def _on_events(self) -> None:
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass
        except OSError as exc:
            log.warning("service directory watch failed: %s", exc)
        if self._settle is None:
            self._settle = self.loop.call_later(WATCH_SETTLE_SECONDS, self._fire)

    def _fire(self) -> None:
        self._settle = None
        self.changed()

    def _listing(self) -> dict[str, tuple[int, ...]]:
        listing = {}
        for path in self.paths:
            try:
                names = os.listdir(path)
            except OSError:
                continue
            for name in names:
                try:
                    listing[os.path.join(path, name)] = _stat_key(os.stat(os.path.join(path, name)))
                except OSError:
                    pass
        return listing

    def _on_poll(self) -> None:
        snapshot = self._listing()
        if snapshot != self._snapshot:
            self._snapshot = snapshot
            self.changed()
        self._poll = self.loop.call_later(STAT_RETRY_SECONDS, self._on_poll)

    def close(self) -> None:
        for handle in (self._settle, self._poll):
            if handle is not None:
                handle.cancel()
        if self._fd is not None:
            self.loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None


# ------------------------------------------------------------ spawned services

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


# ------------------------------------------------------------ what waits for a start

class HeldMessage:
    """A message that triggered or joined an auto-start; re-dispatched once the name has an owner."""

    __slots__ = ("peer", "buf", "h", "fds")

    def __init__(self, peer: "Peer", buf: bytes, h: Header, fds: list[int] | None):
        self.peer, self.buf, self.h, self.fds = peer, buf, h, fds

    def deliver(self, activation: "Activation") -> None:
        if self.peer.conn.closed:
            _close(self.fds)
            return
        # Monitors saw the message when it arrived; as with dbus-daemon they do not see it a second time.
        activation.bus.receive(self.peer, self.buf, self.h, self.fds, monitored=False)

    def fail(self, bus: "Bus", error: str, text: str) -> None:
        _close(self.fds)
        if not self.peer.conn.closed:
            bus.refuse(self.peer, self.h, error, text)  # monitors see it even when no reply is expected


class StartRequest:
    """A StartServiceByName call: answered SUCCESS once the name has an owner."""

    __slots__ = ("peer", "serial", "wants_reply")

    def __init__(self, peer: "Peer", h: Header):
        self.peer, self.serial, self.wants_reply = peer, h.serial, not h.no_reply_expected

    def deliver(self, activation: "Activation") -> None:
        if self.wants_reply and not self.peer.conn.closed:
            activation.bus.send_reply(self.peer, self.serial, "u", [1])  # DBUS_START_REPLY_SUCCESS

    def fail(self, bus: "Bus", error: str, text: str) -> None:
        if self.wants_reply:
            bus.send_error(self.peer, self.serial, error, text)


class SystemdRequest:
    """The bus's own request to systemd, held until systemd connects and owns its name.

    Monitors saw it when it was made (as on dbus-daemon); delivering it later does not
    show it to them again.
    """

    __slots__ = ("message",)

    def __init__(self, message: bytes):
        self.message = message

    def deliver(self, activation: "Activation") -> None:
        systemd = activation.bus.registry.owner(SYSTEMD_NAME)
        if systemd is not None and not systemd.conn.closed:
            systemd.conn.queue(self.message, b"")

    def fail(self, bus: "Bus", error: str, text: str) -> None:
        pass  # the start that asked for it has its own timeout


class PendingStart:
    """A name being started, and everything waiting for it in arrival order."""

    __slots__ = ("name", "service", "entries", "timer", "process", "systemd_unit")

    def __init__(self, name: str, service: ServiceFile | None):
        self.name = name
        self.service = service
        self.entries: list[HeldMessage | StartRequest | SystemdRequest] = []
        self.timer: Any = None
        self.process: ServiceProcess | None = None
        self.systemd_unit: str | None = None


# ------------------------------------------------------------ the activation service

class Activation:
    """Starts services for a bus: hooks into its driver, holds messages, reports failures."""

    def __init__(self, bus: "Bus", servicedirs: Sequence[ServiceDir], address: str, *,
                 systemd_activation: bool = False, servicehelper: str | None = None,
                 environ: Mapping[str, str] | None = None, watch: bool = True):
        self.bus = bus
        self.address = address
        self.systemd_activation = systemd_activation
        self.servicehelper = servicehelper
        self.environment = {k: v for k, v in (os.environ if environ is None else environ).items()
                            if k not in DAEMON_ONLY_VARIABLES}
        self.catalog = ServiceCatalog(servicedirs)
        self.pending: dict[str, PendingStart] = {}
        self.held = 0  # entries in all pending starts, against max_pending_service_starts
        self.processes: set[ServiceProcess] = set()
        self._watch = watch
        self.watcher: DirectoryWatcher | None = None
        self.catalog.scan()
        self._start_watching()

    def install(self) -> "Activation":
        """Connect to the bus's hooks: auto-start, StartServiceByName, ListActivatableNames, name changes."""
        bus = self.bus
        driver = bus.driver
        driver.activatable = self.names
        driver.is_activatable = self.is_activatable
        driver.start_service = self.auto_start
        bus.start_service_by_name = self.start_by_name
        bus.names_changed = self.names_changed
        bus.on_driver_signal = self.driver_signal
        driver.on_environment_update = self.forward_environment
        if self.systemd_activation and "SystemdActivation" not in driver.features:
            driver.features.append("SystemdActivation")
        return self

    def _start_watching(self) -> None:
        if self._watch:
            self.watcher = DirectoryWatcher(self.bus.loop, self.catalog.watched_paths(), self.directories_changed)

    def names(self) -> list[str]:
        return self.catalog.names()

    def is_activatable(self, name: str) -> bool:
        return self._find(name) is not None or self._is_systemd_itself(name)

    # ------------------------------------------------------------ configuration

    def reload(self, servicedirs: Sequence[ServiceDir], servicehelper: str | None = None) -> None:
        """ReloadConfig or SIGHUP: new directories, every file read again; pending starts carry on."""
        self.servicehelper = servicehelper
        self.catalog.dirs = list(servicedirs)
        if self.watcher is not None:
            self.watcher.close()
        self._start_watching()
        self.directories_changed()

    def directories_changed(self) -> None:
        self.catalog.scan()
        # dbus-daemon announces every reload, whether or not the names changed.
        self.bus.emit_driver_signal("ActivatableServicesChanged", "", [])

    def close(self) -> None:
        for pending in self.pending.values():
            if pending.timer is not None:
                pending.timer.cancel()
            for entry in pending.entries:
                if isinstance(entry, HeldMessage):
                    _close(entry.fds)
        self.pending.clear()
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None
        for process in self.processes:
            process.detach()
        self.processes.clear()

    # ------------------------------------------------------------ driver hooks

    def auto_start(self, peer: "Peer", h: Header, name: str, buf: bytes, fds: list[int] | None) -> bool:
        """A message to `name`, which nobody owns: hold it and start the service. False: not activatable."""
        service = self._find(name)
        if service is None and not self._is_systemd_itself(name):
            return False
        bus = self.bus
        if bus.policy.enforced:
            verdict = peer.policy.can_send(h, (name,), False, len(fds) if fds else 0)
            if not verdict.allowed:
                log.warning("policy denied auto-starting %s for %s (uid %s) by send rule %s", name,
                            peer.unique_name, peer.credentials.uid, verdict.rule or "(default deny)")
                HeldMessage(peer, buf, h, fds).fail(bus, errors.ACCESS_DENIED,
                                                    f"Rejected send message: {h.describe()} "
                                                    f"(send rule {verdict.rule or 'default deny'})")
                return True
        self._hold(name, service, HeldMessage(peer, buf, h, fds), peer)
        return True

    def start_by_name(self, peer: "Peer", h: Header, name: str) -> bool:
        """StartServiceByName for an unowned name: reply SUCCESS later, or an error. False: not activatable."""
        service = self._find(name)
        if service is None:
            return False
        self._hold(name, service, StartRequest(peer, h), peer)
        return True

    def names_changed(self, events: list[NameEvent]) -> None:
        """After RequestName/ReleaseName: a name being started got its owner."""
        for event in events:
            if event.kind == "owner_changed" and event.new_owner is not None:
                pending = self.pending.get(event.name)
                if pending is not None:
                    self._succeeded(pending)

    def driver_signal(self, peer: "Peer", buf: bytes, h: Header) -> None:
        """A signal addressed to the bus: systemd's ActivationFailure is the only one that means anything."""
        if h.interface != SYSTEMD_ACTIVATOR or h.member != "ActivationFailure":
            return
        if self.bus.registry.owner(SYSTEMD_NAME) is not peer:
            log.warning("ignoring ActivationFailure from %s (uid %s), which is not the systemd activator",
                        peer.unique_name, peer.credentials.uid)
            return
        if h.signature != "sss":
            log.warning("ignoring ActivationFailure with signature %r (expected 'sss')", h.signature)
            return
        unit, error, text = read_body(buf, h)
        if not is_valid_error_name(error):
            error = errors.SPAWN_FAILED
        log.warning("activation via systemd failed for unit '%s': %s", unit, text)
        for pending in [p for p in self.pending.values() if p.systemd_unit == unit]:
            self._fail(pending, error, text)

    # ------------------------------------------------------------ starting

    def _is_systemd_itself(self, name: str) -> bool:
        # With systemd activation, systemd needs no .service file: the bus waits for it to connect.
        return self.systemd_activation and name == SYSTEMD_NAME

    def _find(self, name: str) -> ServiceFile | None:
        return self.catalog.find(name)

    def _hold(self, name: str, service: ServiceFile | None,
              entry: HeldMessage | StartRequest | SystemdRequest, requester: "Peer | None") -> None:
        limit = self.bus.limits.max_pending_service_starts
        if self.held >= limit:
            entry.fail(self.bus, errors.LIMITS_EXCEEDED,
                       f"The maximum number of pending activations has been reached, activation of {name} "
                       f"failed (max_pending_service_starts={limit})")
            return
        self.held += 1
        pending = self.pending.get(name)
        if pending is not None:
            pending.entries.append(entry)
            return
        pending = self.pending[name] = PendingStart(name, service)
        pending.entries.append(entry)
        timeout_ms = self.bus.limits.service_start_timeout
        pending.timer = self.bus.loop.call_later(timeout_ms / 1000, self._timed_out, pending, timeout_ms)
        try:
            self._launch(pending, requester)
        except ActivationError as exc:
            self._fail(pending, exc.name, exc.text)

    def _launch(self, pending: PendingStart, requester: "Peer | None") -> None:
        name = pending.name
        service = pending.service
        who = _describe_peer(requester)
        if self.systemd_activation:
            if service is None:
                log.info("waiting for systemd to connect (%s)", name)
                return
            if service.systemd_service:
                self._ask_systemd(pending, service.systemd_service, who)
                return
        if self.servicehelper:
            if not service.user:
                # The trailing newline is dbus-daemon's, kept so the texts match byte for byte.
                raise ActivationError(errors.SPAWN_FILE_INVALID, "Cannot do system-bus activation with no user\n")
            argv = split_command_line(self.servicehelper) + [name]
            log.info("Activating service name='%s' requested by %s (using servicehelper)", name, who)
        else:
            argv = split_command_line(service.exec)
            log.info("Activating service name='%s' requested by %s", name, who)
        pending.process = self._spawn(name, argv, self._user_switch(service))

    def _user_switch(self, service: ServiceFile) -> dict[str, Any]:
        """Popen arguments that run a system service as its User=, when the bus can (it runs as root)."""
        if self.bus.bus_type != "system" or not service.user or self.servicehelper or os.geteuid() != 0:
            return {}
        import pwd
        try:
            entry = pwd.getpwnam(service.user)
        except KeyError:
            raise ActivationError(errors.SPAWN_SETUP_FAILED,
                                  f"User \"{service.user}\" named in {service.path} does not exist") from None
        return {"user": entry.pw_uid, "group": entry.pw_gid,
                "extra_groups": os.getgrouplist(service.user, entry.pw_gid)}

    def spawn_environment(self) -> dict[str, str]:
        """What an activated process sees: the daemon's environment, UpdateActivationEnvironment, the bus."""
        env = dict(self.environment)
        env.update(self.bus.driver.activation_environment)
        bus_type = self.bus.bus_type
        env["DBUS_STARTER_ADDRESS"] = self.address
        env["DBUS_STARTER_BUS_TYPE"] = bus_type
        if bus_type in BUS_ADDRESS_VARIABLES:
            env[BUS_ADDRESS_VARIABLES[bus_type]] = self.address
        return env

    def _spawn(self, name: str, argv: list[str], popen_args: dict[str, Any]) -> ServiceProcess:
        if not argv:
            raise ActivationError(errors.SPAWN_EXEC_FAILED,
                                  f"Failed to execute program {name}: No such file or directory")
        try:
            process = ServiceProcess(self.bus.loop, name, argv, self.spawn_environment(), self._process_exited,
                                     **popen_args)
        except OSError as exc:
            raise ActivationError(errors.SPAWN_EXEC_FAILED,
                                  f"Failed to execute program {name}: {exc.strerror or exc}") from None
        except subprocess.SubprocessError as exc:
            raise ActivationError(errors.SPAWN_SETUP_FAILED, f"Failed to set up {name}: {exc}") from None
        self.processes.add(process)
        log.info("started %s as pid %d: %s", name, process.pid, " ".join(argv))
        return process

    def _ask_systemd(self, pending: PendingStart, unit: str, who: str) -> None:
        pending.systemd_unit = unit
        if self.bus.registry.owner(SYSTEMD_NAME) is not None:
            log.info("Activating via systemd: service name='%s' unit='%s' requested by %s", pending.name, unit, who)
            self.send_activation_request(unit)
        else:
            log.info("Activating systemd to hand-off: service name='%s' unit='%s' requested by %s",
                     pending.name, unit, who)
            message = self._activation_request(unit)
            self.bus.send_from_driver(None, message)  # monitors see it now, systemd when it is here
            self._hold(SYSTEMD_NAME, None, SystemdRequest(message), None)

    def send_activation_request(self, unit: str) -> None:
        """org.freedesktop.systemd1.Activator.ActivationRequest(unit), a signal from the bus to systemd."""
        bus = self.bus
        systemd = bus.registry.owner(SYSTEMD_NAME)
        if systemd is None:
            return
        bus.send_from_driver(systemd, self._activation_request(unit))

    def forward_environment(self, env: dict[str, str]) -> None:
        """UpdateActivationEnvironment with systemd activation: systemd's Manager.SetEnvironment too.

        Like dbus-daemon, the call is addressed to org.freedesktop.systemd1 and waits for
        systemd to connect if it is not on the bus yet.
        """
        if not self.systemd_activation:
            return
        bus = self.bus
        systemd = bus.registry.owner(SYSTEMD_NAME)
        message = build_message(METHOD_CALL, bus.next_driver_serial(), path="/org/freedesktop/systemd1",
                                interface="org.freedesktop.systemd1.Manager", member="SetEnvironment",
                                destination=systemd.unique_name if systemd is not None else SYSTEMD_NAME,
                                sender=DRIVER_NAME, signature="as", body=[[f"{k}={v}" for k, v in env.items()]],
                                flags=NO_REPLY_EXPECTED)
        if systemd is not None:
            bus.send_from_driver(systemd, message)
        else:
            bus.send_from_driver(None, message)
            self._hold(SYSTEMD_NAME, None, SystemdRequest(message), None)

    def _activation_request(self, unit: str) -> bytes:
        return build_message(SIGNAL, self.bus.next_driver_serial(), path=DRIVER_PATH, interface=SYSTEMD_ACTIVATOR,
                             member="ActivationRequest", destination=SYSTEMD_NAME, sender=DRIVER_NAME,
                             signature="s", body=[unit])

    # ------------------------------------------------------------ outcomes

    def _finish(self, pending: PendingStart) -> None:
        if self.pending.get(pending.name) is pending:
            del self.pending[pending.name]
        self.held -= len(pending.entries)
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None

    def _succeeded(self, pending: PendingStart) -> None:
        self._finish(pending)
        log.info("Successfully activated service '%s'", pending.name)
        for entry in pending.entries:
            entry.deliver(self)

    def _fail(self, pending: PendingStart, error: str, text: str) -> None:
        self._finish(pending)
        log.warning("Activated service '%s' failed: %s", pending.name, text)
        for entry in pending.entries:
            entry.fail(self.bus, error, text)

    def _timed_out(self, pending: PendingStart, timeout_ms: int) -> None:
        pending.timer = None
        if pending.process is not None:
            pending.process.kill()
        self._fail(pending, errors.TIMED_OUT,
                   f"Failed to activate service '{pending.name}': timed out (service_start_timeout={timeout_ms}ms)")

    def _process_exited(self, process: ServiceProcess) -> None:
        self.processes.discard(process)
        returncode = process.returncode
        pending = self.pending.get(process.service_name)
        if pending is None or pending.process is not process:
            log.info("service %s (pid %d) %s", process.service_name, process.pid, describe_exit(returncode))
            return
        if returncode == 0:
            # A program that "daemonizes" exits 0 before its child owns the name: keep waiting, as dbus-daemon.
            log.info("service %s (pid %d) exited with status 0 before owning its name; still waiting",
                     process.service_name, process.pid)
            pending.process = None
            return
        if self.servicehelper and returncode > 0:
            error, text = SERVICEHELPER_EXIT_ERRORS.get(
                returncode, (errors.SPAWN_CHILD_EXITED, f"Launch helper exited with unknown return code {returncode}"))
        elif returncode < 0:
            error, text = errors.SPAWN_CHILD_SIGNALED, f"Process {pending.name} received signal {-returncode}"
        else:
            error, text = errors.SPAWN_CHILD_EXITED, f"Process {pending.name} exited with status {returncode}"
        # Other names started by the same program fail with it (dbus-daemon does the same).
        command = pending.service.exec if pending.service else None
        for other in [p for p in self.pending.values()
                      if p is not pending and p.service is not None and p.service.exec == command]:
            self._fail(other, error, text)
        self._fail(pending, error, text)


def _describe_peer(peer: "Peer | None") -> str:
    if peer is None:
        return "the bus"
    creds = peer.credentials
    return f"'{peer.unique_name}' (uid={creds.uid} pid={creds.pid})"


def install_activation(bus: "Bus", settings: Any, address: str, systemd_activation: bool = False) -> Activation:
    """Activation for a daemon's bus, from its DaemonSettings (the parsed config when there is one)."""
    directories = servicedirs_of(settings)
    create_transient_servicedirs(directories)
    return Activation(bus, directories, address, systemd_activation=systemd_activation,
                      servicehelper=servicehelper_of(settings)).install()


def create_transient_servicedirs(directories: Iterable[ServiceDir]) -> None:
    """Create $XDG_RUNTIME_DIR/dbus-1/services and the like, as dbus-daemon does at startup,
    so that programs can drop transient .service files there and ask for a reload."""
    for directory in directories:
        if directory.transient and not os.path.isdir(directory.path):
            try:
                os.makedirs(directory.path, mode=0o700, exist_ok=True)
            except OSError as exc:
                log.warning("cannot create transient service directory %s: %s", directory.path,
                            exc.strerror or exc)


def servicedirs_of(settings: Any) -> list[ServiceDir]:
    config = getattr(settings, "config", None)
    if config is not None:
        return list(config.servicedirs)
    return [ServiceDir(path=path) for path in settings.servicedirs]


def servicehelper_of(settings: Any) -> str | None:
    config = getattr(settings, "config", None)
    return getattr(config, "servicehelper", None) if config is not None else None


__all__ = [
    "Activation", "ActivationError", "DirectoryWatcher", "ServiceCatalog", "ServiceFile", "ServiceFileError",
    "ServiceProcess", "install_activation", "parse_desktop_file", "read_service_file", "split_command_line",
]
