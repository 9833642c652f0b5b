"""The standard service directories: what <standard_session_servicedirs/> and <standard_system_servicedirs/> mean."""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping

from .model import ServiceDir

DATADIR = "/usr/share"  # dbus-daemon's ${datadir} on Debian


def _home_directory() -> str:
    # dbus-daemon asks the user database, not $HOME.
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return os.path.expanduser("~")


def standard_session_servicedirs(environ: Mapping[str, str] | None = None) -> list[ServiceDir]:
    """<standard_session_servicedirs/>, in dbus-daemon's order, duplicates removed."""
    env = os.environ if environ is None else environ
    dirs: list[ServiceDir] = []
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        dirs.append(ServiceDir(path=os.path.join(runtime_dir, "dbus-1/services"), transient=True))
    data_home = env.get("XDG_DATA_HOME") or os.path.join(_home_directory(), ".local/share")
    data_dirs = env.get("XDG_DATA_DIRS")
    search = [data_home, *(data_dirs.split(":") if data_dirs is not None else ["/usr/local/share", "/usr/share"]),
              DATADIR]
    for base in search:
        if base:
            add_servicedir(dirs, ServiceDir(path=os.path.join(base, "dbus-1/services")))
    return dirs


def standard_system_servicedirs() -> list[ServiceDir]:
    """<standard_system_servicedirs/>, in dbus-daemon's order, duplicates removed."""
    dirs: list[ServiceDir] = []
    for base in ("/usr/local/share", "/usr/share", DATADIR, "/lib"):
        add_servicedir(dirs, ServiceDir(path=os.path.join(base, "dbus-1/system-services")))
    return dirs


def add_servicedir(dirs: list[ServiceDir], new: ServiceDir) -> None:
    """Append `new` to `dirs` unless its path is there already (the order of first mention counts)."""
    for i, existing in enumerate(dirs):
        if existing.path == new.path:
            # A directory listed both ways is watched and loosely named, as dbus-daemon does.
            dirs[i] = ServiceDir(path=new.path, transient=existing.transient and new.transient)
            return
    dirs.append(new)
