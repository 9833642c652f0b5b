"""The `top` verb: a live view of the bus's connections, refreshed each second (curses), or one snapshot.

The numbers come from top_data.snapshot() (Debug.Stats, credentials, busd's
per-user ledger); this module only draws them. Keys: `q` quits, `<` and `>`
(or the arrow keys) move the sort column, `r` reverses the order; the column
sorted by is marked. `--once` prints one table (`--json`: the snapshot with
rates over one second) for scripts. On dbus-daemon there are no message
totals (no rates, "-"); on a bus without Debug.Stats only names, pids and
processes are shown, with a note saying why.
"""

from __future__ import annotations

import asyncio
import curses
import pwd
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .context import Context
from .errors import EXIT_OK, UsageError
from .top_data import TopSnapshot, rates, snapshot

REFRESH = 1.0  # seconds between snapshots


@dataclass(frozen=True)
class TopColumn:
    title: str
    width: int
    text: Callable[[dict[str, Any]], str]
    key: Callable[[dict[str, Any]], Any]
    right: bool = True


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"
    return str(value)


def _size(value: Any) -> str:
    if value is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(value)


def _count(value: int) -> str:
    """1234567 -> 1.2M: a quota fits its column."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return str(value)


def _quota(row: dict[str, Any]) -> str:
    if row.get("quota_line") is None:
        return "-"
    return f"{row['quota_used'] * 100:.1f}% {row['quota_line']}"


def _sortable(value: Any) -> float:
    return -1.0 if value is None else float(value)


def _connection_number(row: dict[str, Any]) -> tuple[int, str]:
    number = row["connection"].rsplit(".", 1)[-1]
    return (int(number) if number.isdigit() else 0, row["connection"])


COLUMNS = (
    TopColumn("CONNECTION", 11, lambda r: r["connection"], _connection_number, right=False),
    TopColumn("NAMES", 28, lambda r: " ".join(r["names"]) or "-", lambda r: " ".join(r["names"]), right=False),
    TopColumn("PID", 7, lambda r: _number(r["pid"]), lambda r: _sortable(r["pid"])),
    TopColumn("PROCESS", 15, lambda r: r["process"] or "-", lambda r: r["process"] or "", right=False),
    TopColumn("MSG/S IN", 9, lambda r: _number(r.get("messages_in_per_s")),
              lambda r: _sortable(r.get("messages_in_per_s"))),
    TopColumn("MSG/S OUT", 10, lambda r: _number(r.get("messages_out_per_s")),
              lambda r: _sortable(r.get("messages_out_per_s"))),
    TopColumn("QUEUED", 8, lambda r: _size(r["queued_out_bytes"]), lambda r: _sortable(r["queued_out_bytes"])),
    TopColumn("FDS", 5, lambda r: _number(r["queued_fds"]), lambda r: _sortable(r["queued_fds"])),
    TopColumn("RULES", 6, lambda r: _number(r["match_rules"]), lambda r: _sortable(r["match_rules"])),
    TopColumn("QUOTA", 22, _quota, lambda r: _sortable(r.get("quota_used")), right=False),
)
SORT_NAMES = {column.title.lower().replace("/", "").replace(" ", "-"): index for index, column in enumerate(COLUMNS)}
LEDGER_LINES = ("OutgoingBytes", "OutgoingFDs", "MatchRules", "Names", "PendingReplies", "Connections")


def _user(uid: int) -> str:
    if uid == 0xFFFFFFFF:
        return "(unknown)"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def rows_with_rates(previous: TopSnapshot | None, current: TopSnapshot) -> list[dict[str, Any]]:
    per_second = rates(previous, current)
    return [{**row, **per_second[row["connection"]]} for row in current.connections]


def sort_rows(rows: list[dict[str, Any]], column: int, descending: bool) -> list[dict[str, Any]]:
    return sorted(rows, key=COLUMNS[column].key, reverse=descending)


def _cell(column: TopColumn, text: str) -> str:
    text = text if len(text) <= column.width else text[:column.width - 1] + "…"
    return text.rjust(column.width) if column.right else text.ljust(column.width)


def render_lines(current: TopSnapshot, rows: list[dict[str, Any]], column: int, descending: bool,
                 label: str) -> list[str]:
    """The screen as lines of text (the curses view and --once draw the same)."""
    bus = current.bus
    summary = [f"{label}  {time.strftime('%H:%M:%S')}", f"{len(rows)} connections"]
    for key, text in (("MatchRules", "match rules"), ("BusNames", "names")):
        if key in bus:
            summary.append(f"{bus[key]} {text}")
    lines = ["  ".join(summary)]
    if not current.stats_supported:
        lines.append("This bus has no org.freedesktop.DBus.Debug.Stats (or refuses it to us): names, pids and "
                     "processes only.")
    elif rows and all(row["messages_in"] is None for row in rows):
        lines.append("This bus counts no message totals (not busd): MSG/S is unknown.")
    header = []
    for index, col in enumerate(COLUMNS):
        title = col.title + (("▼" if descending else "▲") if index == column else "")
        header.append(_cell(col, title))
    lines.append(" ".join(header))
    lines.extend(" ".join(_cell(col, col.text(row)) for col in COLUMNS) for row in rows)
    if current.users:
        present = {line for ledger in current.users.values() for line in ledger}
        # busd's ledger lines, or whatever the bus reports (dbus-broker: Bytes, Fds, Matches, Objects)
        shown = [line for line in LEDGER_LINES if line in present] or sorted(present)
        lines.append("")
        lines.append("USER".ljust(12) + "".join(line.rjust(16) for line in shown) + "   (used/quota)")
        for uid, ledger in sorted(current.users.items()):
            cells = []
            for line in shown:
                used, _peak, quota = ledger.get(line, (0, 0, 0))
                show = _size if line in ("OutgoingBytes", "Bytes") else _count
                cells.append(f"{show(used)}/{show(quota)} {used * 100 / quota:.0f}%".rjust(16) if quota
                             else "-".rjust(16))
            lines.append(_user(uid)[:12].ljust(12) + "".join(cells))
    return lines


async def _two_snapshots(ctx: Context) -> tuple[TopSnapshot, TopSnapshot]:
    first = await snapshot(ctx.bus)
    await asyncio.sleep(REFRESH)
    return first, await snapshot(ctx.bus)


def _initial_sort(ctx: Context) -> int:
    name = ctx.options.sort
    if name is None:
        return SORT_NAMES["msgs-in"]
    if name not in SORT_NAMES:
        raise UsageError(f"Unknown sort column '{name}'; one of: {', '.join(SORT_NAMES)}.")
    return SORT_NAMES[name]


async def top(ctx: Context, args: list[str]) -> int:
    column = _initial_sort(ctx)
    descending = column != SORT_NAMES["connection"]
    label = ctx.bus.choice.described
    if ctx.options.once:
        first, current = await _two_snapshots(ctx)
        rows = sort_rows(rows_with_rates(first, current), column, descending)
        if ctx.output.is_json:
            data = current.to_json()
            data["connections"] = rows
            ctx.output.json(data)
        else:
            for line in render_lines(current, rows, column, descending, label):
                ctx.output.line(line)
        return EXIT_OK
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("busdctl top draws on a terminal; for scripts use busdctl top --once [--json].")
    return await _live(ctx, column, descending, label)


async def _live(ctx: Context, column: int, descending: bool, label: str) -> int:
    screen = curses.initscr()
    try:
        curses.noecho()
        curses.cbreak()
        screen.keypad(True)
        screen.nodelay(True)
        try:
            curses.curs_set(0)
        except curses.error:
            pass
        previous: TopSnapshot | None = None
        while True:
            current = await snapshot(ctx.bus)
            rows = rows_with_rates(previous, current)
            previous = current
            deadline = time.monotonic() + REFRESH
            redraw = True
            while True:
                if redraw:
                    _draw(screen, render_lines(current, sort_rows(rows, column, descending), column, descending,
                                               label + "  (q quits, < > sort, r reverses)"))
                    redraw = False
                key = screen.getch()
                if key in (ord("q"), ord("Q")):
                    return EXIT_OK
                if key in (ord(">"), curses.KEY_RIGHT, ord("<"), curses.KEY_LEFT):
                    column = (column + (1 if key in (ord(">"), curses.KEY_RIGHT) else -1)) % len(COLUMNS)
                    redraw = True
                elif key in (ord("r"), ord("R")):
                    descending = not descending
                    redraw = True
                elif key == curses.KEY_RESIZE:
                    redraw = True
                elif key == -1:
                    if time.monotonic() >= deadline:
                        break
                    await asyncio.sleep(0.05)
    finally:
        curses.endwin()


def _draw(screen: Any, lines: list[str]) -> None:
    screen.erase()
    height, width = screen.getmaxyx()
    for y, line in enumerate(lines[:height - 1]):
        try:
            screen.addstr(y, 0, line[:width - 1], curses.A_REVERSE if y == _header_row(lines) else 0)
        except curses.error:
            pass
    screen.refresh()


def _header_row(lines: list[str]) -> int:
    return next((i for i, line in enumerate(lines) if line.startswith("CONNECTION")), -1)


__all__ = ["COLUMNS", "render_lines", "rows_with_rates", "sort_rows", "top"]
