"""Proxies: a remote object whose methods are coroutines, whose properties can be read, written and watched, and whose signals connect to slots.

    example = await bus.proxy("dev.busd.Example1", "/dev/busd/Example1")
    await example.Greet("world")              # a method
    await example.Interval                    # a property (same as .get())
    await example.Interval.set(0.5)
    await example.Tick.connect(on_tick)       # a signal
    await example.Count.connect(on_count)     # PropertiesChanged, for one property

Members are found by name across the object's interfaces; when two
interfaces share a member name, or a member is called like one of the
proxy's own attributes (name, path, bus, router, timeout...), reach it with
`proxy["the.Interface"].Member`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from busd.wire.wellknown import INTROSPECTABLE_INTERFACE, PROPERTIES_INTERFACE

from ._replies import unpack_reply
from ._router import Router
from ._signals import Subscription
from ._slots import SlotInvoker
from .convert import variant_signature
from .errors import UnknownProperty
from .introspection import (
    STANDARD_INTERFACE_NAMES,
    InterfaceSpec,
    MethodSpec,
    PropertySpec,
    SignalSpec,
    parse_xml,
)
from .matching import SignalRule

log = logging.getLogger("busd_client")


class ProxyMethod:
    """A remote method: `await proxy.Method(*args, timeout=None, no_reply=False)`."""

    def __init__(self, proxy: Proxy, interface: str, spec: MethodSpec) -> None:
        self.proxy = proxy
        self.interface = interface
        self.spec = spec
        self._encode = proxy.router.codec.body_encoder(spec.in_signature, [arg.hint for arg in spec.in_args],
                                               f"{interface}.{spec.name}", [arg.name for arg in spec.in_args])
        self._out_hints = [arg.hint for arg in spec.out_args]
        self._decoders: dict[str, Any] = {}   # by reply signature
        self._member = spec.name
        self._signature = spec.in_signature
        self.__doc__ = f"{interface}.{spec.name}({spec.in_signature}) -> ({spec.out_signature})"

    async def __call__(self, *args: Any, timeout: float | None = None, no_reply: bool = False) -> Any:
        proxy = self.proxy
        router = proxy.router
        body, fds = self._encode(args)
        if no_reply:
            router.send(router.new_message(destination=proxy.name, path=proxy.path, interface=self.interface,
                                           member=self._member, signature=self._signature, body=body,
                                           unix_fds=fds, flags=router.no_reply_flag), fds)
            return None
        # Router.call_raw, inlined: this is the hot path of every proxy call.
        future = router.loop.create_future()
        serial = router.start_call(proxy.name, proxy.path, self.interface, self._member, self._signature,
                                   body, fds, future, proxy.timeout if timeout is None else timeout)
        try:
            reply = await future
        except BaseException:
            router.forget_call(serial)
            raise
        signature = reply.signature
        try:
            decode = self._decoders[signature]
        except KeyError:
            decode = self._decoders[signature] = router.codec.body_decoder(signature, self._out_hints)
        values = decode(reply.body, reply.unix_fds) if decode else reply.body
        if len(values) == 1:
            return values[0]
        return unpack_reply(values)

    def __repr__(self) -> str:
        return f"<ProxyMethod {self.__doc__}>"


class ProxyProperty:
    """A remote property: `await prop` or `await prop.get()`, `await prop.set(v)`, `await prop.connect(slot)`."""

    def __init__(self, proxy: Proxy, interface: str, spec: PropertySpec) -> None:
        self.proxy = proxy
        self.interface = interface
        self.spec = spec

    async def get(self, timeout: float | None = None) -> Any:
        if not self.spec.readable:
            raise UnknownProperty(f"property {self.spec.name} of {self.interface} is write-only")
        proxy = self.proxy
        reply = await proxy.router.call_raw(proxy.name, proxy.path, PROPERTIES_INTERFACE, "Get", "ss",
                                            [self.interface, self.spec.name], None,
                                            proxy.timeout if timeout is None else timeout)
        (wrapped,) = reply.body
        return proxy.router.codec.decode_value(variant_signature(wrapped), wrapped.value,
                                               self._hint_for(wrapped), reply.unix_fds)

    def _hint_for(self, wrapped: Any) -> Any:
        # Trust the hint only if the service sent the type it declared.
        return self.spec.hint if variant_signature(wrapped) == self.spec.signature else None

    def __await__(self) -> Any:
        return self.get().__await__()

    async def set(self, value: Any, timeout: float | None = None) -> None:
        proxy = self.proxy
        fds: list[int] = []
        wrapped = proxy.router.codec.encode_variant(self.spec.signature, value, self.spec.hint, fds,
                                                    f"{self.interface}.{self.spec.name}")
        await proxy.router.call_raw(proxy.name, proxy.path, PROPERTIES_INTERFACE, "Set", "ssv",
                                    [self.interface, self.spec.name, wrapped], fds,
                                    proxy.timeout if timeout is None else timeout)

    async def connect(self, slot: Callable[[Any], Any]) -> Subscription:
        """Call `slot(new_value)` whenever the property changes (from PropertiesChanged; an invalidated
        property is fetched first).  Returns the Subscription."""
        proxy = self.proxy
        router = proxy.router
        name = self.spec.name
        rule = SignalRule.for_signal(proxy.name, proxy.path, PROPERTIES_INTERFACE, "PropertiesChanged",
                                    arg0=self.interface)

        def deliver(message: Any) -> None:
            _, changed, invalidated = message.body
            if name in changed:
                wrapped = changed[name]
                try:
                    value = router.codec.decode_value(variant_signature(wrapped), wrapped.value,
                                                    self._hint_for(wrapped), message.unix_fds)
                except Exception:
                    log.exception("cannot convert the new value of %s", name)
                    return
                router.call_back(slot, value)
            elif name in invalidated:
                router.spawn(self._fetch_then_call(slot))

        return await router.signals.subscribe(rule, deliver)

    async def _fetch_then_call(self, slot: Callable[[Any], Any]) -> None:
        self.proxy.router.call_back(slot, await self.get())

    def __repr__(self) -> str:
        return f"<ProxyProperty {self.interface}.{self.spec.name} {self.spec.signature} {self.spec.access}>"


class ProxySignal:
    """A remote signal: `await proxy.Signal.connect(slot, **arg_filters)` returns a Subscription."""

    def __init__(self, proxy: Proxy, interface: str, spec: SignalSpec) -> None:
        self.proxy = proxy
        self.interface = interface
        self.spec = spec

    async def connect(self, slot: Callable[..., Any], **arg_filters: str) -> Subscription:
        proxy = self.proxy
        rule = SignalRule.for_signal(proxy.name, proxy.path, self.interface, self.spec.name, **arg_filters)
        invoker = SlotInvoker(proxy.router, slot, [arg.hint for arg in self.spec.args])
        return await proxy.router.signals.subscribe(rule, invoker)

    def __repr__(self) -> str:
        return f"<ProxySignal {self.interface}.{self.spec.name}({self.spec.signature})>"


ProxyMember = ProxyMethod | ProxyProperty | ProxySignal


class ProxyInterface:
    """The members of one interface of a remote object."""

    def __init__(self, proxy: Proxy, spec: InterfaceSpec) -> None:
        self.spec = spec
        self.members: dict[str, ProxyMember] = {}
        for method in spec.methods.values():
            self.members[method.name] = ProxyMethod(proxy, spec.name, method)
        for prop in spec.properties.values():
            self.members[prop.name] = ProxyProperty(proxy, spec.name, prop)
        for signal in spec.signals.values():
            self.members[signal.name] = ProxySignal(proxy, spec.name, signal)

    def __getattr__(self, member: str) -> ProxyMember:
        try:
            return self.__dict__["members"][member]
        except KeyError:
            raise AttributeError(f"interface {self.spec.name} has no member {member!r}; "
                                 f"it has {', '.join(sorted(self.members)) or 'none'}") from None

    def __dir__(self) -> Iterable[str]:
        return list(self.members)


class Proxy:
    """A remote object (see the module docstring).  Create it with `await bus.proxy(name, path)`.

    `bus` is the Bus that made it; calls go through that bus's router."""

    def __init__(self, router: Router, name: str, path: str, specs: Iterable[InterfaceSpec],
                 children: Iterable[str] = (), timeout: float | None = None, bus: Any = None) -> None:
        self.router = router
        self.bus = bus
        self.name = name
        self.path = path
        self.timeout = router.timeout if timeout is None else timeout
        self.children = list(children)
        self.interfaces: dict[str, ProxyInterface] = {spec.name: ProxyInterface(self, spec) for spec in specs}
        found: dict[str, list[ProxyMember]] = {}
        for interface in self.interfaces.values():
            if interface.spec.name in STANDARD_INTERFACE_NAMES:
                continue
            for member_name, member in interface.members.items():
                found.setdefault(member_name, []).append(member)
        self._ambiguous = {name: [m.interface for m in members] for name, members in found.items()
                           if len(members) > 1}
        for member_name, members in found.items():
            # Unique members become plain attributes: as fast to reach as a method.
            if (len(members) == 1 and not hasattr(type(self), member_name)
                    and member_name not in self.__dict__ and not member_name.startswith("_")):
                self.__dict__[member_name] = members[0]

    @classmethod
    async def create(cls, router: Router, name: str, path: str, interface: Any = None,
                     timeout: float | None = None, bus: Any = None) -> Proxy:
        if interface is None:
            reply = await router.call_raw(name, path, INTROSPECTABLE_INTERFACE, "Introspect", timeout=timeout)
            specs, children = parse_xml(reply.body[0])
            return cls(router, name, path, specs.values(), children, timeout, bus)
        classes = interface if isinstance(interface, (list, tuple)) else [interface]
        specs_from_classes = []
        for klass in classes:
            spec = getattr(klass, "__dbus_interface__", None)
            if not isinstance(spec, InterfaceSpec):
                raise TypeError(f"interface= takes Interface subclasses with a name, got {klass!r}")
            specs_from_classes.append(spec)
        return cls(router, name, path, specs_from_classes, (), timeout, bus)

    def __getitem__(self, interface: str) -> ProxyInterface:
        try:
            return self.interfaces[interface]
        except KeyError:
            raise KeyError(f"{self.name} {self.path} has no interface {interface}; "
                           f"it has {', '.join(self.interfaces) or 'none'}") from None

    def __getattr__(self, member: str) -> ProxyMember:
        if member.startswith("__"):
            raise AttributeError(member)
        ambiguous = self.__dict__.get("_ambiguous", {})
        if member in ambiguous:
            raise AttributeError(f"{member} exists on several interfaces ({', '.join(ambiguous[member])}); "
                                 f"use proxy['{ambiguous[member][0]}'].{member}")
        raise AttributeError(f"{self.__dict__.get('name')} {self.__dict__.get('path')} has no member {member!r}")

    def __dir__(self) -> Iterable[str]:
        return sorted(set(super().__dir__()) | set(self.__dict__))

    async def get_all(self, interface: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """All readable properties of `interface` (default: the only non-standard interface) as a dict."""
        if interface is None:
            own = [name for name in self.interfaces if name not in STANDARD_INTERFACE_NAMES]
            if len(own) != 1:
                raise ValueError(f"say which interface: this object has {', '.join(own) or 'none'}")
            interface = own[0]
        reply = await self.router.call_raw(self.name, self.path, PROPERTIES_INTERFACE, "GetAll", "s", [interface],
                                           None, self.timeout if timeout is None else timeout)
        properties = self.interfaces[interface].spec.properties if interface in self.interfaces else {}
        values = {}
        for name, wrapped in reply.body[0].items():
            signature = variant_signature(wrapped)
            prop = properties.get(name)
            hint = prop.hint if prop is not None and prop.signature == signature else None
            values[name] = self.router.codec.decode_value(signature, wrapped.value, hint, reply.unix_fds)
        return values

    async def connect_property(self, name: str, slot: Callable[[Any], Any]) -> Subscription:
        """Same as `await proxy.<name>.connect(slot)`."""
        member = getattr(self, name)
        if not isinstance(member, ProxyProperty):
            raise TypeError(f"{name} is not a property")
        return await member.connect(slot)

    def __repr__(self) -> str:
        return f"<Proxy {self.name} {self.path} [{', '.join(self.interfaces)}]>"
