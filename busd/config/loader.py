"""Read dbus-daemon XML configuration files, with their includes, into a BusConfig.

The rules are dbus-daemon's (bus/config-parser.c): which elements and
attributes are allowed where (parser.py), which combinations are rejected
(rules.py), how included files merge (state.py: the last <type>, <user>,
<pidfile> wins, <listen>s accumulate, limits carry over), and which problems are
only warnings (unknown users and groups, broken files in an <includedir>).
Errors carry the file and line. This module reads the files: the top-level one,
<include>s, <includedir>s, and catches include loops.
"""

from __future__ import annotations

import os

from .errors import ConfigError
from .model import BusConfig
from .parser import FileParser
from .state import ConfigState


class _Loader:
    """Reads a top-level file and everything it includes (the parser's Includer); detects include loops."""

    def __init__(self) -> None:
        self.open_files: list[str] = []

    def load(self, data: bytes | str, filename: str, base_dir: str, from_file: bool) -> BusConfig:
        state = ConfigState()
        if from_file:
            state.files.append(filename)
            self.open_files.append(os.path.abspath(filename))
        parser = FileParser(self, filename, base_dir, state)
        parser.parse(data)
        if not state.listen:
            raise ConfigError(filename, parser.root_line,
                              "Configuration file needs one or more <listen> elements giving addresses")
        return state.to_config()

    def include(self, including: FileParser, path: str, ignore_missing: bool, line: int) -> None:
        key = os.path.abspath(path)
        if key in self.open_files:
            raise ConfigError(including.filename, line, f"Circular inclusion of file '{path}'")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            if ignore_missing:
                return
            raise ConfigError(including.filename, line, f'Failed to open "{path}": No such file or directory') \
                from None
        except OSError as exc:
            raise ConfigError(including.filename, line, f'Failed to open "{path}": {exc.strerror}') from None
        state = including.state.for_included_file()
        state.files.append(path)
        self.open_files.append(key)
        try:
            FileParser(self, path, os.path.dirname(path), state).parse(data)
        finally:
            self.open_files.pop()
        including.state.merge(state)

    def include_dir(self, including: FileParser, directory: str, line: int) -> None:
        try:
            entries = sorted(os.listdir(directory))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ConfigError(including.filename, line, f'Failed to read directory "{directory}": {exc.strerror}') \
                from None
        for entry in entries:
            path = os.path.join(directory, entry)
            if not entry.endswith(".conf") or os.path.isdir(path):
                continue
            try:
                self.include(including, path, True, line)
            except ConfigError as exc:
                # dbus-daemon logs a broken file in an <includedir> and carries on without it.
                including.note(line, f"ignored {path}: {exc}")
        including.state.includedirs.append(directory)


def load_config(path: str | os.PathLike[str]) -> BusConfig:
    """Load a configuration file and everything it includes; raises ConfigError."""
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(filename, 0, "no such configuration file") from None
    except OSError as exc:
        raise ConfigError(filename, 0, f"cannot read the configuration file: {exc.strerror}") from None
    return _Loader().load(data, filename, os.path.dirname(os.path.abspath(filename)), True)


def load_config_text(text: str, base_dir: str | os.PathLike[str] | None = None,
                     filename: str = "<config>") -> BusConfig:
    """Load a configuration from a string; relative includes resolve against `base_dir` (default: cwd)."""
    directory = os.fspath(base_dir) if base_dir is not None else os.getcwd()
    return _Loader().load(text, filename, directory, False)


__all__ = ["load_config", "load_config_text"]
