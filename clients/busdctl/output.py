"""Where busdctl's results go: plain text, tables and JSON on standard output, a pager on a terminal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

ANSI_HIGHLIGHT = "\033[1;39m"
ANSI_RED = "\033[1;31m"
ANSI_UNDERLINE = "\033[4m"
ANSI_NORMAL = "\033[0m"

JSON_MODES = ("pretty", "short", "off")


@dataclass(frozen=True)
class Column:
    """One table column: its header, and whether its cells line up on the right (numbers)."""

    header: str
    right: bool = False


def wants_colour(stream: TextIO) -> bool:
    """Colours only on a terminal, and never when NO_COLOR is set or TERM is dumb."""
    if os.environ.get("NO_COLOR") is not None or os.environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


def resolve_json_mode(mode: str | None, stream: TextIO) -> str | None:
    """--json=MODE as the mode to print in: None for text; bare --json means pretty on a terminal."""
    if mode is None or mode == "off":
        return None
    if mode == "auto":
        return "pretty" if stream.isatty() else "short"
    return mode


class Output:
    """Standard output for one busdctl command, honouring --json, --no-legend and --no-pager."""

    def __init__(self, json_mode: str | None = None, legend: bool = True, pager: bool = True,
                 stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.json_mode = resolve_json_mode(json_mode, self.stream)
        self.legend = legend
        self.pager = pager
        self.colour = wants_colour(self.stream)

    @property
    def is_json(self) -> bool:
        return self.json_mode is not None

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def json(self, data: Any) -> None:
        """One JSON document: on one line in short mode, indented in pretty mode."""
        if self.json_mode == "pretty":
            self.line(json.dumps(data, indent="\t", ensure_ascii=False))
        else:
            self.line(json.dumps(data, separators=(",", ":"), ensure_ascii=False))

    def highlight(self, text: str) -> str:
        return f"{ANSI_HIGHLIGHT}{text}{ANSI_NORMAL}" if self.colour else text

    def red(self, text: str) -> str:
        return f"{ANSI_RED}{text}{ANSI_NORMAL}" if self.colour else text

    def table(self, columns: Sequence[Column], rows: Sequence[Sequence[str]],
              unshown_rows: Sequence[Sequence[str]] = ()) -> None:
        """Rows in aligned columns separated by one space, under a header unless --no-legend.

        `unshown_rows` count for the column widths only, as busctl's filtered rows do.
        """
        widths = [len(column.header) if self.legend else 0 for column in columns]
        for row in [*rows, *unshown_rows]:
            widths = [max(width, len(cell)) for width, cell in zip(widths, row)]
        if self.legend:
            header = _table_line([c.header for c in columns], columns, widths)
            self.line(f"{ANSI_UNDERLINE}{header}{ANSI_NORMAL}" if self.colour else header)
        for row in rows:
            self.line(_table_line(row, columns, widths))

    @contextmanager
    def paged(self) -> Iterator[None]:
        """Send what is printed inside to a pager, when standard output is a terminal."""
        command = self._pager_command()
        if command is None:
            yield
            return
        env = dict(os.environ)
        env.setdefault("LESS", "FRSXMK")
        try:
            pager = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE, env=env, text=True,
                                     encoding="utf-8")
        except OSError:
            yield
            return
        original, self.stream = self.stream, pager.stdin
        try:
            yield
        finally:
            self.stream = original
            try:
                pager.stdin.close()
            except BrokenPipeError:
                pass
            pager.wait()

    def _pager_command(self) -> str | None:
        if not self.pager or not self.stream.isatty():
            return None
        for variable in ("SYSTEMD_PAGER", "PAGER"):
            value = os.environ.get(variable)
            if value is not None:
                return value if value.strip() not in ("", "cat") else None
        return "less" if shutil.which("less") else None


def _table_line(cells: Sequence[str], columns: Sequence[Column], widths: Sequence[int]) -> str:
    parts = []
    for cell, column, width in zip(cells, columns, widths):
        parts.append(cell.rjust(width) if column.right else cell.ljust(width))
    return " ".join(parts).rstrip()


def warn(message: str) -> None:
    """A message for the person at the terminal, on standard error."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
