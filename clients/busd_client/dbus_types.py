"""Python type hints for D-Bus types, and the D-Bus signature each hint stands for.

Plain hints map to the usual D-Bus types:

    int -> i    float -> d    str -> s    bool -> b    bytes -> ay
    list[T] -> aT    dict[K, V] -> a{KV}    tuple[A, B] -> (AB)
    a pydantic model, dataclass or NamedTuple -> a struct of its fields, in order
    Variant -> v (kept wrapped)    Any -> v (unwrapped to a plain value)

and the aliases below pick the other D-Bus types (`UInt32`, `ObjectPath`,
`UnixFD`...).  They are `typing.Annotated` types, so they also work inside
pydantic models.  At the top level of a return annotation a `tuple[A, B]`
means two out arguments; write `tuple[tuple[A, B]]` for one struct.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import types as pytypes
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Callable

from busd.wire.errors import SignatureError
from busd.wire.signature import parse_single_type

from .shared_buffer import SharedBuffer


def is_one_complete_type(signature: str) -> bool:
    """True if `signature` is a valid signature of exactly one complete type (a variant's, a hint's)."""
    try:
        parse_single_type(signature)
    except SignatureError:
        return False
    return True


class DBusType:
    """`Annotated` metadata naming the D-Bus signature of a hint: `Annotated[int, DBusType("u")]`."""

    __slots__ = ("signature",)

    def __init__(self, signature: str) -> None:
        if not is_one_complete_type(signature):
            raise ValueError(f"DBusType needs one complete D-Bus type, got {signature!r}")
        self.signature = signature

    def __repr__(self) -> str:
        return f"DBusType({self.signature!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DBusType) and other.signature == self.signature

    def __hash__(self) -> int:
        return hash(self.signature)


Byte = Annotated[int, DBusType("y")]
Int16 = Annotated[int, DBusType("n")]
UInt16 = Annotated[int, DBusType("q")]
Int32 = Annotated[int, DBusType("i")]
UInt32 = Annotated[int, DBusType("u")]
Int64 = Annotated[int, DBusType("x")]
UInt64 = Annotated[int, DBusType("t")]
Double = Annotated[float, DBusType("d")]
ObjectPath = Annotated[str, DBusType("o")]
Signature = Annotated[str, DBusType("g")]
UnixFD = Annotated[int, DBusType("h")]
"""A file descriptor. Sent fds are duplicated, so the caller may close its own; received fds belong to the receiver.
A `SharedBuffer` hint is an `h` too, received as a checked, mapped SharedBuffer."""


class Variant:
    """A value together with its D-Bus signature, for `v` arguments whose type matters."""

    __slots__ = ("signature", "value")

    def __init__(self, signature: str, value: Any) -> None:
        if not is_one_complete_type(signature):
            raise ValueError(f"a Variant holds one complete D-Bus type, got signature {signature!r}")
        self.signature = signature
        self.value = value

    def __repr__(self) -> str:
        return f"Variant({self.signature!r}, {self.value!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Variant) and other.signature == self.signature
                and other.value == self.value)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """Header fields of the message a slot or method is handling.

    Ask for it by annotating a parameter of the slot or service method with
    `MessageInfo`; the SDK then passes it by keyword.
    """

    sender: str | None
    destination: str | None
    path: str | None
    interface: str | None
    member: str | None
    signature: str
    serial: int


_PLAIN_SIGNATURES: dict[Any, str] = {
    int: "i", float: "d", str: "s", bool: "b", bytes: "ay", bytearray: "ay",
    Variant: "v", Any: "v", object: "v",
}


def message_info(message: Any) -> MessageInfo:
    """The header fields of a received backend message, as handed to slots and methods."""
    return MessageInfo(sender=message.sender, destination=message.destination, path=message.path,
                       interface=message.interface, member=message.member,
                       signature=message.signature, serial=message.serial)


def strip_annotated(hint: Any) -> tuple[Any, str | None]:
    """Split `Annotated[T, DBusType(sig)]` into (T, sig); other hints come back as (hint, None)."""
    if typing.get_origin(hint) is Annotated:
        base, *metadata = typing.get_args(hint)
        for item in metadata:
            if isinstance(item, DBusType):
                return base, item.signature
        return strip_annotated(base)
    return hint, None


def is_struct_class(hint: Any) -> bool:
    """True for the classes that map to D-Bus structs: pydantic models, dataclasses, NamedTuples."""
    return isinstance(hint, type) and (
        _is_pydantic_model(hint) or dataclasses.is_dataclass(hint) or _is_namedtuple(hint))


def _is_pydantic_model(hint: type) -> bool:
    # Duck-typed so that importing busd_client does not import pydantic.
    return hasattr(hint, "model_fields") and hasattr(hint, "model_validate")


def _is_namedtuple(hint: type) -> bool:
    return issubclass(hint, tuple) and hasattr(hint, "_fields")


def struct_fields(cls: type) -> list[tuple[str, Any]]:
    """The (name, hint) of each field of a struct class, in declaration order."""
    if _is_pydantic_model(cls):
        fields = []
        for name, info in cls.model_fields.items():
            hint = info.annotation
            if info.metadata:
                hint = Annotated[(hint, *info.metadata)]  # pydantic strips Annotated; put it back
            fields.append((name, hint))
        return fields
    hints = typing.get_type_hints(cls, include_extras=True)
    if dataclasses.is_dataclass(cls):
        return [(field.name, hints[field.name]) for field in dataclasses.fields(cls)]
    return [(name, hints.get(name, Any)) for name in cls._fields]


def struct_builder(cls: type) -> Callable[[list[Any]], Any]:
    """A function making an instance of struct class `cls` from its field values, in order."""
    if _is_namedtuple(cls):
        return lambda values: cls(*values)
    names = [name for name, _ in struct_fields(cls)]
    return lambda values: cls(**dict(zip(names, values)))


def struct_values(value: Any, names: list[str]) -> list[Any]:
    """The field values of a struct instance (model, dataclass, tuple or dict), in order."""
    if isinstance(value, (tuple, list)):
        return list(value)
    if isinstance(value, Mapping):
        return [value[name] for name in names]
    return [getattr(value, name) for name in names]


def signature_of(hint: Any) -> str:
    """The D-Bus signature of one Python type hint; raises TypeError saying what to use instead."""
    base, explicit = strip_annotated(hint)
    if explicit is not None:
        return explicit
    plain = _PLAIN_SIGNATURES.get(base) if _hashable(base) else None
    if plain is not None:
        return plain
    origin = typing.get_origin(base)
    args = typing.get_args(base)
    if origin in (list, set, frozenset, Sequence, typing.Sequence, typing.List):
        return "a" + signature_of(args[0] if args else Any)
    if origin in (dict, Mapping, typing.Mapping, typing.Dict):
        key, value = args if args else (str, Any)
        key_signature = signature_of(key)
        if key_signature not in _BASIC_SIGNATURES:
            raise TypeError(f"D-Bus dict keys must be a basic type, not {key!r}")
        return "a{" + key_signature + signature_of(value) + "}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return "a" + signature_of(args[0])
        if not args or args == ((),):
            raise TypeError("an empty tuple has no D-Bus type; D-Bus structs need at least one field")
        return "(" + "".join(signature_of(arg) for arg in args) + ")"
    if origin in (typing.Union, pytypes.UnionType):
        raise TypeError(
            f"{hint!r}: D-Bus has no optional or union types; use a Variant (or Any) "
            f"or pick one type")
    if isinstance(base, type):
        if issubclass(base, SharedBuffer):
            return "h"
        if issubclass(base, enum.IntEnum):
            return "i"
        if issubclass(base, enum.Enum) and all(isinstance(m.value, str) for m in base):
            return "s"
        if is_struct_class(base):
            fields = struct_fields(base)
            if not fields:
                raise TypeError(f"{base.__name__} has no fields; a D-Bus struct needs at least one")
            return "(" + "".join(signature_of(field_hint) for _, field_hint in fields) + ")"
    if base is None or base is type(None):
        raise TypeError("None has no D-Bus type (only a return annotation may be None)")
    raise TypeError(
        f"no D-Bus type for {hint!r}; use int/float/str/bool/bytes, list/dict/tuple of those, "
        f"a pydantic model, or a busd_client alias such as UInt32 or ObjectPath")


def return_signature(hint: Any) -> tuple[str, list[Any]]:
    """The out-signature of a return annotation and the hint of each out argument."""
    if hint is None or hint is type(None) or hint is inspect.Parameter.empty:
        return "", []
    base, explicit = strip_annotated(hint)
    if explicit is None and typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        if not (len(args) == 2 and args[1] is Ellipsis):
            hints = [] if args == ((),) else list(args)
            return "".join(signature_of(arg) for arg in hints), hints
    return signature_of(hint), [hint]


_BASIC_SIGNATURES = frozenset("ybnqiuxtdsogh")


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def is_message_info(hint: Any) -> bool:
    """True if a parameter annotation asks for the message's `MessageInfo`."""
    if hint is MessageInfo:
        return True
    # Unresolvable string annotations (local names under `from __future__ import annotations`).
    return isinstance(hint, str) and hint.rsplit(".", 1)[-1] == "MessageInfo"


