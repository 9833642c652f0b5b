"""D-Bus values as busctl shows them: the short one-line form, the --verbose tree, and JSON."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dbus_next.signature import Variant

from busd.wire.signature import TypeNode, parse_signature, parse_single_type

INDENT = " " * 8

# Escapes systemd's cescape() uses; any other byte below 0x20 or from 0x7f up is written in octal.
C_ESCAPES: dict[int, str] = {
    0x07: "\\a", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x0B: "\\v",
    0x5C: "\\\\", 0x22: '\\"', 0x27: "\\'",
}

# Basic type token -> the name busctl --verbose and monitor print before the value.
BASIC_TYPE_NAMES: dict[str, str] = {
    "y": "BYTE", "b": "BOOLEAN", "n": "INT16", "q": "UINT16", "i": "INT32", "u": "UINT32",
    "x": "INT64", "t": "UINT64", "d": "DOUBLE", "s": "STRING", "o": "OBJECT_PATH",
    "g": "SIGNATURE", "h": "UNIX_FD",
}


def c_escape(text: str) -> str:
    """`text` escaped the way busctl quotes strings, byte by byte of its UTF-8 form."""
    out = []
    for byte in text.encode("utf-8", "surrogateescape"):
        if byte in C_ESCAPES:
            out.append(C_ESCAPES[byte])
        elif byte < 0x20 or byte >= 0x7F:
            out.append(f"\\{byte:03o}")
        else:
            out.append(chr(byte))
    return "".join(out)


def format_double(value: float) -> str:
    """A double as C's printf("%g") writes it, as busctl does."""
    return "%g" % value


# ---- the short form: `as 2 "a" "b"` ----

def variant_type(variant: Variant) -> TypeNode:
    """The type a variant holds, parsed by busd.wire (dbus-next's own parse is not used)."""
    return parse_single_type(variant.signature)


def _short_basic(type_: TypeNode, value: Any) -> list[str]:
    return [str(value)]


def _short_boolean(type_: TypeNode, value: Any) -> list[str]:
    return ["true" if value else "false"]


def _short_double(type_: TypeNode, value: Any) -> list[str]:
    return [format_double(value)]


def _short_string(type_: TypeNode, value: Any) -> list[str]:
    return [f'"{c_escape(value)}"']


def _short_array(type_: TypeNode, value: Any) -> list[str]:
    element = type_.children[0]
    words = [str(len(value))]
    if element.code == "{":
        key_type, value_type = element.children
        for key, item in value.items():
            words += short_words(key_type, key) + short_words(value_type, item)
    else:
        for item in value:
            words += short_words(element, item)
    return words


def _short_struct(type_: TypeNode, value: Any) -> list[str]:
    words: list[str] = []
    for field_type, field in zip(type_.children, value):
        words += short_words(field_type, field)
    return words


def _short_variant(type_: TypeNode, value: Variant) -> list[str]:
    return [value.signature] + short_words(variant_type(value), value.value)


SHORT_FORMATTERS: dict[str, Callable[[TypeNode, Any], list[str]]] = {
    **{token: _short_basic for token in "ynqiuxth"},
    "b": _short_boolean,
    "d": _short_double,
    "s": _short_string,
    "o": _short_string,
    "g": _short_string,
    "a": _short_array,
    "(": _short_struct,
    "v": _short_variant,
}


def short_words(type_: TypeNode, value: Any) -> list[str]:
    """The words busctl prints for one value of `type_`, without its signature."""
    return SHORT_FORMATTERS[type_.code](type_, value)


def format_short_value(type_: TypeNode, value: Any) -> str:
    """One value in busctl's short form, without its signature (as in introspect's VALUE column)."""
    return " ".join(short_words(type_, value))


def format_short(signature: str, values: Sequence[Any]) -> str:
    """A message body as busctl call prints it: the signature, then every value (`s "hello"`)."""
    words = [signature]
    for type_, value in zip(parse_signature(signature), values):
        words += short_words(type_, value)
    return " ".join(words)


# ---- the verbose form: the tree busctl --verbose and busctl monitor print ----

