"""Introspection XML read into plain records, keeping the annotations busctl shows as flags."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field

from .errors import CommandError

DEPRECATED = "org.freedesktop.DBus.Deprecated"
NO_REPLY = "org.freedesktop.DBus.Method.NoReply"
EMITS_CHANGED = "org.freedesktop.DBus.Property.EmitsChangedSignal"

# EmitsChangedSignal annotation value -> the flag busctl shows for it.
EMITS_CHANGED_FLAGS: dict[str, str | None] = {
    "true": "emits-change",
    "invalidates": "emits-invalidation",
    "const": "const",
    "false": None,
}


@dataclass
class Member:
    """A method, property or signal of an interface."""

    kind: str  # "method", "property" or "signal"
    name: str
    signature: str  # method arguments, property type, signal arguments
    result: str = ""  # method results
    access: str = ""  # property access
    flags: list[str] = field(default_factory=list)


@dataclass
class Interface:
    name: str
    members: list[Member] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Member]:
        return sorted((m for m in self.members if m.kind == kind), key=lambda m: m.name)

    @property
    def readable_properties(self) -> list[Member]:
        return [m for m in self.members if m.kind == "property" and "read" in m.access]


@dataclass
class ObjectDescription:
    """What Introspect says about one object: its interfaces and the names of its child nodes."""

    interfaces: list[Interface]
    children: list[str]

    def interface(self, name: str) -> Interface | None:
        return next((i for i in self.interfaces if i.name == name), None)


def _annotations(element: ElementTree.Element) -> dict[str, str]:
    return {a.get("name", ""): a.get("value", "") for a in element.findall("annotation")}


def _is_true(annotations: dict[str, str], name: str) -> bool:
    return annotations.get(name, "false").lower() == "true"


def _arguments(element: ElementTree.Element, direction: str, default: str) -> str:
    return "".join(arg.get("type", "") for arg in element.findall("arg")
                   if arg.get("direction", default) == direction)


def _method(element: ElementTree.Element) -> Member:
    notes = _annotations(element)
    flags = [flag for flag, name in (("deprecated", DEPRECATED), ("no-reply", NO_REPLY)) if _is_true(notes, name)]
    return Member("method", element.get("name", ""), _arguments(element, "in", "in"),
                  _arguments(element, "out", "in"), flags=flags)


def _signal(element: ElementTree.Element) -> Member:
    flags = ["deprecated"] if _is_true(_annotations(element), DEPRECATED) else []
    return Member("signal", element.get("name", ""), _arguments(element, "out", "out"), flags=flags)


def _property(element: ElementTree.Element, interface_emits: str) -> Member:
    notes = _annotations(element)
    access = element.get("access", "read")
    flags = ["deprecated"] if _is_true(notes, DEPRECATED) else []
    emits = EMITS_CHANGED_FLAGS.get(notes.get(EMITS_CHANGED, interface_emits))
    if emits:
        flags.append(emits)
    if "write" in access:
        flags.append("writable")
    return Member("property", element.get("name", ""), element.get("type", ""), access=access, flags=flags)


def _interface(element: ElementTree.Element) -> Interface:
    notes = _annotations(element)
    emits = notes.get(EMITS_CHANGED, "true")
    members = ([_method(e) for e in element.findall("method")]
               + [_property(e, emits) for e in element.findall("property")]
               + [_signal(e) for e in element.findall("signal")])
    flags = ["deprecated"] if _is_true(notes, DEPRECATED) else []
    return Interface(element.get("name", ""), members, flags)


def parse_introspection(xml_text: str, where: str) -> ObjectDescription:
    """Parse Introspect's reply; `where` names the object in the error if the XML is broken."""
    try:
        root = ElementTree.fromstring(xml_text)
    except ElementTree.ParseError as error:
        raise CommandError(f"Invalid introspection data from {where}: {error}") from None
    interfaces = sorted((_interface(e) for e in root.findall("interface")), key=lambda i: i.name)
    children = [e.get("name", "") for e in root.findall("node") if e.get("name")]
    return ObjectDescription(interfaces, children)


def child_path(parent: str, child: str) -> str:
    """The object path of child node `child` of `parent` (absolute child names are kept)."""
    if child.startswith("/"):
        return child
    return ("" if parent == "/" else parent) + "/" + child
