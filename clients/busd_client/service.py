"""Exporting objects: interface classes with decorated methods, signals and properties, and the object tree that serves them.

    class Example(Interface, name="dev.busd.Example1"):
        @method()
        def Greet(self, who: str) -> str:
            return f"hello {who}"

        @signal()
        def Tick(self, count: UInt32) -> None: ...

        @dbus_property()
        def Count(self) -> UInt32:
            return self._count

    bus.export("/dev/busd/Example1", example)
    example.Tick(3)          # emitting a signal is calling it

Signatures and introspection XML are derived from the annotations (see
`dbus_types`); `xml=` checks the class against an XML file at class creation.
The object tree that serves exported instances is `object_tree.ObjectTree`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from busd.wire.wellknown import PROPERTIES_INTERFACE

from ._router import Router
from .dbus_types import (
    is_message_info,
    resolve_hints,
    return_signature,
    signature_of,
)
from .introspection import (
    ACCESS_VALUES,
    EMITS_CHANGED,
    EMITS_CHANGED_VALUES,
    NO_REPLY,
    ArgSpec,
    InterfaceSpec,
    MethodSpec,
    PropertySpec,
    SignalSpec,
    compare_interfaces,
    load_interface_file,
)

FunctionT = TypeVar("FunctionT", bound=Callable[..., Any])


class ExportSite(Protocol):
    """Where an Interface instance is exported: one bus connection's object tree
    (`object_tree.ObjectTree`).  Signals and PropertiesChanged leave through its router."""

    @property
    def router(self) -> Router: ...

    @property
    def bus(self) -> Any: ...


# -- decorators ----------------------------------------------------------------

@dataclass(frozen=True)
class _MethodOptions:
    name: str | None
    out_names: tuple[str, ...]
    no_reply: bool


def method(name: str | Callable[..., Any] | None = None, *, out_names: Sequence[str] = (),
           no_reply: bool = False) -> Any:
    """Mark a (sync or async) function as a D-Bus method.  `name` defaults to the function's name;
    `out_names` names the out arguments in the introspection data."""
    if callable(name):  # used bare: @method
        return method()(name)

    def decorate(function: FunctionT) -> FunctionT:
        function.__busd_method__ = _MethodOptions(name, tuple(out_names), no_reply)
        return function

    return decorate


class SignalDescriptor:
    """A D-Bus signal on an interface class; calling it on an instance emits it wherever the instance is exported."""

    def __init__(self, function: Callable[..., Any], name: str | None) -> None:
        self.function = function
        self.name = name or function.__name__
        self.python_name = function.__name__
        self._parameters = [p for p in list(inspect.signature(function).parameters.values())[1:]]
        self._binder = inspect.Signature(self._parameters)
        self.__doc__ = function.__doc__

    def __set_name__(self, owner: type, attribute: str) -> None:
        self.python_name = attribute

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _BoundSignal(instance, self)

    def values(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        if not kwargs and len(args) == len(self._parameters):
            return list(args)
        bound = self._binder.bind(*args, **kwargs)
        bound.apply_defaults()
        return list(bound.arguments.values())


class _BoundSignal:
    __slots__ = ("instance", "descriptor")

    def __init__(self, instance: Interface, descriptor: SignalDescriptor) -> None:
        self.instance = instance
        self.descriptor = descriptor

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        """Emit the signal with these arguments on every bus and path the object is exported at."""
        instance = self.instance
        spec = type(instance).__dbus_interface__.signals[self.descriptor.name]
        values = self.descriptor.values(args, kwargs)
        hints = [arg.hint for arg in spec.args]
        interface = type(instance).__dbus_interface__.name
        for tree, path in exports_of(instance):
            router = tree.router
            body, fds = router.codec.body_encoder(spec.signature, hints, f"{interface}.{spec.name}",
                                                  [arg.name for arg in spec.args])(values)
            router.emit(path, interface, spec.name, spec.signature, body, fds)


def signal(name: str | Callable[..., Any] | None = None) -> Any:
    """Mark a function as a D-Bus signal: its annotated parameters are the signal's arguments
    (its body is not run).  Calling it on an instance emits the signal."""
    if callable(name):
        return SignalDescriptor(name, None)
    return lambda function: SignalDescriptor(function, name)


class PropertyDescriptor:
    """A D-Bus property: a Python property whose changes are announced with PropertiesChanged."""

    def __init__(self, getter: Callable[[Any], Any], name: str | None, access: str | None,
                 emits_changed: str) -> None:
        if access is not None and access not in ACCESS_VALUES:
            raise ValueError(f"access={access!r}; use one of {', '.join(ACCESS_VALUES)}")
        if emits_changed not in EMITS_CHANGED_VALUES:
            raise ValueError(f"emits_changed={emits_changed!r}; use one of {', '.join(EMITS_CHANGED_VALUES)}")
        self.getter = getter
        self.setter_function: Callable[[Any, Any], None] | None = None
        self.name = name or getter.__name__
        self.python_name = getter.__name__
        self.explicit_access = access
        self.emits_changed = emits_changed
        self.__doc__ = getter.__doc__

    def __set_name__(self, owner: type, attribute: str) -> None:
        self.python_name = attribute

    def setter(self, function: Callable[[Any, Any], None]) -> PropertyDescriptor:
        """Decorate the setter, as with Python's `property`."""
        self.setter_function = function
        return self

    @property
    def access(self) -> str:
        if self.explicit_access is not None:
            return self.explicit_access
        return "readwrite" if self.setter_function is not None else "read"

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return self.getter(instance)

    def __set__(self, instance: Any, value: Any) -> None:
        if self.setter_function is None:
            raise AttributeError(f"property {self.name} has no setter; decorate one with @{self.python_name}.setter")
        self.setter_function(instance, value)
        if self.emits_changed == "true":
            instance.emit_properties_changed({self.name: self.getter(instance)})
        elif self.emits_changed == "invalidates":
            instance.emit_properties_changed({}, [self.name])