def _verbose_container(opening: str, children: list[tuple[TypeNode, Any]], depth: int) -> list[str]:
    lines = [f"{INDENT * depth}{opening} {{"]
    for child_type, child in children:
        lines += verbose_lines(child_type, child, depth + 1)
    lines.append(f"{INDENT * depth}}};")
    return lines


def _verbose_array(type_: TypeNode, value: Any, depth: int) -> list[str]:
    element = type_.children[0]
    if element.code == "{":
        children = [(element, entry) for entry in value.items()]
    else:
        children = [(element, item) for item in value]
    return _verbose_container(f'ARRAY "{element.signature}"', children, depth)


def _verbose_struct(type_: TypeNode, value: Any, depth: int) -> list[str]:
    inner = type_.signature[1:-1]
    return _verbose_container(f'STRUCT "{inner}"', list(zip(type_.children, value)), depth)


def _verbose_dict_entry(type_: TypeNode, value: Any, depth: int) -> list[str]:
    inner = type_.signature[1:-1]
    return _verbose_container(f'DICT_ENTRY "{inner}"', list(zip(type_.children, value)), depth)


def _verbose_variant(type_: TypeNode, value: Variant, depth: int) -> list[str]:
    return _verbose_container(f'VARIANT "{value.signature}"', [(variant_type(value), value.value)], depth)


def _verbose_basic(type_: TypeNode, value: Any, depth: int) -> list[str]:
    token = type_.code
    if token == "b":
        shown = "true" if value else "false"
    elif token == "d":
        shown = format_double(value)
    elif token in "sog":
        shown = f'"{value}"'  # busctl --verbose prints strings raw, without escaping
    else:
        shown = str(value)
    return [f"{INDENT * depth}{BASIC_TYPE_NAMES[token]} {shown};"]


VERBOSE_FORMATTERS: dict[str, Callable[[TypeNode, Any, int], list[str]]] = {
    **{token: _verbose_basic for token in BASIC_TYPE_NAMES},
    "a": _verbose_array,
    "(": _verbose_struct,
    "{": _verbose_dict_entry,
    "v": _verbose_variant,
}


def verbose_lines(type_: TypeNode, value: Any, depth: int = 0) -> list[str]:
    """One value as lines of busctl's verbose tree, indented `depth` levels."""
    return VERBOSE_FORMATTERS[type_.code](type_, value, depth)


def format_verbose(signature: str, values: Sequence[Any], prefix: str = "") -> str:
    """A message body as busctl --verbose prints it: `MESSAGE "sig" { ... };`."""
    lines = [f'MESSAGE "{signature}" {{']
    for type_, value in zip(parse_signature(signature), values):
        lines += verbose_lines(type_, value, 1)
    lines.append("};")
    return "\n".join(prefix + line for line in lines)


# ---- JSON: the shapes busctl --json prints ----

def _json_key(type_: TypeNode, key: Any) -> str:
    """A dictionary key as a JSON object key (JSON keys are strings)."""
    if type_.code == "b":
        return "true" if key else "false"
    return key if isinstance(key, str) else str(key)


def json_value(type_: TypeNode, value: Any) -> Any:
    """One value as JSON data: variants as {"type", "data"}, structs as lists, dicts as objects."""
    token = type_.code
    if token == "a":
        element = type_.children[0]
        if element.code == "{":
            key_type, value_type = element.children
            return {_json_key(key_type, key): json_value(value_type, item) for key, item in value.items()}
        if element.code == "y":
            return list(value)
        return [json_value(element, item) for item in value]
    if token == "(":
        return [json_value(field_type, field) for field_type, field in zip(type_.children, value)]
    if token == "v":
        return json_variant(value)
    return value


def json_variant(variant: Variant) -> dict[str, Any]:
    return {"type": variant.signature, "data": json_value(variant_type(variant), variant.value)}


def json_body(signature: str, values: Sequence[Any]) -> dict[str, Any]:
    """A message body as busctl --json prints it: {"type": signature, "data": [values]}."""
    types = parse_signature(signature)
    return {"type": signature, "data": [json_value(t, v) for t, v in zip(types, values)]}
