"""Bridge settings: the upstream address and which names cross, from the command line or busd's XML namespace."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..wire.address import AddressError, parse_addresses, session_bus_address
from ..wire.names import is_valid_well_known_name
from ..wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH

SESSION = "session"
# The transports the bridge can connect over (the others are for listening, or need a launcher).
CONNECTABLE_TRANSPORTS = ("unix", "tcp", "nonce-tcp")
# A federation of busd nodes over NATS (busd/bridge/nats_federation.py) is an upstream given by URL.
FEDERATION_SCHEMES = ("nats://", "tls://")
DEFAULT_FEDERATION = "busd"
NOBODY_UID = 65534  # who remote callers are for the local policy, unless --remote-uid says otherwise
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # one NATS subject token
NATS_MISSING = ("a nats:// upstream needs the NATS client, which is not installed: "
                "pip install 'busd[nats]' (or pip install nats-py)")

NAME_OWNER_CHANGED_RULE = (f"type='signal',sender='{DRIVER_NAME}',path='{DRIVER_PATH}',"
                           f"interface='{DRIVER_INTERFACE}',member='NameOwnerChanged'")


class BridgeConfigError(ValueError):
    """A bridge setting that cannot work; the message says where it came from and what to write instead."""


@dataclass(frozen=True)
class NamePattern:
    """A well-known name (`org.example.Foo`), every name under a prefix (`org.example.*`), or every name (`*`)."""

    text: str

    def __post_init__(self) -> None:
        text = self.text
        if text == "*":
            return
        if text.endswith(".*"):
            stem = text[:-2]
            # A stem may be a single element ("org.*"): check it as the start of a longer name.
            if not is_valid_well_known_name(stem + ".x") or "*" in stem:
                raise BridgeConfigError(f"{text!r} is not a name pattern: before '.*' must come the start of "
                                        "a well-known name, as in org.example.*")
            return
        if not is_valid_well_known_name(text):
            hint = " (unique names cannot cross; name the service's well-known name)" if text.startswith(":") else ""
            raise BridgeConfigError(f"{text!r} is not a well-known bus name or a pattern like org.example.*{hint}")
        if text == DRIVER_NAME:
            raise BridgeConfigError(f"{DRIVER_NAME} belongs to each bus itself and cannot cross a bridge")

    @property
    def prefix(self) -> str | None:
        """'org.example.' for org.example.*, '' for *, None for an exact name."""
        if self.text == "*":
            return ""
        return self.text[:-1] if self.text.endswith(".*") else None

    def matches(self, name: str) -> bool:
        if name.startswith(":") or name == DRIVER_NAME:
            return False
        prefix = self.prefix
        if prefix is None:
            return name == self.text
        return name.startswith(prefix)

    def owner_changed_rule(self) -> str:
        """The upstream match rule that announces owner changes of the names this pattern covers."""
        prefix = self.prefix
        if prefix is None:
            return f"{NAME_OWNER_CHANGED_RULE},arg0='{self.text}'"
        if not prefix:
            return NAME_OWNER_CHANGED_RULE
        # arg0namespace also covers the stem itself (org.example); matches() filters it out.
        return f"{NAME_OWNER_CHANGED_RULE},arg0namespace='{prefix[:-1]}'"

    def __str__(self) -> str:
        return self.text


def matches_any(patterns: Iterable[NamePattern], name: str) -> bool:
    return any(pattern.matches(name) for pattern in patterns)


@dataclass(frozen=True)
class BridgeSettings:
    """One bridge: where the upstream bus is, and the names imported from it and exported to it."""

    upstream: str  # "session", a D-Bus address, or nats:// URLs of a federation
    imports: tuple[NamePattern, ...] = ()
    exports: tuple[NamePattern, ...] = ()
    # A federation only (nats:// or tls:// upstream):
    federation: str = DEFAULT_FEDERATION  # separates federations on one NATS
    node_name: str = ""  # this node's name in the federation
    credentials: str = ""  # a NATS .creds file or NKey seed file
    remote_uid: int = NOBODY_UID  # the uid remote callers have here (local <policy> applies to it)

    @property
    def is_federation(self) -> bool:
        return is_federation_url(self.upstream)

    def address(self, environ: Mapping[str, str] | None = None) -> str:
        """The address to connect to now; "session" is looked up in the environment at each attempt."""
        if self.upstream == SESSION:
            return session_bus_address(os.environ if environ is None else environ)
        return self.upstream


def is_federation_url(text: str) -> bool:
    return text.startswith(FEDERATION_SCHEMES)


def default_node_name() -> str:
    """The host name, as one NATS subject token."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "node"


