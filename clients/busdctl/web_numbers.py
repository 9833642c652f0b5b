"""The page's numbers: `busdctl top`'s per-connection table (top_data.snapshot) with rates between
two looks, busd's per-user ledger, and each peer's quota or queue fill for the map's colours."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .connection import BusConnection
from .stats import DEFAULT_LIMITS
from .top_data import TopSnapshot, rates, snapshot
from .web_model import BusPicture


def fill(row: dict[str, Any]) -> tuple[float | None, str]:
    """How full a connection is, and in what: the fuller of its two queues against dbus-daemon's default
    per-connection limit, or its user's ledger line nearest quota (busd) if that is fuller; (None, "")
    when the bus reports neither."""
    found = [(row[key] / limit, label) for key, limit, label in
             (("queued_in_bytes", DEFAULT_LIMITS["IncomingBytes"], "incoming queue"),
              ("queued_out_bytes", DEFAULT_LIMITS["OutgoingBytes"], "outgoing queue"))
             if row.get(key) is not None]
    if row.get("quota_used") is not None:
        found.append((float(row["quota_used"]), f"its user's {row.get('quota_line') or 'quota'}"))
    return max(found, default=(None, ""))


def numbers_for(bus: BusConnection, picture: BusPicture) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A function that takes one look at the bus and returns the numbers as JSON-ready data."""
    previous: list[TopSnapshot] = []

    async def numbers() -> dict[str, Any]:
        current = await snapshot(bus)
        per_second = rates(previous[0] if previous else None, current)
        previous[:] = [current]
        data = current.to_json()
        rows = []
        for row in data["connections"]:
            if row["connection"] in picture.own:
                continue  # the page's own connections, as on the map
            fraction, what = fill(row)
            picture.set_quota(row["connection"], fraction, what,
                              (row.get("queued_in_bytes") or 0) + (row.get("queued_out_bytes") or 0))
            row.pop("stats", None)
            rows.append({**row, **per_second.get(row["connection"], {}), "fill": fraction, "fill_of": what})
        data["connections"] = rows
        data["available"] = True
        data["reason"] = "" if current.stats_supported else (
            "This bus does not offer org.freedesktop.DBus.Debug.Stats: only names, pids and processes are known.")
        data.pop("taken_at", None)
        return data

    return numbers
