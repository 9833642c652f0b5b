"""Watching service directories: a callback after files come, go or change (inotify; polling without it)."""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Any, Callable, Iterable

from .services import stat_key

log = logging.getLogger("busd.activation")

STAT_RETRY_SECONDS = 2.0  # polling period when inotify is unavailable
WATCH_SETTLE_SECONDS = 0.05  # one rescan for a burst of directory events


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
            # The process's own symbols, libc's among them: ctypes.util.find_library("c") ran
            # `ldconfig -p` in a child process to find the same library, at every start.
            libc = ctypes.CDLL(None, use_errno=True)
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
                    listing[os.path.join(path, name)] = stat_key(os.stat(os.path.join(path, name)))
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


__all__ = ["DirectoryWatcher"]