def check_federation_url(text: str) -> str:
    """`text` if it is comma-separated nats:// or tls:// URLs and the NATS client is installed."""
    from urllib.parse import urlsplit
    for url in text.split(","):
        if not is_federation_url(url):
            raise BridgeConfigError(f"{url!r} is not a NATS URL: write nats://HOST:PORT or tls://HOST:PORT "
                                    "(several separated by commas)")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises on a bad port)
        except ValueError as exc:
            raise BridgeConfigError(f"{url!r}: {exc}") from None
        if not parts.hostname:
            raise BridgeConfigError(f"{url!r} names no host: write nats://HOST:PORT")
    if importlib.util.find_spec("nats") is None:
        raise BridgeConfigError(NATS_MISSING)
    return text


def _token(text: str, what: str) -> str:
    if not _TOKEN.match(text):
        raise BridgeConfigError(f"{what} {text!r} must be 1 to 64 letters, digits, '-' or '_' "
                                "(it is part of NATS subjects)")
    return text


def check_upstream(text: str) -> str:
    """`text` if it is "session", an address the bridge can connect to or NATS URLs; else BridgeConfigError."""
    if text == SESSION:
        return text
    if is_federation_url(text):
        return check_federation_url(text)
    try:
        addresses = parse_addresses(text)
    except AddressError as exc:
        raise BridgeConfigError(f"upstream {text!r}: {exc}") from None
    usable = [a for a in addresses if a.transport in CONNECTABLE_TRANSPORTS and a.connectable]
    if not usable:
        raise BridgeConfigError(f"upstream {text!r} has no address the bridge can connect to: give "
                                "unix:path=..., unix:abstract=..., tcp:host=...,port=... or 'session'")
    return text


def _pattern(text: str, where: str) -> NamePattern:
    try:
        return NamePattern(text)
    except BridgeConfigError as exc:
        raise BridgeConfigError(f"{where}: {exc}") from None


def _unique(patterns: Iterable[NamePattern]) -> tuple[NamePattern, ...]:
    return tuple(dict.fromkeys(patterns))


FEDERATION_ATTRIBUTES = ("federation", "node-name", "credentials", "remote-uid")


def _bridge_element(extensions: Sequence):
    bridges = [element for element in extensions if element.name == "bridge"]
    return bridges[0] if bridges else None


def _from_extensions(extensions: Sequence) -> tuple[str | None, list[NamePattern], list[NamePattern]]:
    """The <busd:bridge> element of a config, as (upstream, imports, exports); other busd elements are not ours."""
    bridges = [element for element in extensions if element.name == "bridge"]
    if not bridges:
        return None, [], []
    if len(bridges) > 1:
        second = bridges[1]
        raise BridgeConfigError(f"{second.file}:{second.line}: only one <busd:bridge> is supported "
                                f"(the first is at {bridges[0].file}:{bridges[0].line})")
    element = bridges[0]
    where = f"{element.file}:{element.line}"
    unknown = set(element.attributes) - {"upstream", *FEDERATION_ATTRIBUTES}
    if unknown:
        raise BridgeConfigError(f"{where}: <busd:bridge> has no attribute {sorted(unknown)[0]!r}; "
                                'it takes upstream="session", upstream="ADDRESS" or upstream="nats://HOST:PORT" '
                                f"(with {', '.join(FEDERATION_ATTRIBUTES)})")
    upstream = element.attributes.get("upstream")
    if not upstream:
        raise BridgeConfigError(f'{where}: <busd:bridge> needs upstream="session" or upstream="ADDRESS"')
    lists: dict[str, list[NamePattern]] = {"import": [], "export": []}
    for child in element.children:
        child_where = f"{child.file}:{child.line}"
        if child.name not in lists:
            raise BridgeConfigError(f"{child_where}: <busd:bridge> may contain only <busd:import name=\"...\"/> "
                                    f"and <busd:export name=\"...\"/>, not <{child.name}>")
        if set(child.attributes) != {"name"}:
            raise BridgeConfigError(f'{child_where}: <busd:{child.name}> takes exactly one attribute, '
                                    f'name="org.example.Name" or name="org.example.*"')
        lists[child.name].append(_pattern(child.attributes["name"], child_where))
    return upstream, lists["import"], lists["export"]


