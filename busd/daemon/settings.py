"""From XML configuration to daemon settings: the only place the daemon reads config files."""

from __future__ import annotations

import logging
import os

from ..bus.limits import Limits
from ..config.builtin import builtin_session_config
from ..config.loader import load_config
from ..config.model import BusConfig, ServiceDir
from ..wire.records import field, record

log = logging.getLogger("busd")

SYSTEM_CONFIG = "/usr/share/dbus-1/system.conf"
SESSION_CONFIG = "/usr/share/dbus-1/session.conf"


@record
class DaemonSettings:
    """Everything the daemon takes from its XML config and command line."""

    bus_type: str = "session"
    listen: list[str] = field(default_factory=lambda: ["unix:tmpdir=/tmp"])
    auth: list[str] = field(default_factory=lambda: ["EXTERNAL"])
    allow_anonymous: bool = False
    user: str | None = None
    fork: bool = False
    keep_umask: bool = False
    pidfile: str | None = None
    syslog: bool = False
    servicedirs: list[ServiceDir] = field(default_factory=list)
    servicehelper: str | None = None  # <servicehelper>: starts system services as their User=
    limits: Limits = field(default_factory=Limits)
    config: object | None = None  # the parsed BusConfig, for policy and activation
    config_path: str | None = None
    systemd_activation: bool = False  # --systemd-activation


def settings_from_config(config: BusConfig, path: str | None) -> DaemonSettings:
    return DaemonSettings(
        bus_type=config.type or "session",
        listen=list(config.listen),
        auth=list(config.auth) or ["EXTERNAL"],
        allow_anonymous=config.allow_anonymous,
        user=config.user,
        fork=config.fork,
        keep_umask=config.keep_umask,
        pidfile=config.pidfile,
        syslog=config.syslog,
        servicedirs=list(config.servicedirs),
        servicehelper=config.servicehelper,
        limits=config.limits.to_bus_limits(),
        config=config,
        config_path=path,
    )


def load_settings(config_file: str | None, bus_kind: str | None) -> DaemonSettings:
    """Settings for --config-file, --session or --system (busd's built-in session config by default)."""
    if config_file:
        return settings_from_config(load_config(config_file), config_file)
    if bus_kind == "system":
        return settings_from_config(load_config(SYSTEM_CONFIG), SYSTEM_CONFIG)
    if bus_kind == "session" and os.path.exists(SESSION_CONFIG):
        return settings_from_config(load_config(SESSION_CONFIG), SESSION_CONFIG)
    return settings_from_config(builtin_session_config(), None)


def log_config_notes(config: BusConfig | None) -> None:
    if config is None:
        return
    for note in config.notes:
        log.info("%s:%d: %s", note.file, note.line, note.message)