def resolve_hints(function: Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotations of `function`, with a clear error when a name cannot be found."""
    target = getattr(function, "__func__", function)
    try:
        return typing.get_type_hints(target, include_extras=True)
    except NameError as error:
        raise TypeError(
            f"cannot resolve the annotations of {getattr(target, '__qualname__', target)!r} "
            f"({error}); define the types it uses at module level") from error


def guess_signature(value: Any) -> str:
    """The D-Bus signature for a plain Python value put in a variant."""
    if isinstance(value, Variant):
        return "v"
    if isinstance(value, SharedBuffer):
        return "h"
    if isinstance(value, bool):
        return "b"
    if isinstance(value, enum.IntEnum):
        return "i"
    if isinstance(value, int):
        return "i" if -2**31 <= value < 2**31 else ("x" if value < 2**63 else "t")
    if isinstance(value, float):
        return "d"
    if isinstance(value, str):
        return "s"
    if isinstance(value, (bytes, bytearray)):
        return "ay"
    if is_struct_class(type(value)) and not isinstance(value, tuple):
        return signature_of(type(value))
    if isinstance(value, tuple):
        if not value:
            raise TypeError("an empty tuple has no D-Bus type")
        return "(" + "".join(guess_signature(item) for item in value) + ")"
    if isinstance(value, Mapping):
        if value and all(isinstance(key, str) for key in value):
            return "a{sv}"
        if not value:
            return "a{sv}"
        key_signature = guess_signature(next(iter(value)))
        return "a{" + key_signature + "v}"
    if isinstance(value, (list, set, frozenset)):
        signatures = {guess_signature(item) for item in value}
        return "a" + (signatures.pop() if len(signatures) == 1 else "v")
    raise TypeError(
        f"cannot tell the D-Bus type of {type(value).__name__} value {value!r}; "
        f"wrap it in busd_client.Variant(signature, value)")