def dbus_property(name: str | Callable[..., Any] | None = None, *, access: str | None = None,
                  emits_changed: str = "true") -> Any:
    """Mark a getter as a D-Bus property (its return annotation is the type).

    Add a setter with `@Prop.setter`.  `access` defaults to "readwrite" when
    there is a setter, else "read"; a "read" property with a setter can be
    changed from Python only.  Assigning it announces the change according to
    `emits_changed` ("true", "invalidates", "const" or "false").
    """
    if callable(name):
        return PropertyDescriptor(name, None, access, emits_changed)
    return lambda getter: PropertyDescriptor(getter, name, access, emits_changed)


# -- interface classes -----------------------------------------------------------

class Interface:
    """Base class of exported D-Bus interfaces: `class Thing(Interface, name="com.example.Thing")`.

    `xml=` (a path) makes class creation fail unless the class matches the
    interface described in that XML file.
    """

    __dbus_interface__: ClassVar[InterfaceSpec]
    _busd_exports: list[tuple[ExportSite, str]]

    def __init_subclass__(cls, name: str | None = None, xml: str | os.PathLike[str] | None = None,
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inherited = getattr(cls, "__dbus_interface__", None)
        interface_name = name or (inherited.name if inherited is not None else None)
        if interface_name is None:
            return  # an abstract base: members only, no interface of its own
        cls.__dbus_interface__ = build_interface_spec(cls, interface_name)
        if xml is not None:
            check_interface(cls, xml)

    def emit_properties_changed(self, changed: Mapping[str, Any] | Iterable[str],
                                invalidated: Iterable[str] = ()) -> None:
        """Emit PropertiesChanged: `changed` maps property names to new values (or lists names whose
        current values are sent); `invalidated` lists properties whose values are not sent."""
        spec = type(self).__dbus_interface__
        if not isinstance(changed, Mapping):
            changed = {name: getattr(self, spec.properties[name].attribute)
                       for name in changed}
        for name in list(changed) + list(invalidated):
            if name not in spec.properties:
                raise ValueError(f"{spec.name} has no property {name}")
        for tree, path in exports_of(self):
            router = tree.router
            fds: list[int] = []
            values = {name: router.codec.encode_variant(spec.properties[name].signature, value,
                                                        spec.properties[name].hint, fds, f"{spec.name}.{name}")
                      for name, value in changed.items()}
            router.emit(path, PROPERTIES_INTERFACE, "PropertiesChanged", "sa{sv}as",
                      [spec.name, values, list(invalidated)], fds)

    @classmethod
    def introspection_xml(cls) -> str:
        """This interface as an introspection XML document (what interfaces/*.xml files hold)."""
        return cls.__dbus_interface__.to_xml()

    @property
    def exported_at(self) -> list[tuple[Any, str]]:
        """The (bus, path) pairs this object is exported at."""
        return [(tree.bus, path) for tree, path in exports_of(self)]


def exports_of(instance: Any) -> list[tuple[ExportSite, str]]:
    """The (object tree, path) pairs `instance` is exported at; the object tree adds and removes them."""
    # Kept in the instance dict so subclasses need not call Interface.__init__.
    return instance.__dict__.setdefault("_busd_exports", [])


def build_interface_spec(cls: type, interface_name: str) -> InterfaceSpec:
    """Derive the InterfaceSpec of an interface class from its decorated members and annotations."""
    spec = InterfaceSpec(name=interface_name)
    members: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for attribute, value in vars(klass).items():
            if (isinstance(value, (SignalDescriptor, PropertyDescriptor))
                    or hasattr(value, "__busd_method__")):
                members.pop(attribute, None)
                members[attribute] = value
    for attribute, value in members.items():
        where = f"{cls.__name__}.{attribute}"
        if isinstance(value, SignalDescriptor):
            spec.signals[value.name] = SignalSpec(value.name, _in_args(value.function, where)[0])
        elif isinstance(value, PropertyDescriptor):
            spec.properties[value.name] = _property_spec(value, where)
        else:
            spec.methods[value.__busd_method__.name or value.__name__] = _method_spec(value, where)
    return spec


def _in_args(function: Callable[..., Any], where: str) -> tuple[list[ArgSpec], str | None]:
    hints = resolve_hints(function)
    args: list[ArgSpec] = []
    info_parameter = None
    for parameter in list(inspect.signature(function).parameters.values())[1:]:
        hint = hints.get(parameter.name, parameter.annotation)
        if is_message_info(hint):
            info_parameter = parameter.name
            continue
        if parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            raise TypeError(f"{where}: D-Bus arguments are positional; *args/**kwargs/keyword-only "
                            f"parameter {parameter.name!r} cannot be exported")
        if hint is parameter.empty:
            raise TypeError(f"{where}: parameter {parameter.name!r} needs a type annotation "
                            f"(its D-Bus type comes from it)")
        try:
            args.append(ArgSpec(parameter.name, signature_of(hint), hint))
        except TypeError as error:
            raise TypeError(f"{where}, parameter {parameter.name!r}: {error}") from None
    return args, info_parameter


def _method_spec(function: Callable[..., Any], where: str) -> MethodSpec:
    options: _MethodOptions = function.__busd_method__
    in_args, info_parameter = _in_args(function, where)
    hints = resolve_hints(function)
    try:
        out_signature, out_hints = return_signature(hints.get("return"))
    except TypeError as error:
        raise TypeError(f"{where}, return value: {error}") from None
    out_names = list(options.out_names) + [None] * len(out_hints)
    out_args = [ArgSpec(name, signature_of(hint), hint) for name, hint in zip(out_names, out_hints)]
    annotations = {NO_REPLY: "true"} if options.no_reply else {}
    return MethodSpec(options.name or function.__name__, in_args, out_args, annotations,
                      function=function, info_parameter=info_parameter)


def _property_spec(descriptor: PropertyDescriptor, where: str) -> PropertySpec:
    hint = resolve_hints(descriptor.getter).get("return")
    if hint is None:
        raise TypeError(f"{where}: the property getter needs a return annotation (the property's type)")
    try:
        signature = signature_of(hint)
    except TypeError as error:
        raise TypeError(f"{where}: {error}") from None
    annotations = {} if descriptor.emits_changed == "true" else {EMITS_CHANGED: descriptor.emits_changed}
    return PropertySpec(descriptor.name, signature, descriptor.access, hint, annotations,
                        attribute=descriptor.python_name)


def check_interface(cls: type[Interface], xml_path: str | os.PathLike[str]) -> None:
    """Raise TypeError listing every difference between `cls` and the interface in `xml_path`."""
    spec = cls.__dbus_interface__
    expected = load_interface_file(xml_path, spec.name)
    problems = compare_interfaces(spec, expected)
    if problems:
        raise TypeError(f"{cls.__name__} does not match {os.fspath(xml_path)}:\n  " + "\n  ".join(problems))
