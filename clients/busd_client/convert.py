"""Convert Python values to and from the bodies the D-Bus library marshals, guided by signature and hints.

Wire side (what dbus-next and dbus-fast marshal): structs are lists, arrays
are lists (bytes for `ay`), dicts are dicts, variants are the library's
Variant and `h` values are indexes into the message's fd list.  Python side:
structs become tuples or the hinted pydantic model / dataclass / NamedTuple,
variants are unwrapped (or kept as `busd_client.Variant` when hinted so) and
fds are plain descriptors.  Conversions are compiled once per (signature,
hint) into small closures; `None` stands for "no conversion needed".
"""

from __future__ import annotations

import enum
import os
import typing
from collections.abc import Sequence
from typing import Any, Callable

from busd.wire.signature import TypeNode, is_valid_signature, parse_signature

from ._backend import Backend
from .dbus_types import (
    Variant,
    guess_signature,
    is_struct_class,
    strip_annotated,
    struct_builder,
    struct_fields,
    struct_values,
)
from .errors import ArgumentTypeError
from .shared_buffer import SharedBuffer

Encoder = Callable[[Any, list[int]], Any]
"""(Python value, fds collected so far) -> wire value."""
Decoder = Callable[[Any, Sequence[int]], Any]
"""(wire value, the message's fds) -> Python value."""


