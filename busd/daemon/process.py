"""Process life of the daemon: config, binding, forking, printing the address, privileges."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

log = logging.getLogger("busd")


def _fail(message: str) -> int:
    sys.stderr.write(f"busd: {message}\n")
    return 1


def _fd_number(value: str | None) -> int | None:
    if value is None:
        return None
    if value == "":
        return 1
    try:
        fd = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a file descriptor number") from None
    if fd < 0:
        raise ValueError(f"{value!r} is not a file descriptor number")
    return fd


def _write_fd(fd: int, text: str) -> None:
    data = text.encode()
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _print_info(address_fd: int | None, pid_fd: int | None, address: str) -> None:
    """Write the address and pid where asked (the same fd may take both), then close those fds."""
    if address_fd is not None:
        _write_fd(address_fd, address + "\n")
    if pid_fd is not None:
        _write_fd(pid_fd, f"{os.getpid()}\n")
    for fd in {address_fd, pid_fd} - {None, 0, 1, 2}:
        try:
            os.close(fd)
        except OSError:
            pass
    if 1 in (address_fd, pid_fd):
        sys.stdout.flush()


def ensure_standard_streams() -> None:
    """Open /dev/null on whichever of fds 0, 1 and 2 is closed, and give Python a stream for each.

    Started as `busd <&- >&-`, the daemon's first socket would otherwise take a standard
    stream's number, and detaching from the terminal (/dev/null onto 0, 1 and 2) would
    then close that socket under the loop: the address printed, every connection refused.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: fd itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    # Python leaves a stream None when its fd was closed at start-up.
    if sys.stdin is None:
        sys.stdin = open(0, "r", closefd=False)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)


def _detach_streams() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)


