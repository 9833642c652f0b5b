"""The machine id the bus answers GetMachineId with, read where the daemon is assembled (the bus reads no file)."""

from __future__ import annotations

MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def read_machine_id(paths: tuple[str, ...] = MACHINE_ID_FILES) -> str:
    """The first 32-character id among `paths`, as libdbus looks for it; 32 zeros when there is none."""
    for path in paths:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if len(text) == 32:
            return text
    return "0" * 32


__all__ = ["read_machine_id"]