def _federation_options(chosen: str, element, federation: str | None, node_name: str | None,
                        credentials: str | None, remote_uid: int | None) -> dict:
    """The federation's settings: the command line over the <busd:bridge> element's attributes."""
    xml = dict(element.attributes) if element is not None else {}
    where = f"{element.file}:{element.line}" if element is not None else ""
    given = {"--federation": federation, "--node-name": node_name, "--upstream-credentials": credentials,
             "--remote-uid": remote_uid}
    if not is_federation_url(chosen):
        extra = [flag for flag, value in given.items() if value is not None]
        extra += [f"{where}: {key}=" for key in FEDERATION_ATTRIBUTES if key in xml]
        if extra:
            raise BridgeConfigError(f"{extra[0]} is for a federation: it needs --upstream=nats://HOST:PORT")
        return {}
    uid_text = remote_uid if remote_uid is not None else xml.get("remote-uid", NOBODY_UID)
    try:
        uid = int(uid_text)
        if not 0 < uid < 0xFFFFFFFF:
            raise ValueError
    except ValueError:
        raise BridgeConfigError(f"remote uid {uid_text!r} must be a positive number (not root's 0)") from None
    if uid == os.getuid() and uid != NOBODY_UID:
        raise BridgeConfigError(f"remote uid {uid} is busd's own: remote callers must not be the daemon; "
                                f"leave it out (they are then uid {NOBODY_UID}, nobody)")
    creds = credentials if credentials is not None else xml.get("credentials", "")
    if creds and not os.path.isfile(creds):
        raise BridgeConfigError(f"credentials file {creds!r} does not exist: give a NATS .creds file or an "
                                "NKey seed file")
    return {"federation": _token(federation or xml.get("federation") or DEFAULT_FEDERATION, "federation"),
            "node_name": _token(node_name or xml.get("node-name") or default_node_name(), "node name"),
            "credentials": creds, "remote_uid": uid}


def bridge_settings(upstream: str | None = None, imports: Sequence[str] = (), exports: Sequence[str] = (),
                    extensions: Sequence = (), *, federation: str | None = None, node_name: str | None = None,
                    credentials: str | None = None, remote_uid: int | None = None) -> BridgeSettings | None:
    """Merge the command line (--upstream, --import, --export, and a federation's options) with a
    config's <busd:bridge>.

    --upstream overrides the element's upstream; imports and exports add up.
    None when neither asks for a bridge.
    """
    xml_upstream, xml_imports, xml_exports = _from_extensions(extensions)
    chosen = upstream or xml_upstream
    if chosen is None:
        if imports or exports:
            raise BridgeConfigError("--import and --export need --upstream=ADDRESS (or --upstream=session, or "
                                    "--upstream=nats://HOST:PORT), or a <busd:bridge upstream=\"...\"> element "
                                    "in the configuration")
        if any(value is not None for value in (federation, node_name, credentials, remote_uid)):
            raise BridgeConfigError("--federation, --node-name, --upstream-credentials and --remote-uid are for a "
                                    "federation: they need --upstream=nats://HOST:PORT")
        return None
    where = "--upstream" if upstream else "<busd:bridge upstream>"
    try:
        check_upstream(chosen)
    except BridgeConfigError as exc:
        raise BridgeConfigError(f"{where}: {exc}") from None
    options = _federation_options(chosen, _bridge_element(extensions), federation, node_name, credentials,
                                  remote_uid)
    return BridgeSettings(chosen, _unique([*xml_imports, *(_pattern(text, "--import") for text in imports)]),
                          _unique([*xml_exports, *(_pattern(text, "--export") for text in exports)]), **options)


__all__ = ["BridgeConfigError", "BridgeSettings", "NamePattern", "bridge_settings", "check_upstream",
           "is_federation_url", "matches_any"]
