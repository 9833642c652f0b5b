"""D-Bus server addresses ("unix:path=/run/bus;tcp:host=localhost,port=0"): parse, check, format."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping

from .records import field, record

DEFAULT_SYSTEM_BUS_ADDRESS = "unix:path=/var/run/dbus/system_bus_socket"

# Bytes that may appear in a value as they are; every other byte is written %xx.
# dbus-daemon reads the specification's [-0-9A-Za-z_/.\*] as including the backslash.
OPTIONALLY_ESCAPED = frozenset(b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_/.\\*")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_GUID = re.compile(r"[0-9a-fA-F]{32}\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")

# A unix address names its socket in exactly one of these ways.
UNIX_SOCKET_KEYS = ("path", "abstract", "dir", "tmpdir", "runtime")


class AddressError(ValueError):
    """A D-Bus address is malformed or incomplete; the message says what to fix."""


def escape_value(value: str) -> str:
    """Escape a value for use in key=value: bytes outside the optionally-escaped set become %xx."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as error:
        raise AddressError(f"address value {value!r} cannot be encoded as UTF-8: {error.reason}") from None
    return "".join(chr(byte) if byte in OPTIONALLY_ESCAPED else f"%{byte:02x}" for byte in raw)


def unescape_value(text: str) -> str:
    """Undo escape_value(); bytes that are not UTF-8 come back as surrogate escapes (like os.fsdecode)."""
    raw = bytearray()
    position = 0
    while position < len(text):
        char = text[position]
        if char == "%":
            digits = text[position + 1:position + 3]
            if len(digits) != 2 or not _HEX_DIGITS.issuperset(digits):
                raise AddressError(f"bad escape {text[position:position + 3]!r} in {text!r}: "
                                   "'%' must be followed by two hex digits")
            raw.append(int(digits, 16))
            position += 3
        elif char.isascii() and ord(char) in OPTIONALLY_ESCAPED:
            raw.append(ord(char))
            position += 1
        else:
            escaped = escape_value(char)
            raise AddressError(f"character {char!r} in address value {text!r} must be escaped as {escaped}")
    return raw.decode("utf-8", "surrogateescape")


def _check_port(transport: str, params: Mapping[str, str]) -> None:
    port = params.get("port")
    if port is not None and (not _PORT.match(port) or int(port) > 65535):
        raise AddressError(f"{transport} port {port!r} is not a number from 0 to 65535")


def _check_family(transport: str, params: Mapping[str, str]) -> None:
    family = params.get("family")
    if family is not None and family not in ("ipv4", "ipv6"):
        raise AddressError(f"{transport} family {family!r} is not supported: use ipv4 or ipv6")


def _check_unix(params: Mapping[str, str]) -> None:
    given = [key for key in UNIX_SOCKET_KEYS if key in params]
    if not given:
        raise AddressError("unix address needs one of path=, abstract=, dir=, tmpdir= or runtime=yes")
    if len(given) > 1:
        raise AddressError(f"unix address has both {given[0]}= and {given[1]}=; give only one of "
                           "path, abstract, dir, tmpdir, runtime")
    if params.get("runtime", "yes") != "yes":
        raise AddressError(f"unix runtime={params['runtime']!r} is not supported: the only value is runtime=yes")


def _check_tcp(params: Mapping[str, str]) -> None:
    _check_port("tcp", params)
    _check_family("tcp", params)


def _check_nonce_tcp(params: Mapping[str, str]) -> None:
    _check_port("nonce-tcp", params)
    _check_family("nonce-tcp", params)


def _require(transport: str, key: str) -> Callable[[Mapping[str, str]], None]:
    def check(params: Mapping[str, str]) -> None:
        if key not in params:
            raise AddressError(f"{transport} address is missing {key}=")
    return check


def _no_check(params: Mapping[str, str]) -> None:
    return None


# Per-transport checks. Unknown keys are kept and ignored, as dbus-daemon does.
TRANSPORT_CHECKS: dict[str, Callable[[Mapping[str, str]], None]] = {
    "unix": _check_unix,
    "tcp": _check_tcp,
    "nonce-tcp": _check_nonce_tcp,
    "systemd": _no_check,
    "launchd": _require("launchd", "env"),
    "autolaunch": _no_check,
    "unixexec": _require("unixexec", "path"),
}


# Whether a client can connect to an address of each transport (the others are for listening).
CONNECT_RULES: dict[str, Callable[[Mapping[str, str]], bool]] = {
    "unix": lambda params: "path" in params or "abstract" in params,
    "tcp": lambda params: "port" in params,
    "nonce-tcp": lambda params: "port" in params and "noncefile" in params,
    "systemd": lambda params: False,
    "launchd": lambda params: True,
    "autolaunch": lambda params: True,
    "unixexec": lambda params: True,
}


