"""busdctl's command line: options as busctl spells them, the verb table, and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__
from .bridge import bridge
from .calls import call, emit, get_property, set_property
from .connection import DEFAULT_TIMEOUT, BusConnection, choose_bus, connect
from .context import Context
from .errors import EXIT_FAILURE, EXIT_OK, CommandError, UsageError
from .link import WireLink, open_link
from .names import list_names, status
from .objects import introspect, tree
from .output import JSON_MODES, Output, warn
from .policy import offline as policy_offline
from .policy import policy
from .stats import stats
from .top import SORT_NAMES, top
from .traffic import capture, monitor
from .waiting import wait
from .web import listen_option, web

HELP = """\
busdctl [OPTIONS...] COMMAND ...

Introspect and debug a D-Bus bus: busd, dbus-daemon or dbus-broker.

Commands:
  list                     List bus names
  status [SERVICE|PID]     Show the credentials and owned names of a peer,
                           or of the bus owner
  monitor [SERVICE...]     Show bus traffic
  capture [SERVICE...]     Capture bus traffic as pcapng on standard output
  tree [SERVICE...]        Show object tree of service
  introspect SERVICE OBJECT [INTERFACE]
                           Show an object's methods, properties and signals
  call SERVICE OBJECT INTERFACE METHOD [SIGNATURE [ARGUMENT...]]
                           Call a method
  emit OBJECT INTERFACE SIGNAL [SIGNATURE [ARGUMENT...]]
                           Emit a signal
  get-property SERVICE OBJECT INTERFACE PROPERTY...
                           Get property value
  set-property SERVICE OBJECT INTERFACE PROPERTY SIGNATURE ARGUMENT...
                           Set property value
  wait NAME                Wait until NAME has an owner; print the owner
  wait [SERVICE] OBJECT INTERFACE SIGNAL
                           Wait for a signal; print its arguments
  stats [SERVICE...]       Show per-connection queued bytes, fds, match rules
                           and names (org.freedesktop.DBus.Debug.Stats),
                           heaviest quota user first; with --by-user, busd's
                           per-user ledger (used / peak / quota per uid)
  policy check --uid=UID [--gid=GID...] [--type=TYPE] [--destination=NAME]
         [--interface=I] [--member=M] [--path=P] [--receiver-uid=UID]
                           Say whether busd's policy allows a message and
                           which rule (file:line) decides; asks the running
                           busd (dev.busd.Policy1, root only), or with
                           --config-file=FILE the configuration, no bus
                           needed; exit status 1 when it would be denied
  policy dump              Print the effective policy per context, in
                           evaluation order (--config-file=FILE: offline)
  top                      Live view of the connections, refreshed each second:
                           names, process, messages/s in and out, queued bytes
                           and fds, match rules, the ledger's use of each quota
                           (q quits, < > choose the sort column, r reverses);
                           --once prints one snapshot (--json for scripts)
  bridge                   Show busd's bridge to an upstream bus: address,
                           state, imported and exported names (dev.busd.Bridge1)
  web                      Serve a live page of the bus on 127.0.0.1 and print
                           its URL (with a token): the map of who talks to whom,
                           a sequence diagram, an object browser, the numbers
                           (needs aiohttp: pip install 'busd[web]')
  help                     Show this help

Options:
  -h --help                Show this help
     --version             Show package version
     --no-pager            Do not pipe output into a pager
     --no-legend           Do not show the headers and footers
  -l --full                Do not ellipsize output
     --system              Connect to system bus (the default)
     --user, --session     Connect to user bus
     --address=ADDRESS     Connect to bus specified by address
     --unique              Only show unique names
     --by-user             stats: one table per user (busd's per-user ledger)
     --acquired            Only show acquired names
     --activatable         Only show activatable names
     --match=MATCH         Only show matching messages
     --size=SIZE           Maximum length of captured packet
     --list                Don't show tree, but simple object path list
  -q --quiet               Don't show method call reply
     --verbose             Show result values in long format
     --json=MODE           Output as JSON (pretty, short or off)
  -j, --json               Same as --json=pretty on tty, --json=short otherwise
     --xml-interface       Dump the XML description in introspect command
     --expect-reply=BOOL   Expect a method call reply
     --auto-start=BOOL     Auto-start destination service
     --allow-interactive-authorization=BOOL
                           Allow interactive authorization for operation
     --timeout=SECS        Maximum time to wait for method call completion
                           (and for wait; it waits forever without one)
     --augment-creds=BOOL  Extend credential data with data read from /proc/$PID
     --destination=SERVICE Destination service of a signal
     --listen=HOST:PORT    web: where to serve the page (default 127.0.0.1:0,
                           any free port on loopback)
     --open                web: open the page in a browser
     --uid=UID, --gid=GID  policy check: the sender's user and groups (--gid
                           repeatable; default: the user database's groups)
     --type=TYPE           policy check: method_call (default), method_return,
                           error or signal
     --interface=I, --member=M, --path=P, --error-name=E
                           policy check: the message's fields
     --receiver-uid=UID    policy check: also check the receive rules of the
                           recipient's user (default: the destination's owner
                           on a running bus)
     --config-file=FILE    policy: read this busd/dbus-daemon configuration
                           instead of asking a bus
     --once                top: print one snapshot (rates over 1 s) and exit
     --sort=COLUMN         top: sort by connection, names, pid, process, msgs-in
                           (default), msgs-out, queued, fds, rules or quota