def _element_hints(hint: Any, count: int) -> list[Any]:
    """The hints of a container's element types, or Nones when the hint says nothing."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        args = args[:1]
    return list(args[:count]) + [None] * (count - len(args[:count]))


class Codec:
    """Builds and caches the encoders and decoders for one backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._encoders: dict[tuple[str, Any], Encoder | None] = {}
        self._decoders: dict[tuple[str, Any], Decoder | None] = {}
        self._body_encoders: dict[tuple[str, Any], Callable[[Sequence[Any]], tuple[list[Any], list[int]]]] = {}
        self._body_decoders: dict[tuple[str, Any], Callable[[list[Any], Sequence[int]], list[Any]] | None] = {}

    # -- single complete types --------------------------------------------

    def encoder(self, node: TypeNode, hint: Any = None) -> Encoder | None:
        key = (node.signature, hint)
        try:
            return self._encoders[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable hint: build without caching
            return self._build_encoder(node, hint)
        encoder = self._encoders[key] = self._build_encoder(node, hint)
        return encoder

    def decoder(self, node: TypeNode, hint: Any = None) -> Decoder | None:
        key = (node.signature, hint)
        try:
            return self._decoders[key]
        except KeyError:
            pass
        except TypeError:
            return self._build_decoder(node, hint)
        decoder = self._decoders[key] = self._build_decoder(node, hint)
        return decoder

    def _build_encoder(self, node: TypeNode, hint: Any) -> Encoder | None:
        base, _ = strip_annotated(hint)
        code = node.code
        if code == "h":
            return _encode_fd
        if code == "v":
            return self._encode_variant
        if code == "a":
            return self._array_encoder(node.children[0], base)
        if code == "(":
            return self._struct_encoder(node, base)
        if isinstance(base, type) and issubclass(base, enum.Enum):
            return lambda value, fds: value.value if isinstance(value, enum.Enum) else value
        return None

    def _array_encoder(self, element: TypeNode, hint: Any) -> Encoder:
        if element.code == "y":
            return lambda value, fds: value if type(value) is bytes else bytes(value)
        if element.code == "{":
            key_hint, value_hint = _element_hints(hint, 2)
            encode_key = self.encoder(element.children[0], key_hint)
            encode_value = self.encoder(element.children[1], value_hint)
            if encode_key is None and encode_value is None:
                return lambda value, fds: value if type(value) is dict else dict(value)
            encode_key = encode_key or _identity
            encode_value = encode_value or _identity
            return lambda value, fds: {encode_key(k, fds): encode_value(v, fds) for k, v in value.items()}
        (element_hint,) = _element_hints(hint, 1)
        encode_element = self.encoder(element, element_hint)
        if encode_element is None:
            return lambda value, fds: value if type(value) is list else list(value)
        return lambda value, fds: [encode_element(item, fds) for item in value]

    def _struct_encoder(self, node: TypeNode, hint: Any) -> Encoder:
        names: list[str] | None = None
        if is_struct_class(hint):
            fields = _checked_fields(hint, node)
            names = [name for name, _ in fields]
            hints = [field_hint for _, field_hint in fields]
        else:
            hints = _element_hints(hint, len(node.children))
        encoders = [self.encoder(child, child_hint) for child, child_hint in zip(node.children, hints)]
        arity = len(node.children)

        def encode(value: Any, fds: list[int]) -> list[Any]:
            if names is not None:
                values = struct_values(value, names)
            elif isinstance(value, (tuple, list)):
                values = list(value)
            elif is_struct_class(type(value)):
                values = struct_values(value, [name for name, _ in struct_fields(type(value))])
            else:
                raise TypeError(f"D-Bus struct {node.signature} needs a tuple or a model, got {value!r}")
            if len(values) != arity:
                raise TypeError(f"D-Bus struct {node.signature} has {arity} fields, got {len(values)}: {value!r}")
            return [encode_item(item, fds) if encode_item else item
                    for encode_item, item in zip(encoders, values)]

        return encode

    def _encode_variant(self, value: Any, fds: list[int]) -> Any:
        if isinstance(value, Variant):
            signature, inner = value.signature, value.value
        elif isinstance(value, self.backend.Variant):
            return value
        else:
            signature, inner = guess_signature(value), value
        node = parse_signature(signature)[0]
        encode = self.encoder(node, None)
        wire = encode(inner, fds) if encode else inner
        mismatch = find_mismatch(node, wire, self.backend.Variant)
        if mismatch is not None:
            raise TypeError(f"the variant of type '{signature}' holds a wrong value: {mismatch_text(*mismatch)}")
        return self.backend.Variant(signature, wire)

    def _build_decoder(self, node: TypeNode, hint: Any) -> Decoder | None:
        base, _ = strip_annotated(hint)
        code = node.code
        if code == "h":
            if isinstance(base, type) and issubclass(base, SharedBuffer):
                return _adopt_buffer
            return _decode_fd
        if code == "v":
            keep_wrapped = base is Variant
            return lambda value, fds: self._decode_variant(value, fds, keep_wrapped)
        if code == "a":
            return self._array_decoder(node.children[0], base)
        if code == "(":
            return self._struct_decoder(node, base)
        if isinstance(base, type) and issubclass(base, enum.Enum):
            return lambda value, fds: base(value)
        return None

    def _array_decoder(self, element: TypeNode, hint: Any) -> Decoder | None:
        if element.code == "y":  # bytes, unless the hint asks for a list of numbers
            return (lambda value, fds: list(value)) if typing.get_origin(hint) is list else None
        if element.code == "{":
            key_hint, value_hint = _element_hints(hint, 2)
            decode_key = self.decoder(element.children[0], key_hint)
            decode_value = self.decoder(element.children[1], value_hint)
            if decode_key is None and decode_value is None:
                return None
            decode_key = decode_key or _identity
            decode_value = decode_value or _identity
            return lambda value, fds: {decode_key(k, fds): decode_value(v, fds) for k, v in value.items()}
        (element_hint,) = _element_hints(hint, 1)
        decode_element = self.decoder(element, element_hint)
        if decode_element is None:
            return None
        return lambda value, fds: [decode_element(item, fds) for item in value]

    def _struct_decoder(self, node: TypeNode, hint: Any) -> Decoder:
        if is_struct_class(hint):
            hints = [field_hint for _, field_hint in _checked_fields(hint, node)]
            build: Callable[[list[Any]], Any] = struct_builder(hint)
        else:
            hints = _element_hints(hint, len(node.children))
            build = tuple
        decoders = [self.decoder(child, child_hint) for child, child_hint in zip(node.children, hints)]
        if not any(decoders):
            return lambda value, fds: build(value)
        return lambda value, fds: build([decode(item, fds) if decode else item
                                          for decode, item in zip(decoders, value)])

    def _decode_variant(self, value: Any, fds: Sequence[int], keep_wrapped: bool) -> Any:
        signature = variant_signature(value)
        decode = self.decoder(parse_signature(signature)[0], None)
        inner = decode(value.value, fds) if decode else value.value
        return Variant(signature, inner) if keep_wrapped else inner

    def encode_variant(self, signature: str, value: Any, hint: Any, fds: list[int], member: str = "") -> Any:
        """Wrap `value` in the backend's Variant of `signature`, converting it as `hint` says.

        A value that does not fit raises ArgumentTypeError naming `member` (the property).
        """
        node = parse_signature(signature)[0]
        wire = self._checked(node, self.encoder(node, hint), value, fds, member, None, None)
        return self.backend.Variant(signature, wire)

    def _checked(self, node: TypeNode, encode: Encoder | None, value: Any, fds: list[int],
                 member: str, position: int | None, name: str | None) -> Any:
        """`value` encoded for `node`, checked before the backend sees it (its own errors name no member)."""
        try:
            wire = encode(value, fds) if encode else value
        except (TypeError, ValueError, AttributeError, OverflowError) as error:
            raise ArgumentTypeError(member, position, name, node.signature, type_description(node), value,
                                    str(error)) from None
        mismatch = find_mismatch(node, wire, self.backend.Variant)
        if mismatch is not None:
            detail = mismatch_text(*mismatch) if mismatch[0] else ""  # say where, when it is inside
            raise ArgumentTypeError(member, position, name, node.signature, type_description(node), value, detail)
        return wire

    def decode_value(self, signature: str, value: Any, hint: Any, fds: Sequence[int]) -> Any:
        """Convert one received value of type `signature` as `hint` says."""
        decode = self.decoder(parse_signature(signature)[0], hint)
        return decode(value, fds) if decode else value

    # -- whole message bodies ----------------------------------------------

    def body_encoder(self, signature: str, hints: Sequence[Any] = (), member: str = "",
                     names: Sequence[str | None] = ()) -> Callable[[Sequence[Any]], tuple[list[Any], list[int]]]:
        """A function turning call arguments into (body, fds) for `signature`.

        Each value is checked against its type first: one that does not fit raises
        ArgumentTypeError naming `member` ("interface.Member") and the argument
        (its position, and its name from `names`).
        """
        key = (signature, tuple(hints), member, tuple(names))
        try:
            return self._body_encoders[key]
        except (KeyError, TypeError):
            pass
        nodes = parse_signature(signature)
        padded = list(hints)[:len(nodes)] + [None] * (len(nodes) - len(hints))
        encoders = [self.encoder(node, hint) for node, hint in zip(nodes, padded)]
        arguments = list(zip(nodes, encoders, range(1, len(nodes) + 1),
                             list(names)[:len(nodes)] + [None] * (len(nodes) - len(names))))
        arity = len(nodes)

        def check_arity(args: Sequence[Any]) -> None:
            if len(args) != arity:
                raise TypeError(
                    f"{member or 'signature ' + repr(signature)} takes {arity} argument{'s' if arity != 1 else ''}"
                    f" (D-Bus signature '{signature}'), got {len(args)}")

        def encode(args: Sequence[Any]) -> tuple[list[Any], list[int]]:
            check_arity(args)
            fds: list[int] = []
            try:
                body = [self._checked(node, encode_arg, arg, fds, member, position, name)
                        for (node, encode_arg, position, name), arg in zip(arguments, args)]
            except BaseException:
                close_fds(fds)
                raise
            return body, fds
        try:
            self._body_encoders[key] = encode
        except TypeError:
            pass
        return encode

    def body_decoder(self, signature: str, hints: Sequence[Any] = ()
                     ) -> Callable[[list[Any], Sequence[int]], list[Any]] | None:
        """A function turning a received body into Python values, or None if the body is fine as it is."""
        key = (signature, tuple(hints))
        try:
            return self._body_decoders[key]
        except (KeyError, TypeError):
            pass
        nodes = parse_signature(signature)
        padded = list(hints)[:len(nodes)] + [None] * (len(nodes) - len(hints))
        decoders = [self.decoder(node, hint) for node, hint in zip(nodes, padded)]
        def decode_body(body: list[Any], fds: Sequence[int]) -> list[Any]:
            return [decode_arg(value, fds) if decode_arg else value
                    for decode_arg, value in zip(decoders, body)]

        decode = decode_body if any(decoders) else None
        try:
            self._body_decoders[key] = decode
        except TypeError:
            pass
        return decode


# -- checking values against their D-Bus type before the backend marshals them ---------

INTEGER_RANGES = {"y": (0, 2**8 - 1), "n": (-2**15, 2**15 - 1), "q": (0, 2**16 - 1), "i": (-2**31, 2**31 - 1),
                  "u": (0, 2**32 - 1), "x": (-2**63, 2**63 - 1), "t": (0, 2**64 - 1), "h": (0, 2**32 - 1)}
BASIC_TYPE_NAMES = {"y": "byte", "b": "boolean", "n": "16-bit integer", "q": "unsigned 16-bit integer",
                    "i": "32-bit integer", "u": "unsigned 32-bit integer", "x": "64-bit integer",
                    "t": "unsigned 64-bit integer", "d": "double (a float)", "s": "string",
                    "o": "object path", "g": "type signature", "h": "file descriptor", "v": "variant"}


def _type_noun(node: TypeNode, plural: bool = False) -> str:
    """The type in words, without an article: 'string', 'array of strings', 'dict of string to variant'."""
    code = node.code
    if code == "a":
        element = node.children[0]
        if element.code == "{":
            key, value = element.children
            noun = f"dict of {_type_noun(key)} to {_type_noun(value)}"
        elif element.code == "y":
            noun = "byte string (bytes)"
        else:
            noun = f"array of {_type_noun(element, plural=True)}"
    elif code == "(":
        noun = f"struct ({', '.join(_type_noun(child) for child in node.children)})"
    else:
        noun = BASIC_TYPE_NAMES[code]
    if not plural:
        return noun
    head, _, rest = noun.partition(" ")
    if rest.startswith(("of ", "(")):  # "array of x" -> "arrays of x", "struct (..)" -> "structs (..)"
        return f"{head}s {rest}"
    return noun.replace(" (a float)", "") + "s"


def type_description(node: TypeNode) -> str:
    """The type in plain words, with its article: 'a string', 'an unsigned 32-bit integer'."""
    noun = _type_noun(node)
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _is_object_path(value: str) -> bool:
    if value == "/":
        return True
    return value.startswith("/") and all(
        part and all(c.isascii() and (c.isalnum() or c == "_") for c in part) for part in value[1:].split("/"))


def find_mismatch(node: TypeNode, value: Any, variant_type: type) -> tuple[str, TypeNode, Any] | None:
    """Where the wire value `value` does not fit `node`: (path inside it, the type there, the value there)."""
    code = node.code
    if code in INTEGER_RANGES:
        low, high = INTEGER_RANGES[code]
        fits = isinstance(value, int) and low <= value <= high
    elif code == "b":
        fits = isinstance(value, int)
    elif code == "d":
        fits = isinstance(value, (int, float))
    elif code == "s":
        fits = isinstance(value, str)
    elif code == "o":
        fits = isinstance(value, str) and _is_object_path(value)
    elif code == "g":
        fits = isinstance(value, str) and is_valid_signature(value)
    elif code == "v":
        fits = isinstance(value, variant_type)
    elif code == "(":
        fits = isinstance(value, (list, tuple)) and len(value) == len(node.children)
        if fits:
            for index, (child, item) in enumerate(zip(node.children, value)):
                inner = find_mismatch(child, item, variant_type)
                if inner is not None:
                    return (f"[{index}]{inner[0]}",) + inner[1:]
    else:  # an array
        element = node.children[0]
        if element.code == "y":
            fits = isinstance(value, (bytes, bytearray))
        elif element.code == "{":
            fits = isinstance(value, dict)
            key_node, value_node = element.children
            for key, item in value.items() if fits else ():
                inner = (find_mismatch(key_node, key, variant_type) or
                         find_mismatch(value_node, item, variant_type))
                if inner is not None:
                    return (f"[{key!r}]{inner[0]}",) + inner[1:]
        else:
            fits = isinstance(value, list)
            for index, item in enumerate(value if fits else ()):
                inner = find_mismatch(element, item, variant_type)
                if inner is not None:
                    return (f"[{index}]{inner[0]}",) + inner[1:]
    return None if fits else ("", node, value)


def mismatch_text(where: str, node: TypeNode, value: Any) -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{where or 'it'} must be {type_description(node)} ('{node.signature}'), not {type(value).__name__} {shown}"


def variant_signature(variant: Any) -> str:
    """The signature of a backend Variant as a string."""
    signature = variant.signature
    if not isinstance(signature, str):  # some library versions keep a SignatureTree here
        signature = signature.signature
    return signature


def _checked_fields(cls: type, node: TypeNode) -> list[tuple[str, Any]]:
    fields = struct_fields(cls)
    if len(fields) != len(node.children):
        raise TypeError(
            f"{cls.__name__} has {len(fields)} fields but the D-Bus struct {node.signature} "
            f"has {len(node.children)}")
    return fields


def _identity(value: Any, fds: Any) -> Any:
    return value


def _encode_fd(value: Any, fds: list[int]) -> int:
    if not isinstance(value, int) and not hasattr(value, "fileno"):
        raise TypeError("a file descriptor is an int or an object with fileno()")
    descriptor = value if isinstance(value, int) else value.fileno()
    # Duplicate so the caller may close its descriptor as soon as the call returns;
    # the bus closes the duplicate once the message is written.
    fds.append(os.dup(descriptor))
    return len(fds) - 1


def _decode_fd(value: int, fds: Sequence[int]) -> int:
    try:
        return fds[value]
    except IndexError:
        raise ValueError(f"message refers to fd #{value} but carries only {len(fds)} fds") from None


TAKEN_FD = -1
"""Stands in a received message's fd list for a descriptor a SharedBuffer has adopted."""


def _adopt_buffer(value: int, fds: Sequence[int]) -> SharedBuffer:
    descriptor = _decode_fd(value, fds)
    if descriptor == TAKEN_FD:
        raise ValueError(f"fd #{value} of this message was already adopted by a SharedBuffer "
                         f"(one slot or method per message may take it)")
    # The buffer owns the descriptor now; marking it taken stops a second slot closing it again.
    if isinstance(fds, list):
        fds[value] = TAKEN_FD
    return SharedBuffer.adopt(descriptor)


def close_fds(fds: Sequence[int]) -> None:
    for descriptor in fds:
        try:
            os.close(descriptor)
        except OSError:
            pass


_codecs: dict[str, Codec] = {}


def codec_for(backend: Backend) -> Codec:
    codec = _codecs.get(backend.name)
    if codec is None:
        codec = _codecs[backend.name] = Codec(backend)
    return codec