@record(frozen=True)
class Address:
    """One server address: a transport name and its key=value parameters (unescaped)."""

    transport: str
    params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", dict(self.params))  # a private copy: the address is immutable
        check = TRANSPORT_CHECKS.get(self.transport)
        if check is None:
            # No list of "known" transports: which ones work depends on whether the caller listens
            # (busd: unix, tcp, systemd) or connects, so listing all of them misleads both.
            raise AddressError(f"unknown transport {self.transport!r}")
        for key, value in self.params.items():
            if not key or not key.isascii() or not all(ord(c) in OPTIONALLY_ESCAPED for c in key):
                raise AddressError(f"bad key {key!r} in {self.transport} address: keys are "
                                   "made of letters, digits and -_/.*")
            if not isinstance(value, str) or not value:
                raise AddressError(f"key {key}= in {self.transport} address needs a non-empty value")
        guid = self.params.get("guid")
        if guid is not None and not _GUID.match(guid):
            raise AddressError(f"guid={guid!r} is not 32 hex digits")
        check(self.params)

    def __hash__(self) -> int:
        return hash((self.transport, frozenset(self.params.items())))

    def format(self) -> str:
        """The address as text, with values escaped: parse_address(a.format()) == a."""
        pairs = ",".join(f"{key}={escape_value(value)}" for key, value in self.params.items())
        return f"{self.transport}:{pairs}"

    __str__ = format

    @property
    def guid(self) -> str | None:
        """The server GUID the address promises, if it names one."""
        return self.params.get("guid")

    @property
    def connectable(self) -> bool:
        """Whether a client can connect to this address (unix:dir=, tmpdir=, runtime= are for listening)."""
        return CONNECT_RULES[self.transport](self.params)


def parse_address(text: str) -> Address:
    """Parse one address (no ';')."""
    transport, colon, rest = text.partition(":")
    if not colon:
        raise AddressError(f"{text!r} is not a D-Bus address: it needs a transport and a colon, "
                           "like unix:path=/run/user/1000/bus")
    if rest.endswith(","):
        rest = rest[:-1]  # dbus-daemon tolerates a trailing comma
    params: dict[str, str] = {}
    for pair in rest.split(",") if rest else ():
        key, equals, value = pair.partition("=")
        if not key or not equals or not value:
            raise AddressError(f"in address {text!r}: {pair!r} is not key=value with a non-empty value")
        if key in params:
            raise AddressError(f"in address {text!r}: key {key}= is given twice")
        params[key] = unescape_value(value)
    return Address(transport, params)


def parse_addresses(text: str) -> list[Address]:
    """Parse a ';'-separated list of addresses, in the order a client should try them."""
    if not text:
        raise AddressError("empty D-Bus address: expected something like unix:path=/run/user/1000/bus")
    entries = text.split(";")
    if entries[-1] == "" and len(entries) > 1:
        entries.pop()  # dbus-daemon tolerates a trailing ';'
    return [parse_address(entry) for entry in entries]


def format_addresses(addresses: list[Address]) -> str:
    """The ';'-separated text form of several addresses."""
    return ";".join(address.format() for address in addresses)


def runtime_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """$XDG_RUNTIME_DIR, or None when it is unset or not an absolute path (the spec says to ignore it then)."""
    value = (os.environ if environ is None else environ).get("XDG_RUNTIME_DIR", "")
    return value if os.path.isabs(value) else None


def session_bus_address(environ: Mapping[str, str] | None = None) -> str:
    """The session bus address: $DBUS_SESSION_BUS_ADDRESS, else the socket $XDG_RUNTIME_DIR/bus if present."""
    env = os.environ if environ is None else environ
    address = env.get("DBUS_SESSION_BUS_ADDRESS")
    if address:
        return address
    directory = runtime_dir(env)
    if directory is not None:
        path = os.path.join(directory, "bus")
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                return Address("unix", {"path": path}).format()
        except OSError:
            pass
    raise AddressError("no session bus: DBUS_SESSION_BUS_ADDRESS is not set and there is no "
                       "$XDG_RUNTIME_DIR/bus socket; start a session bus or set DBUS_SESSION_BUS_ADDRESS")


def system_bus_address(environ: Mapping[str, str] | None = None) -> str:
    """The system bus address: $DBUS_SYSTEM_BUS_ADDRESS, else the well-known socket path."""
    env = os.environ if environ is None else environ
    return env.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_SYSTEM_BUS_ADDRESS