def _drop_privileges(user: str) -> None:
    import pwd
    if os.getuid() != 0:
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise RuntimeError(f"<user>{user}</user>: no such user") from None
    os.initgroups(user, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    log.info("dropped privileges to %s (uid %d)", user, entry.pw_uid)


# Imported only when the configuration in hand needs them (start time: see the start workload of
# benchmarks/bench_bus.py), and all of them before <user> drops privileges, since a reload or the
# first cookie exchange may need them when Python's files are no longer readable.
IMPORTED_ON_DEMAND = (
    "busd.bridge.settings", "busd.bridge.bridge",  # a bridge or a federation (--upstream, <busd:bridge>)
    "hashlib", "hmac", "secrets",  # a DBUS_COOKIE_SHA1 exchange
    "json",  # --log-format=json
)


def _import_before_dropping_privileges() -> None:
    import importlib
    for name in IMPORTED_ON_DEMAND:
        importlib.import_module(name)


def _bridge_asked(args: argparse.Namespace, config: Any) -> bool:
    """Whether the command line or the config asks for a bridge (busd.bridge.settings decides the rest)."""
    options = (args.federation, args.node_name, args.upstream_credentials, args.remote_uid)
    extensions = config.extensions if config is not None else ()
    return bool(args.upstream or args.imports or args.exports) or any(value is not None for value in options) \
        or any(element.name == "bridge" for element in extensions)


def start(args: argparse.Namespace) -> int:
    # Everything the daemon will run is imported here, before <user> drops privileges: after
    # the drop, Python's and busd's own files may be unreadable (a python3 under a private
    # home directory, as pyenv's in /root). What only some configurations need is imported
    # when they do, and before the drop (IMPORTED_ON_DEMAND).
    from ..bridge.manager import BridgeManager
    from ..config.errors import ConfigError
    from .assembly import Daemon, run
    from .settings import load_settings, log_config_notes
    from .notify import notify_ready
    from ..transport.listeners import ListenError

    from .allocator import tune_allocator

    tune_allocator()  # before the first large message: see allocator.py
    try:
        address_fd = _fd_number(args.print_address)
        pid_fd = _fd_number(args.print_pid)
    except ValueError as exc:
        return _fail(str(exc))
    try:
        settings = load_settings(args.config_file, args.bus_kind)
    except ConfigError as exc:
        # Line 0: the file itself is missing or unreadable, which says nothing about its contents.
        return _fail(str(exc) if exc.line == 0 else f"invalid configuration: {exc}")
    except OSError as exc:
        return _fail(f"cannot read configuration: {exc}")
    log_config_notes(settings.config)

    def bridge_settings_for(config):
        if not _bridge_asked(args, config):
            return None  # what bridge_settings() says then, without importing it
        from ..bridge.settings import bridge_settings
        return bridge_settings(args.upstream, args.imports, args.exports, config.extensions if config else (),
                               federation=args.federation, node_name=args.node_name,
                               credentials=args.upstream_credentials, remote_uid=args.remote_uid)

    if _bridge_asked(args, settings.config):
        from ..bridge.settings import BridgeConfigError
        try:
            bridge_settings_for(settings.config)  # refuse a bridge that cannot work before binding anything
        except BridgeConfigError as exc:
            return _fail(f"invalid bridge configuration: {exc}")
    if args.address:
        settings.listen = [args.address]
    if not settings.listen:
        return _fail("no <listen> address in the configuration and no --address given")
    fork = settings.fork if args.fork is None else args.fork
    if args.syslog is None and settings.syslog:
        from .logs import setup_logging
        setup_logging(args.log_level, args.log_format, "both")

    def reload_settings():
        return load_settings(args.config_file, args.bus_kind)

    daemon = Daemon(settings, reload_settings if (args.config_file or args.bus_kind) else None)
    settings.systemd_activation = args.systemd_activation
    try:
        daemon.bind()
    except ListenError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot listen: {exc}")
    extensions = settings.config.extensions if settings.config else ()
    if args.metrics or any(element.name == "metrics" for element in extensions):  # (no import otherwise)
        from .metrics_setup import MetricsSetupError, metrics_addresses, setup_metrics
        try:
            setup_metrics(daemon, metrics_addresses(args.metrics, extensions))
        except MetricsSetupError as exc:
            return _fail(str(exc))
    if settings.user:
        # A reload may start a bridge later, when busd's files may no longer be readable.
        _import_before_dropping_privileges()
        try:
            _drop_privileges(settings.user)
        except (RuntimeError, OSError) as exc:
            return _fail(str(exc))

    ready_w = None
    if fork:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid:
            os.close(ready_w)
            status = os.read(ready_r, 1)
            return 0 if status == b"1" else 1
        os.close(ready_r)
        os.setsid()
    if not settings.keep_umask and fork:
        os.umask(0o022)
    if settings.pidfile and not args.nopidfile:
        try:
            with open(settings.pidfile, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:
            log.error("cannot write pidfile %s: %s", settings.pidfile, exc)

    def ready() -> None:
        daemon.bridge = BridgeManager(daemon.bus, bridge_settings_for, daemon.settings.config)
        _print_info(address_fd, pid_fd, daemon.addresses())
        if ready_w is not None:
            _detach_streams()
            os.write(ready_w, b"1")
            os.close(ready_w)
        notify_ready(f"Listening on {daemon.addresses()}")

    status = 0
    try:
        run(settings, daemon, ready)
    except Exception as exc:
        # One line, not a traceback: what went wrong is the news; --log-level=debug shows where.
        hint = ""
        if settings.user and isinstance(exc, (ImportError, OSError)):
            hint = f" (busd runs as <user>{settings.user}</user>: can that user read every file it needs?)"
        log.error("stopped by an unexpected error: %s: %s%s", type(exc).__name__, exc, hint)
        log.debug("the error happened here", exc_info=exc)
        status = 1
    finally:
        for listener in daemon.listeners:
            listener.close()
        if settings.pidfile and not args.nopidfile:
            try:
                os.unlink(settings.pidfile)
            except OSError:
                pass
    return status
