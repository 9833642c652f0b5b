"""The object tree: the objects one bus connection exports, and the dispatcher that serves their method calls.

Every incoming method call reaches `ObjectTree.handle_call` (the router's
`serve_calls` handler).  Calls of exported interfaces go to the decorated
methods of `service.Interface` instances; the standard interfaces every
object has (Peer, Introspectable, Properties) are answered here.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import Any

from busd.wire.wellknown import (
    INTROSPECTABLE_INTERFACE,
    PEER_INTERFACE,
    PROPERTIES_INTERFACE,
)

from ._router import Router
from .convert import variant_signature
from .dbus_types import message_info
from .errors import (
    ArgumentTypeError,
    DBusError,
    Failed,
    InvalidArgs,
    PropertyReadOnly,
    UnknownInterface,
    UnknownMethod,
    UnknownObject,
    UnknownProperty,
)
from .introspection import (
    InterfaceSpec,
    MethodSpec,
    PropertySpec,
    node_to_xml,
    standard_interfaces,
)
from .service import Interface, exports_of

log = logging.getLogger("busd_client")


class Export:
    """Handle returned by `Bus.export`; close() (or leaving a `with` block) unexports."""

    def __init__(self, tree: ObjectTree, path: str, obj: Interface) -> None:
        self.tree = tree
        self.path = path
        self.obj = obj

    def close(self) -> None:
        self.tree.unexport(self.path, self.obj)

    def __enter__(self) -> Export:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def _machine_id() -> str:
    for path in _MACHINE_ID_FILES:
        try:
            with open(path, encoding="ascii") as handle:
                return handle.read().strip()
        except OSError:
            continue
    raise Failed("this machine has no machine id (/etc/machine-id)")


class ObjectTree:
    """The objects one bus connection exports, and the method-call dispatcher that serves them.

    `router` carries the replies and signals; `bus` is the Bus that owns the tree, as `exported_at` reports it."""

    def __init__(self, router: Router, bus: Any = None) -> None:
        self.router = router
        self.bus = bus
        self._objects: dict[str, dict[str, Interface]] = {}
        standard = {
            (PEER_INTERFACE, "Ping"): ("", self._ping),
            (PEER_INTERFACE, "GetMachineId"): ("", self._get_machine_id),
            (INTROSPECTABLE_INTERFACE, "Introspect"): ("", self._introspect),
            (PROPERTIES_INTERFACE, "Get"): ("ss", self._get_property),
            (PROPERTIES_INTERFACE, "Set"): ("ssv", self._set_property),
            (PROPERTIES_INTERFACE, "GetAll"): ("s", self._get_all_properties),
        }
        self._standard: dict[tuple[str, str], tuple[str, Callable[[Any], Any]]] = standard
        self._standard_by_member = {member: entry for (_, member), entry in standard.items()}

    # -- exporting -----------------------------------------------------------

    def export(self, path: str, obj: Interface) -> Export:
        if not isinstance(obj, Interface) or getattr(type(obj), "__dbus_interface__", None) is None:
            raise TypeError(f"only instances of Interface subclasses with a name can be exported, got {obj!r}")
        try:
            parse_path = path.startswith("/") and (path == "/" or (not path.endswith("/") and "//" not in path))
        except AttributeError:
            parse_path = False
        if not parse_path:
            raise ValueError(f"{path!r} is not a valid object path (e.g. '/com/example/Thing')")
        interfaces = self._objects.setdefault(path, {})
        name = type(obj).__dbus_interface__.name
        if name in interfaces:
            raise ValueError(f"{path} already exports {name}; unexport it first")
        interfaces[name] = obj
        exports_of(obj).append((self, path))
        return Export(self, path, obj)

    def unexport(self, path: str, obj: Interface | None = None) -> None:
        interfaces = self._objects.get(path)
        if not interfaces:
            return
        for name, exported in list(interfaces.items()):
            if obj is None or exported is obj:
                del interfaces[name]
                exports = exports_of(exported)
                if (self, path) in exports:
                    exports.remove((self, path))
        if not interfaces:
            del self._objects[path]

    def clear(self) -> None:
        for path in list(self._objects):
            self.unexport(path)

    @property
    def paths(self) -> list[str]:
        return sorted(self._objects)

    # -- dispatch --------------------------------------------------------------

    def handle_call(self, message: Any) -> None:
        try:
            self._dispatch(message)
        except DBusError as error:
            self._reply_error(message, error)
        except Exception as error:
            log.exception("method %s.%s failed", message.interface, message.member)
            self._reply_error(message, Failed(f"{type(error).__name__}: {error}"))

    def _dispatch(self, message: Any) -> None:
        interface, member = message.interface, message.member
        standard = (self._standard.get((interface, member)) if interface is not None
                    else self._standard_by_member.get(member))
        if standard is not None:
            signature, handler = standard
            if message.signature != signature:
                raise InvalidArgs(f"{interface}.{member} takes signature {signature!r}, "
                                  f"got {message.signature!r}")
            handler(message)
            return
        interfaces = self._objects.get(message.path)
        if not interfaces:
            raise UnknownObject(f"no object at path {message.path}")
        if interface is not None:
            obj = interfaces.get(interface)
            if obj is None:
                raise UnknownInterface(f"object {message.path} has no interface {interface}")
            method_spec = type(obj).__dbus_interface__.methods.get(member)
        else:  # the specification allows calls without an interface: first match wins
            obj, method_spec = next(((o, type(o).__dbus_interface__.methods[member])
                                     for o in interfaces.values()
                                     if member in type(o).__dbus_interface__.methods), (None, None))
        if method_spec is None or obj is None:
            raise UnknownMethod(f"{interface or 'no interface'} at {message.path} has no method {member}")
        if message.signature != method_spec.in_signature:
            raise InvalidArgs(f"{member} takes signature {method_spec.in_signature!r}, "
                              f"got {message.signature!r}")
        self._invoke(message, obj, method_spec)

    def _invoke(self, message: Any, obj: Interface, spec: MethodSpec) -> None:
        decode = self.router.codec.body_decoder(spec.in_signature, [arg.hint for arg in spec.in_args])
        try:
            args = decode(message.body, message.unix_fds) if decode else message.body
        except Exception as error:
            raise InvalidArgs(f"arguments of {spec.name} are not acceptable: {error}") from error
        function = spec.function
        assert function is not None
        if spec.info_parameter is None:
            result = function(obj, *args)
        else:
            result = function(obj, *args, **{spec.info_parameter: message_info(message)})
        if inspect.isawaitable(result):
            self.router.spawn(self._finish_async(message, spec, result))
        else:
            self._reply(message, spec, result)

    async def _finish_async(self, message: Any, spec: MethodSpec, pending: Any) -> None:
        try:
            result = await pending
        except DBusError as error:
            self._reply_error(message, error)
        except asyncio.CancelledError:
            self._reply_error(message, Failed(f"{spec.name} was cancelled"))
            raise
        except Exception as error:
            log.exception("method %s failed", spec.name)
            self._reply_error(message, Failed(f"{type(error).__name__}: {error}"))
        else:
            self._reply(message, spec, result)

    def _expects_reply(self, message: Any) -> bool:
        return not (message.flags & self.router.no_reply_flag)

    def _reply(self, message: Any, spec: MethodSpec, result: Any) -> None:
        if not self._expects_reply(message) or self.router.closed:
            return
        out = spec.out_args
        if not out:
            if result is not None:
                self._reply_error(message, Failed(
                    f"{spec.name} returned a value but declares no return type; annotate its return"))
                return
            values: Sequence[Any] = ()
        elif len(out) == 1:
            values = (result,)
        else:
            values = tuple(result)
        try:
            body, fds = self.router.codec.body_encoder(spec.out_signature, [a.hint for a in out], spec.name,
                                                       [a.name for a in out])(values)
            self._send_return(message, spec.out_signature, body, fds)
        except Exception as error:
            log.exception("cannot send the result of %s", spec.name)
            self._reply_error(message, Failed(
                f"{spec.name} returned a value that does not fit its signature "
                f"{spec.out_signature!r}: {error}"))

    def _send_return(self, message: Any, signature: str, body: list[Any], fds: list[int]) -> None:
        router = self.router
        reply = router.new_message(message_type=router.return_type,
                                   reply_serial=message.serial, destination=message.sender,
                                   signature=signature, body=body, unix_fds=fds)
        router.send(reply, fds)

    def _reply_error(self, message: Any, error: DBusError) -> None:
        if not self._expects_reply(message) or self.router.closed:
            return
        router = self.router
        reply = router.new_message(message_type=router.error_type,
                                   reply_serial=message.serial, destination=message.sender,
                                   error_name=error.name, signature="s", body=[error.message])
        router.send(reply)

    # -- standard interfaces ------------------------------------------------------

    def _ping(self, message: Any) -> None:
        if self._expects_reply(message):
            self._send_return(message, "", [], [])

    def _get_machine_id(self, message: Any) -> None:
        if self._expects_reply(message):
            self._send_return(message, "s", [_machine_id()], [])

    def _introspect(self, message: Any) -> None:
        if self._expects_reply(message):
            self._send_return(message, "s", [self.introspect(message.path)], [])

    def introspect(self, path: str) -> str:
        """The introspection XML of `path`: its interfaces and its child nodes."""
        node = ET.Element("node")
        interfaces = self._objects.get(path, {})
        if interfaces:
            node.extend(standard_interfaces())
            for obj in interfaces.values():
                node.append(type(obj).__dbus_interface__.to_element())
        prefix = path.rstrip("/") + "/"
        children = sorted({other[len(prefix):].split("/", 1)[0]
                           for other in self._objects if other.startswith(prefix) and other != path})
        for child in children:
            ET.SubElement(node, "node", name=child)
        return node_to_xml(node)

    def _property_target(self, message: Any, interface_name: str) -> tuple[Interface, InterfaceSpec]:
        interfaces = self._objects.get(message.path)
        if not interfaces:
            raise UnknownObject(f"no object at path {message.path}")
        obj = interfaces.get(interface_name)
        if obj is None:
            raise UnknownInterface(f"object {message.path} has no interface {interface_name!r}")
        return obj, type(obj).__dbus_interface__

    def _property_variant(self, prop: PropertySpec, interface: str, value: Any, fds: list[int]) -> Any:
        """A property's value for Get/GetAll; a value that does not fit is this service's fault: Failed."""
        try:
            return self.router.codec.encode_variant(prop.signature, value, prop.hint, fds, f"{interface}.{prop.name}")
        except ArgumentTypeError as error:
            raise Failed(f"the service's value does not fit: {error.message}") from None

    def _get_property(self, message: Any) -> None:
        interface_name, name = message.body
        obj, spec = self._property_target(message, interface_name)
        prop = spec.properties.get(name)
        if prop is None or not prop.readable:
            raise UnknownProperty(f"{interface_name} has no readable property {name!r}")
        fds: list[int] = []
        wrapped = self._property_variant(prop, interface_name, getattr(obj, prop.attribute), fds)
        if self._expects_reply(message):
            self._send_return(message, "v", [wrapped], fds)

    def _set_property(self, message: Any) -> None:
        interface_name, name, wire_value = message.body
        obj, spec = self._property_target(message, interface_name)
        prop = spec.properties.get(name)
        if prop is None:
            raise UnknownProperty(f"{interface_name} has no property {name!r}")
        if not prop.writable:
            raise PropertyReadOnly(f"property {name} of {interface_name} is read-only")
        codec = self.router.codec
        signature = variant_signature(wire_value)
        if signature != prop.signature:
            raise InvalidArgs(f"property {name} has type {prop.signature!r}, got a value of type {signature!r}")
        value = codec.decode_value(signature, wire_value.value, prop.hint, message.unix_fds)
        setattr(obj, prop.attribute, value)
        if self._expects_reply(message):
            self._send_return(message, "", [], [])

    def _get_all_properties(self, message: Any) -> None:
        (interface_name,) = message.body
        interfaces = self._objects.get(message.path)
        if not interfaces:
            raise UnknownObject(f"no object at path {message.path}")
        if interface_name:
            targets = [self._property_target(message, interface_name)[0]]
        else:
            targets = list(interfaces.values())
        values: dict[str, Any] = {}
        fds: list[int] = []
        for obj in targets:
            interface = type(obj).__dbus_interface__
            for prop in interface.properties.values():
                if prop.readable:
                    values[prop.name] = self._property_variant(prop, interface.name, getattr(obj, prop.attribute),
                                                               fds)
        if self._expects_reply(message):
            self._send_return(message, "a{sv}", [values], fds)
