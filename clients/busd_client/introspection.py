"""Interface descriptions: the specs an exported class or introspection XML yields, XML in and out, and comparison."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Callable

from busd.wire.errors import SignatureError
from busd.wire.signature import parse_signature

DOCTYPE = ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
           ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">')
EMITS_CHANGED = "org.freedesktop.DBus.Property.EmitsChangedSignal"
NO_REPLY = "org.freedesktop.DBus.Method.NoReply"
ACCESS_VALUES = ("read", "write", "readwrite")
EMITS_CHANGED_VALUES = ("true", "invalidates", "const", "false")


@dataclass
class ArgSpec:
    """One argument: name (may be None), D-Bus signature, and the Python hint that types it (if any)."""

    name: str | None
    signature: str
    hint: Any = None


@dataclass
class MethodSpec:
    name: str
    in_args: list[ArgSpec] = field(default_factory=list)
    out_args: list[ArgSpec] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    function: Callable[..., Any] | None = None
    info_parameter: str | None = None

    @property
    def in_signature(self) -> str:
        return "".join(arg.signature for arg in self.in_args)

    @property
    def out_signature(self) -> str:
        return "".join(arg.signature for arg in self.out_args)


@dataclass
class SignalSpec:
    name: str
    args: list[ArgSpec] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def signature(self) -> str:
        return "".join(arg.signature for arg in self.args)


@dataclass
class PropertySpec:
    name: str
    signature: str
    access: str = "read"
    hint: Any = None
    annotations: dict[str, str] = field(default_factory=dict)
    attribute: str | None = None
    """The Python attribute holding the property, for exported classes."""

    @property
    def readable(self) -> bool:
        return "read" in self.access

    @property
    def writable(self) -> bool:
        return "write" in self.access

    @property
    def emits_changed(self) -> str:
        return self.annotations.get(EMITS_CHANGED, "true")


@dataclass
class InterfaceSpec:
    """Everything about one D-Bus interface that introspection XML can say."""

    name: str
    methods: dict[str, MethodSpec] = field(default_factory=dict)
    signals: dict[str, SignalSpec] = field(default_factory=dict)
    properties: dict[str, PropertySpec] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    def to_element(self) -> ET.Element:
        element = ET.Element("interface", name=self.name)
        for method in self.methods.values():
            child = ET.SubElement(element, "method", name=method.name)
            for arg in method.in_args:
                _arg_element(child, arg, "in")
            for arg in method.out_args:
                _arg_element(child, arg, "out")
            _annotation_elements(child, method.annotations)
        for signal in self.signals.values():
            child = ET.SubElement(element, "signal", name=signal.name)
            for arg in signal.args:
                _arg_element(child, arg, None)
            _annotation_elements(child, signal.annotations)
        for prop in self.properties.values():
            child = ET.SubElement(element, "property", name=prop.name, type=prop.signature,
                                  access=prop.access)
            _annotation_elements(child, prop.annotations)
        _annotation_elements(element, self.annotations)
        return element

    def to_xml(self) -> str:
        """A standalone introspection document describing just this interface."""
        node = ET.Element("node")
        node.append(self.to_element())
        return node_to_xml(node)

    @classmethod
    def from_element(cls, element: ET.Element) -> InterfaceSpec:
        name = _required(element, "name", "interface")
        spec = cls(name=name, annotations=_annotations_of(element))
        for child in element.findall("method"):
            method = MethodSpec(name=_required(child, "name", "method"),
                                annotations=_annotations_of(child))
            for arg in child.findall("arg"):
                target = method.out_args if arg.get("direction", "in") == "out" else method.in_args
                target.append(ArgSpec(arg.get("name"), _checked_type(arg, name)))
            spec.methods[method.name] = method
        for child in element.findall("signal"):
            signal = SignalSpec(name=_required(child, "name", "signal"), annotations=_annotations_of(child))
            signal.args = [ArgSpec(arg.get("name"), _checked_type(arg, name)) for arg in child.findall("arg")]
            spec.signals[signal.name] = signal
        for child in element.findall("property"):
            access = child.get("access", "read")
            if access not in ACCESS_VALUES:
                raise ValueError(f"property {child.get('name')!r} of {name} has access {access!r}; "
                                 f"use one of {', '.join(ACCESS_VALUES)}")
            prop = PropertySpec(name=_required(child, "name", "property"),
                                signature=_checked_type(child, name), access=access,
                                annotations=_annotations_of(child))
            spec.properties[prop.name] = prop
        return spec


def _required(element: ET.Element, attribute: str, what: str) -> str:
    value = element.get(attribute)
    if not value:
        raise ValueError(f"introspection XML: a <{what}> element has no {attribute} attribute")
    return value


def _checked_type(element: ET.Element, interface: str) -> str:
    signature = element.get("type")
    if signature is None:
        raise ValueError(f"introspection XML for {interface}: <{element.tag}> has no type attribute")
    try:
        if len(parse_signature(signature)) != 1:
            raise SignatureError(f"{signature!r} is not one complete type")
    except SignatureError as error:
        raise ValueError(f"introspection XML for {interface}: {error}") from error
    return signature


def _arg_element(parent: ET.Element, arg: ArgSpec, direction: str | None) -> None:
    attributes = {"type": arg.signature}
    if arg.name:
        attributes = {"name": arg.name, **attributes}
    if direction is not None:
        attributes["direction"] = direction
    ET.SubElement(parent, "arg", attributes)


def _annotation_elements(parent: ET.Element, annotations: dict[str, str]) -> None:
    for name, value in annotations.items():
        ET.SubElement(parent, "annotation", name=name, value=value)


def _annotations_of(element: ET.Element) -> dict[str, str]:
    return {child.get("name", ""): child.get("value", "") for child in element.findall("annotation")}


def node_to_xml(node: ET.Element) -> str:
    ET.indent(node, space="  ")
    return DOCTYPE + "\n" + ET.tostring(node, encoding="unicode") + "\n"


def parse_xml(text: str) -> tuple[dict[str, InterfaceSpec], list[str]]:
    """Parse an introspection document into its interfaces (by name) and child node names."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as error:
        raise ValueError(f"introspection data is not valid XML: {error}") from error
    if root.tag != "node":
        raise ValueError(f"introspection data must have a <node> root, not <{root.tag}>")
    interfaces = {}
    for element in root.findall("interface"):
        spec = InterfaceSpec.from_element(element)
        interfaces[spec.name] = spec
    children = [child.get("name", "") for child in root.findall("node") if child.get("name")]
    return interfaces, children


