""".service files: the desktop-entry syntax, Exec= lines, and the catalogue of activatable names.

Rules and error texts follow dbus-daemon's bus/desktop-file.c and bus/activation.c.
A `ServiceCatalog` maps bus names to the `.service` files of the configured
service directories, re-reading only files whose stat changed.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from typing import Sequence

from ..bus import errors
from ..bus.activation import ActivationError
from ..config.model import ServiceDir
from ..wire.names import is_valid_bus_name
from ..wire.records import record
from ..wire.wellknown import DRIVER_NAME

log = logging.getLogger("busd.activation")

SERVICE_SECTION = "D-BUS Service"
MAX_SERVICE_FILE_SIZE = 128 * 1024  # dbus-daemon refuses bigger desktop files


class ServiceFileError(Exception):
    """A .service file that is skipped; str() is the reason."""


@record(frozen=True)
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
                       systemd_service=section.get("SystemdService"), stat_key=stat_key(st))


def stat_key(st: os.stat_result) -> tuple[int, ...]:
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
                key = stat_key(st)
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
                current = stat_key(os.stat(service.path))
            except OSError:
                current = ()
            if current == service.stat_key:
                return service
        self.scan()
        return self.services.get(name)

    def watched_paths(self) -> list[str]:
        # $XDG_RUNTIME_DIR/dbus-1/services is not watched: a miss rescans it instead.
        return [d.path for d in self.dirs if not d.transient]


__all__ = [
    "ServiceCatalog", "ServiceFile", "ServiceFileError", "parse_desktop_file", "read_service_file",
    "split_command_line", "stat_key",
]
