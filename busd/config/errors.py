"""The errors of reading a configuration: ConfigError for the caller, Reject inside the parser."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration the bus refuses to start with; str() is "FILE:LINE: reason" ("FILE: reason" for line 0,
    a problem with the file as a whole)."""

    def __init__(self, file: str, line: int, reason: str) -> None:
        super().__init__(file, line, reason)
        self.file = file
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        if self.line == 0:
            return f"{self.file}: {self.reason}"
        return f"{self.file}:{self.line}: {self.reason}"


class Reject(Exception):
    """A reason to refuse the element being handled; the parser adds file and line."""
