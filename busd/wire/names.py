"""Syntax of D-Bus names: bus names, interfaces, members, error names, object paths.

Validators are cached by the raw bytes seen on the wire, because a bus routes the
same few names again and again; a hit costs one dict lookup and returns the str.
The cache holds what peers chose to send, so it is bounded: at most _CACHE_LIMIT
entries of at most MAX_NAME_LENGTH bytes each (under 1.3 MiB of bytes and str per
cache), whoever sent them and whether or not they are still connected, and a name
enters it only when seen twice (Doorkeeper). Longer
object paths are validated every time; they are rare, and caching them let one
peer pin gigabytes.
"""

from __future__ import annotations

import re

MAX_NAME_LENGTH = 255
_CACHE_LIMIT = 2048

_INTERFACE_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+\Z")
_MEMBER_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_WELL_KNOWN_RE = re.compile(r"\A[A-Za-z_-][A-Za-z0-9_-]*(\.[A-Za-z_-][A-Za-z0-9_-]*)+\Z")
_UNIQUE_RE = re.compile(r"\A:[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+\Z")
_PATH_RE = re.compile(r"\A/\Z|\A(/[A-Za-z0-9_]+)+\Z")


def is_valid_interface(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and _INTERFACE_RE.match(name) is not None


is_valid_error_name = is_valid_interface


def is_valid_member(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and _MEMBER_RE.match(name) is not None


def is_valid_bus_name(name: str) -> bool:
    if len(name) > MAX_NAME_LENGTH:
        return False
    pattern = _UNIQUE_RE if name.startswith(":") else _WELL_KNOWN_RE
    return pattern.match(name) is not None


def is_valid_well_known_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and _WELL_KNOWN_RE.match(name) is not None


def is_valid_unique_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and _UNIQUE_RE.match(name) is not None


def is_valid_object_path(path: str) -> bool:
    return _PATH_RE.match(path) is not None


class Doorkeeper:
    """Admits a key to a cache on its second sighting, so that one-off keys never enter it.

    Peers send many names and paths once (a new object path per request, a new peer's
    unique name): cached on first sight, they would fill the cache until it starts over,
    and under churn the daemon's memory would climb for minutes before levelling off.
    It remembers only hashes, a bounded number, so what one-off keys cost stays small.
    (A hash collision only admits a key early.)
    """

    __slots__ = ("_seen", "_limit")

    def __init__(self, limit: int = 1024):
        self._seen: set[int] = set()
        self._limit = limit

    def admits(self, key: bytes) -> bool:
        seen = self._seen
        digest = hash(key)
        if digest in seen:
            seen.discard(digest)
            return True
        if len(seen) >= self._limit:
            seen.clear()
        seen.add(digest)
        return False


class NameCache:
    """Raw bytes -> validated str for one kind of name; None when invalid."""

    __slots__ = ("_valid", "_check", "_doorkeeper")

    def __init__(self, check):
        self._valid: dict[bytes, str] = {}
        self._check = check
        self._doorkeeper = Doorkeeper()

    def lookup(self, raw: bytes) -> str | None:
        text = self._valid.get(raw)
        if text is not None:
            return text
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
        if not self._check(text):
            return None
        if len(raw) > MAX_NAME_LENGTH or not self._doorkeeper.admits(raw):
            return text
        if len(self._valid) >= _CACHE_LIMIT:
            self._valid.clear()
        self._valid[raw] = text
        return text

    def forget(self, text: str) -> None:
        """Drop `text` from the cache (a unique name whose peer left: it never comes back)."""
        self._valid.pop(text.encode("ascii", "replace"), None)


PATHS = NameCache(is_valid_object_path)
INTERFACES = NameCache(is_valid_interface)
MEMBERS = NameCache(is_valid_member)
BUS_NAMES = NameCache(is_valid_bus_name)