def load_interface_file(path: str | os.PathLike[str], name: str | None = None) -> InterfaceSpec:
    """Read one interface from an XML file (the only one, or the one called `name`)."""
    with open(path, encoding="utf-8") as handle:
        interfaces, _ = parse_xml(handle.read())
    if name is None:
        if len(interfaces) != 1:
            raise ValueError(f"{path} describes {len(interfaces)} interfaces; say which one you mean")
        return next(iter(interfaces.values()))
    if name not in interfaces:
        raise ValueError(f"{path} does not describe interface {name} (it has: {', '.join(interfaces) or 'none'})")
    return interfaces[name]


def compare_interfaces(actual: InterfaceSpec, expected: InterfaceSpec) -> list[str]:
    """The differences between two interface descriptions, as readable sentences; empty if they agree.

    Names, types, directions, access and EmitsChangedSignal are compared;
    argument names only where both sides name the argument.
    """
    problems: list[str] = []
    if actual.name != expected.name:
        problems.append(f"interface is called {actual.name}, expected {expected.name}")
    for kind in ("methods", "signals", "properties"):
        have: dict[str, Any] = getattr(actual, kind)
        want: dict[str, Any] = getattr(expected, kind)
        for missing in want.keys() - have.keys():
            problems.append(f"missing {kind[:-1] if kind != 'properties' else 'property'} {missing}")
        for extra in have.keys() - want.keys():
            problems.append(f"unexpected {kind[:-1] if kind != 'properties' else 'property'} {extra}")
    for name in actual.methods.keys() & expected.methods.keys():
        mine, theirs = actual.methods[name], expected.methods[name]
        problems += _compare_args(f"method {name} in", mine.in_args, theirs.in_args)
        problems += _compare_args(f"method {name} out", mine.out_args, theirs.out_args)
    for name in actual.signals.keys() & expected.signals.keys():
        problems += _compare_args(f"signal {name}", actual.signals[name].args, expected.signals[name].args)
    for name in actual.properties.keys() & expected.properties.keys():
        mine_prop, theirs_prop = actual.properties[name], expected.properties[name]
        if mine_prop.signature != theirs_prop.signature:
            problems.append(f"property {name} has type {mine_prop.signature}, expected {theirs_prop.signature}")
        if mine_prop.access != theirs_prop.access:
            problems.append(f"property {name} has access {mine_prop.access}, expected {theirs_prop.access}")
        if mine_prop.emits_changed != theirs_prop.emits_changed:
            problems.append(f"property {name} emits-changed is {mine_prop.emits_changed}, "
                            f"expected {theirs_prop.emits_changed}")
    return sorted(problems)


def _compare_args(where: str, mine: list[ArgSpec], theirs: list[ArgSpec]) -> list[str]:
    mine_signature = "".join(arg.signature for arg in mine)
    theirs_signature = "".join(arg.signature for arg in theirs)
    if mine_signature != theirs_signature:
        return [f"{where}-signature is {mine_signature!r}, expected {theirs_signature!r}"]
    return [f"{where}-argument {index} is named {a.name!r}, expected {b.name!r}"
            for index, (a, b) in enumerate(zip(mine, theirs)) if a.name and b.name and a.name != b.name]


def standard_interfaces() -> list[ET.Element]:
    """The interfaces every exported object also implements (answered by the SDK itself)."""
    text = """<node>
  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping"/>
    <method name="GetMachineId"><arg name="machine_uuid" type="s" direction="out"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg name="xml_data" type="s" direction="out"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="property_name" type="s" direction="in"/>
      <arg name="value" type="v" direction="out"/>
    </method>
    <method name="GetAll">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="props" type="a{sv}" direction="out"/>
    </method>
    <method name="Set">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="property_name" type="s" direction="in"/>
      <arg name="value" type="v" direction="in"/>
    </method>
    <signal name="PropertiesChanged">
      <arg name="interface_name" type="s"/>
      <arg name="changed_properties" type="a{sv}"/>
      <arg name="invalidated_properties" type="as"/>
    </signal>
  </interface>
</node>"""
    return list(ET.fromstring(text))


STANDARD_INTERFACE_NAMES = frozenset({
    "org.freedesktop.DBus.Peer", "org.freedesktop.DBus.Introspectable",
    "org.freedesktop.DBus.Properties",
})
