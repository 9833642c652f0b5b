"""The busd command: dbus-daemon's command line, so busd is a drop-in for it."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import __version__

DESCRIPTION = """\
busd: a D-Bus message bus daemon written in Python, a drop-in for dbus-daemon.
With no options it runs a session bus on its built-in configuration and
prints nothing; pass --print-address to learn where clients connect."""

EPILOG = """\
examples:
  busd --print-address                   session bus on the built-in config
  busd --session --fork --print-address --print-pid
                                         like dbus-daemon --session --fork; prints the
                                         address, then the pid: stop the bus with kill PID
  busd --config-file=bus.conf --address=unix:path=/tmp/bus --nofork
  busd --print-address --upstream=session --import=org.freedesktop.Notifications
                                         a private bus that sees one host service
exit status: 0 after a clean shutdown (SIGTERM/SIGINT), 1 on a configuration
or listen error (the message names the file, line and reason)."""



def _terminal_columns() -> int:
    """The columns shutil.get_terminal_size() gives: $COLUMNS, else stdout's terminal, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's own, with the width found as argparse finds it, but without importing shutil
    (and bz2, lzma and fnmatch with it): argparse makes a formatter for every add_argument()."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_columns() - 2 if width is None else width)


class _VersionAction(argparse.Action):
    """--version: says which twin of the per-message path runs (importing it only when asked)."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001 - argparse's signature
        from .._extensions import mode
        print(f"busd {__version__} (D-Bus Message Bus Daemon compatible)\nper-message path: {mode()}")
        parser.exit()

def _fd_or_stdout(value: str | None) -> int | None:
    if value is None or value == "":
        return 1
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a file descriptor number") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="busd", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=_HelpFormatter)
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--session", dest="bus_kind", action="store_const", const="session",
                      help="use the standard session bus configuration")
    kind.add_argument("--system", dest="bus_kind", action="store_const", const="system",
                      help="use the standard system bus configuration")
    p.add_argument("--config-file", metavar="FILE", help="read this dbus-daemon XML configuration file")
    p.add_argument("--address", metavar="ADDR", help="listen on ADDR instead of the config's <listen>")
    p.add_argument("--print-address", metavar="FD", nargs="?", const="", default=None,
                   help="print the address clients connect to, on stdout or to file descriptor FD")
    p.add_argument("--print-pid", metavar="FD", nargs="?", const="", default=None,
                   help="print the daemon's pid, on stdout or to file descriptor FD "
                        "(with --fork, the pid to kill to stop the bus)")
    fork = p.add_mutually_exclusive_group()
    fork.add_argument("--fork", dest="fork", action="store_const", const=True, default=None,
                      help="run in the background (overrides the config's <fork>)")
    fork.add_argument("--nofork", dest="fork", action="store_const", const=False,
                      help="stay in the foreground (overrides the config's <fork>)")
    p.add_argument("--nopidfile", action="store_true", help="do not write the config's <pidfile>")
    logs = p.add_mutually_exclusive_group()
    logs.add_argument("--syslog", dest="syslog", action="store_const", const="both",
                      help="log to syslog as well as stderr")
    logs.add_argument("--nosyslog", dest="syslog", action="store_const", const="none",
                      help="log to stderr only")
    logs.add_argument("--syslog-only", dest="syslog", action="store_const", const="only",
                      help="log to syslog only")
    p.add_argument("--systemd-activation", action="store_true",
                   help="ask systemd to start services that name a SystemdService")
    bridge = p.add_argument_group("bridge to another bus, or a federation of busd nodes over NATS "
                                  "(also <busd:bridge> in the config)")
    bridge.add_argument("--upstream", metavar="ADDRESS",
                        help="bridge to the bus at ADDRESS ('session': the environment's session bus), or join "
                             "the federation on NATS at nats://HOST:PORT[,nats://...] (tls:// for TLS; "
                             "needs pip install 'busd[nats]')")
    bridge.add_argument("--import", dest="imports", metavar="NAME", action="append", default=[],
                        help="make upstream NAME (or every org.example.* name) reachable here; repeatable")
    bridge.add_argument("--export", dest="exports", metavar="NAME", action="append", default=[],
                        help="make local NAME (or every org.example.* name) reachable upstream; repeatable")
    bridge.add_argument("--federation", metavar="NAME",
                        help="with nats://: the federation to join (default busd); separates federations on one NATS")
    bridge.add_argument("--node-name", metavar="NAME",
                        help="with nats://: this node's name in the federation (default: the host name)")
    bridge.add_argument("--upstream-credentials", metavar="FILE",
                        help="with nats://: a NATS .creds file or NKey seed file to authenticate with")
    bridge.add_argument("--remote-uid", metavar="UID", type=int,
                        help="with nats://: the uid remote callers have for local <policy> rules (default 65534)")
    p.add_argument("--metrics", metavar="ADDRESS", action="append", default=[],
                   help="serve Prometheus/OpenMetrics metrics at ADDRESS: unix:path=FILE (dumped to whoever "
                        "connects) or tcp:host=127.0.0.1,port=N (HTTP GET /metrics); repeatable; also "
                        "<busd:metrics address=\"...\"/> in the config; needs pip install 'busd[metrics]'")
    p.add_argument("--introspect", action="store_true",
                   help="print the introspection XML of org.freedesktop.DBus and exit")
    p.add_argument("--log-level", default=os.environ.get("BUSD_LOG_LEVEL", "warning"),
                   choices=["debug", "info", "warning", "error"], help="log verbosity (default: warning)")
    p.add_argument("--log-format", choices=["text", "json"], default=os.environ.get("BUSD_LOG_FORMAT", "text"),
                   help="log lines as text or as one JSON object per line")
    p.add_argument("--version", action=_VersionAction, nargs=0,
                   help="print busd's version, and whether its per-message path runs compiled, and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    from .process import ensure_standard_streams
    ensure_standard_streams()  # first: before anything opens a file or a socket
    args = build_parser().parse_args(argv)
    if args.introspect:
        from ..interfaces import introspection_xml
        from ..wire.wellknown import DRIVER_NAME
        sys.stdout.write(introspection_xml(DRIVER_NAME))
        return 0
    from .logs import setup_logging
    setup_logging(args.log_level, args.log_format, args.syslog)
    from .process import start
    return start(args)


if __name__ == "__main__":
    sys.exit(main())
