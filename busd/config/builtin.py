"""busd's own session and system bus configurations, shipped next to this module."""

from __future__ import annotations

import os

from .loader import load_config
from .model import BusConfig

# os.path, not pathlib: pathlib (with urllib.parse and ipaddress) was a twentieth of a start
_PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__))


def builtin_session_config() -> BusConfig:
    """busd's own self-contained session bus configuration (busd/config/session.conf)."""
    return load_config(os.path.join(_PACKAGE_DIR, "session.conf"))


def builtin_system_config() -> BusConfig:
    """busd's own system bus configuration (busd/config/system.conf)."""
    return load_config(os.path.join(_PACKAGE_DIR, "system.conf"))


__all__ = ["builtin_session_config", "builtin_system_config"]
