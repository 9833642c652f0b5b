"""Bridge settings: the upstream address and which names cross, from the command line or busd's XML namespace."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..wire.address import AddressError, parse_addresses, session_bus_address
from ..wire.names import is_valid_well_known_name
from ..wire.wellknown import DRIVER_INTERFACE, DRIVER_NAME, DRIVER_PATH

SESSION = "session"
# The transports the bridge can connect over (the others are for listening, or need a launcher).
CONNECTABLE_TRANSPORTS = ("unix", "tcp", "nonce-tcp")

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

    upstream: str  # "session", or a D-Bus address
    imports: tuple[NamePattern, ...] = ()
    exports: tuple[NamePattern, ...] = ()

    def address(self, environ: Mapping[str, str] | None = None) -> str:
        """The address to connect to now; "session" is looked up in the environment at each attempt."""
        if self.upstream == SESSION:
            return session_bus_address(os.environ if environ is None else environ)
        return self.upstream


def check_upstream(text: str) -> str:
    """`text` if it is "session" or an address the bridge can connect to; else BridgeConfigError."""
    if text == SESSION:
        return text
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
    unknown = set(element.attributes) - {"upstream"}
    if unknown:
        raise BridgeConfigError(f"{where}: <busd:bridge> has no attribute {sorted(unknown)[0]!r}; "
                                'it takes upstream="session" or upstream="ADDRESS"')
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


def bridge_settings(upstream: str | None = None, imports: Sequence[str] = (), exports: Sequence[str] = (),
                    extensions: Sequence = ()) -> BridgeSettings | None:
    """Merge the command line (--upstream, --import, --export) with a config's <busd:bridge>.

    --upstream overrides the element's upstream; imports and exports add up.
    None when neither asks for a bridge.
    """
    xml_upstream, xml_imports, xml_exports = _from_extensions(extensions)
    chosen = upstream or xml_upstream
    if chosen is None:
        if imports or exports:
            raise BridgeConfigError("--import and --export need --upstream=ADDRESS (or --upstream=session), "
                                    "or a <busd:bridge upstream=\"...\"> element in the configuration")
        return None
    where = "--upstream" if upstream else "<busd:bridge upstream>"
    try:
        check_upstream(chosen)
    except BridgeConfigError as exc:
        raise BridgeConfigError(f"{where}: {exc}") from None
    return BridgeSettings(chosen, _unique([*xml_imports, *(_pattern(text, "--import") for text in imports)]),
                          _unique([*xml_exports, *(_pattern(text, "--export") for text in exports)]))


__all__ = ["BridgeConfigError", "BridgeSettings", "NamePattern", "bridge_settings", "check_upstream",
           "matches_any"]