Typed arguments follow busctl: a signature, then one word per value; arrays
and dictionaries take their length first, variants their signature:
  busdctl call SERVICE OBJECT INTERFACE METHOD 'a{sv}' 2 name s Ada age u 36

Exit status:
  0  success
  1  failure: a D-Bus error reply (printed with its error name), no such
     name, no connection to the bus, or a timeout
  2  usage error: unknown command or option, wrong number of arguments,
     or an argument that does not parse for its signature
"""

Handler = Callable[[Context[Any], list[str]], Awaitable[int]]


@dataclass(frozen=True)
class Verb:
    handler: Handler
    usage: str
    min_args: int = 0
    max_args: int | None = None
    unix_fds: bool = False  # monitors may be handed messages that carry descriptors
    # On busdctl's own link (raw bytes, the bus's GUID and credentials) rather than on dbus-next.
    link: bool = False
    # Given the options, the verb needs no bus (policy --config-file): the context's bus is None.
    offline: Callable[[argparse.Namespace], bool] | None = None


VERBS: dict[str, Verb] = {
    "list": Verb(list_names, "list", 0, 0),
    "status": Verb(status, "status [SERVICE|PID]", 0, 1, link=True),
    "monitor": Verb(monitor, "monitor [SERVICE...]", unix_fds=True, link=True),
    "capture": Verb(capture, "capture [SERVICE...]", unix_fds=True, link=True),
    "tree": Verb(tree, "tree [SERVICE...]"),
    "introspect": Verb(introspect, "introspect SERVICE OBJECT [INTERFACE]", 2, 3),
    "call": Verb(call, "call SERVICE OBJECT INTERFACE METHOD [SIGNATURE [ARGUMENT...]]", 4),
    "emit": Verb(emit, "emit OBJECT INTERFACE SIGNAL [SIGNATURE [ARGUMENT...]]", 3),
    "get-property": Verb(get_property, "get-property SERVICE OBJECT INTERFACE PROPERTY...", 4),
    "set-property": Verb(set_property, "set-property SERVICE OBJECT INTERFACE PROPERTY SIGNATURE ARGUMENT...", 6),
    "wait": Verb(wait, "wait NAME | wait [SERVICE] OBJECT INTERFACE SIGNAL", 1, 4),
    "stats": Verb(stats, "stats [SERVICE...]"),
    "bridge": Verb(bridge, "bridge", 0, 0),
    "policy": Verb(policy, "policy check|dump [OPTIONS]", 1, 1, offline=policy_offline),
    "top": Verb(top, "top [--once] [--json] [--sort=COLUMN]", 0, 0),
    "web": Verb(web, "web [--listen=HOST:PORT] [--open]", 0, 0, unix_fds=True, link=True),
}

TRUE_WORDS = frozenset({"1", "yes", "y", "true", "t", "on"})
FALSE_WORDS = frozenset({"0", "no", "n", "false", "f", "off"})
TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as UsageError instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message[:1].upper()}{message[1:]}.\nSee 'busdctl --help'.")


def boolean(word: str) -> bool:
    if word.lower() in TRUE_WORDS:
        return True
    if word.lower() in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"'{word}' is not a boolean (use yes or no)")


def seconds(word: str) -> float | None:
    """A time span as systemd writes them: '5', '2.5s', '500ms', '1min', 'infinity'."""
    if word == "infinity":
        return None
    number = word.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = word[len(number):] or "s"
    try:
        value = float(number) * TIME_UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"'{word}' is not a time span (like 5, 2.5s or 500ms)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{word}' must be longer than zero")
    return value


def size(word: str) -> int:
    multipliers = {"K": 1024, "M": 1024**2, "G": 1024**3}
    try:
        value = int(word[:-1]) * multipliers[word[-1].upper()] if word[-1:].upper() in multipliers else int(word)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{word}' is not a size (like 4096 or 64K)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{word}' must be larger than zero")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="busdctl", add_help=False, allow_abbrev=False)
    add = parser.add_argument
    add("-h", "--help", action="store_true")
    add("--version", action="store_true")
    add("--no-pager", dest="pager", action="store_false")
    add("--no-legend", dest="legend", action="store_false")
    add("-l", "--full", action="store_true")
    add("--system", dest="scope", action="store_const", const="system", default="system")
    add("--user", "--session", dest="scope", action="store_const", const="user")
    add("--address")
    add("--unique", action="store_true")
    add("--by-user", action="store_true")
    add("--acquired", action="store_true")
    add("--activatable", action="store_true")
    add("--match", action="append", default=[])
    add("--size", type=size, default=4096)
    add("--list", action="store_true")
    add("-q", "--quiet", action="store_true")
    add("--verbose", action="store_true")
    add("--json", choices=(*JSON_MODES, "auto"))
    add("--xml-interface", action="store_true")
    add("--expect-reply", type=boolean, default=True)
    add("--auto-start", type=boolean, default=True)
    add("--allow-interactive-authorization", type=boolean, default=False)
    add("--timeout", type=seconds)
    add("--augment-creds", type=boolean, default=True)
    add("--destination")
    add("--listen", type=listen_option)
    add("--open", action="store_true")
    add("--uid", type=int)
    add("--gid", type=int, action="append", default=[])
    add("--type", choices=("method_call", "method_return", "error", "signal"))
    add("--interface")
    add("--member")
    add("--path")
    add("--error-name")
    add("--receiver-uid", type=int)
    add("--config-file")
    add("--once", action="store_true")
    add("--sort", choices=tuple(SORT_NAMES))
    add("words", nargs="*")
    return parser


def _normalise(argv: Sequence[str]) -> list[str]:
    """Give bare --json and -j the value argparse needs: 'auto' (pretty on a terminal)."""
    words: list[str] = []
    for index, word in enumerate(argv):
        if word == "--":
            return words + list(argv[index:])
        words.append("--json=auto" if word in ("--json", "-j") else word)
    return words


def parse_options(argv: Sequence[str]) -> argparse.Namespace:
    return build_parser().parse_intermixed_args(_normalise(argv))


async def run(options: argparse.Namespace) -> int:
    verb_name, args = options.words[0], options.words[1:]
    verb = VERBS.get(verb_name)
    if verb is None:
        raise UsageError(f"Unknown command verb '{verb_name}'.\nSee 'busdctl --help'.")
    if len(args) < verb.min_args or (verb.max_args is not None and len(args) > verb.max_args):
        raise UsageError(f"Usage: busdctl {verb.usage}")
    output = Output(options.json, legend=options.legend, pager=options.pager)
    if verb.offline is not None and verb.offline(options):
        try:
            return await verb.handler(Context(options, output, None), args)  # type: ignore[arg-type]
        finally:
            output.flush()
    timeout = options.timeout if options.timeout is not None else DEFAULT_TIMEOUT
    choice = choose_bus(options.address, options.scope)
    bus: BusConnection | WireLink
    if verb.link:
        bus = await open_link(choice, timeout, unix_fds=verb.unix_fds)
    else:
        bus = await connect(choice, timeout, negotiate_unix_fd=verb.unix_fds)
    try:
        return await verb.handler(Context(options, output, bus), args)
    finally:
        output.flush()
        bus.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run busdctl; returns (and, as a console script, exits with) 0, 1 or 2."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        options = parse_options(argv)
        if options.version:
            sys.stdout.write(f"busdctl {__version__}\n")
            return EXIT_OK
        if options.help or options.words[:1] == ["help"]:
            sys.stdout.write(HELP)
            return EXIT_OK
        if not options.words:
            options.words = ["list"]  # as busctl: no command means list
        return asyncio.run(run(options))
    except CommandError as error:
        warn(str(error))
        return error.exit_code
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader went away (busdctl monitor | head): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
