"""Value classes as dataclasses make them, without dataclasses' cost at import.

(In busd.wire because it is the one room every other may import; it knows nothing of D-Bus.)

`dataclass()` writes each class's __init__, __repr__, __eq__, __hash__ and (frozen)
__setattr__/__delattr__ as source text and compiles it with exec() when the module
is imported: 1-4 ms a class here, 45 ms of busd's start for the 25 it defined on the
way to its address. `record` gives a class the same methods as closures over its
field list, so defining one costs microseconds; building an instance costs a few
microseconds more than a dataclass's, which is why it is for values made at start or
on a reload (configuration, limits, settings), not for those made per message or per
connection (those stay dataclasses).

The class looks like a dataclass to everything else: `dataclasses.fields()`,
`replace()`, `asdict()` and `is_dataclass()` work on it (it carries the same
`__dataclass_fields__`), and type checkers read `record` as `dataclass`
(`dataclass_transform`). What it supports is what busd uses: `frozen`, `kw_only`,
`field(default=..., default_factory=..., init=..., repr=..., compare=..., hash=...)`,
`__post_init__`; no slots, ordering, InitVar or inherited fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, Field, FrozenInstanceError
from typing import Any, Callable, ClassVar, TypeVar, dataclass_transform, get_origin, overload

T = TypeVar("T")

__all__ = ["record", "field"]

field = dataclasses.field  # the same field(): its Field objects are what record reads


@overload
def record(cls: type[T], /) -> type[T]: ...
@overload
def record(*, frozen: bool = False, kw_only: bool = False) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(field_specifiers=(dataclasses.field, Field))
def record(cls: type[T] | None = None, /, *, frozen: bool = False, kw_only: bool = False) -> Any:
    """@record, @record(frozen=True), @record(frozen=True, kw_only=True): as @dataclass(...) would."""
    if cls is None:
        return lambda cls: _build(cls, frozen, kw_only)
    return _build(cls, frozen, kw_only)


def _is_classvar(annotation: object) -> bool:
    if isinstance(annotation, str):  # under `from __future__ import annotations`, as in every busd module
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return annotation is ClassVar or get_origin(annotation) is ClassVar


def _make_fields(cls: type, kw_only: bool) -> list[Field]:
    if any("__dataclass_fields__" in vars(base) for base in cls.__mro__[1:]):
        raise TypeError(f"{cls.__qualname__}: record does not inherit fields; use dataclass")
    made = []
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if _is_classvar(annotation):
            continue
        default = cls.__dict__.get(name, MISSING)
        if isinstance(default, Field):
            f = default
            if f.kw_only is MISSING:
                f.kw_only = kw_only
        else:
            f = dataclasses.field(default=default, kw_only=kw_only)
        if isinstance(f.default, (list, dict, set)):
            raise ValueError(f"mutable default {type(f.default)} for field {name} is not allowed: "
                             "use default_factory")
        f.name = name
        f.type = annotation
        f._field_type = dataclasses._FIELD  # type: ignore[attr-defined]  # what fields() and asdict() look for
        if f.default is MISSING:
            if name in cls.__dict__:
                delattr(cls, name)  # a field() with a factory or nothing: no class attribute, as dataclass
        else:
            setattr(cls, name, f.default)
        made.append(f)
    return made


def _build(cls: type, frozen: bool, kw_only: bool) -> type:
    all_fields = _make_fields(cls, kw_only)
    cls.__dataclass_fields__ = {f.name: f for f in all_fields}  # type: ignore[attr-defined]
    init_fields = [f for f in all_fields if f.init]
    positional = tuple(f.name for f in init_fields if not f.kw_only)
    keyword = frozenset(f.name for f in init_fields)
    # (name, default, factory) for every field, in order: what __init__ fills in.
    plan = tuple((f.name, f.default, f.default_factory) for f in all_fields)
    post_init = next((vars(klass)["__post_init__"] for klass in cls.__mro__ if "__post_init__" in vars(klass)), None)
    qualname = cls.__qualname__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if args:
            if len(args) > len(positional):
                takes = len(positional) + 1
                raise TypeError(f"{qualname}.__init__() takes {takes} positional argument{'s' * (takes > 1)} "
                                f"but {len(args) + 1} were given")
            for name, value in zip(positional, args):
                if name in kwargs:
                    raise TypeError(f"{qualname}.__init__() got multiple values for argument {name!r}")
                kwargs[name] = value
        for name in kwargs:
            if name not in keyword:
                raise TypeError(f"{qualname}.__init__() got an unexpected keyword argument {name!r}")
        values = {}
        for name, default, factory in plan:
            if name in kwargs:
                values[name] = kwargs[name]
            elif default is not MISSING:
                values[name] = default
            elif factory is not MISSING:
                values[name] = factory()
            else:
                raise TypeError(f"{qualname}.__init__() missing 1 required argument: {name!r}")
        self.__dict__.update(values)
        if post_init is not None:
            post_init(self)

    shown = tuple(f.name for f in all_fields if f.repr)

    def __repr__(self: Any) -> str:
        inside = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
        return f"{type(self).__qualname__}({inside})"

    compared = tuple(f.name for f in all_fields if f.compare)

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return tuple([getattr(self, name) for name in compared]) == tuple([getattr(other, name) for name in compared])

    methods: dict[str, Any] = {"__init__": __init__, "__repr__": __repr__, "__eq__": __eq__}
    if "__match_args__" not in cls.__dict__:
        cls.__match_args__ = positional  # type: ignore[attr-defined]
    if frozen:
        hashed = tuple(f.name for f in all_fields if (f.compare if f.hash is None else f.hash))

        def __hash__(self: Any) -> int:
            return hash(tuple([getattr(self, name) for name in hashed]))

        names = frozenset(f.name for f in all_fields)

        def __setattr__(self: Any, name: str, value: Any) -> None:
            if type(self) is cls or name in names:
                raise FrozenInstanceError(f"cannot assign to field {name!r}")
            super(cls, self).__setattr__(name, value)

        def __delattr__(self: Any, name: str) -> None:
            if type(self) is cls or name in names:
                raise FrozenInstanceError(f"cannot delete field {name!r}")
            super(cls, self).__delattr__(name)

        methods.update(__hash__=__hash__, __setattr__=__setattr__, __delattr__=__delattr__)
    elif "__hash__" not in cls.__dict__:
        methods["__hash__"] = None  # eq without frozen: unhashable, as dataclass makes it
    for name, method in methods.items():
        if name in cls.__dict__:
            continue  # the class's own wins, as with dataclass
        if method is not None:
            method.__qualname__ = f"{qualname}.{name}"
        setattr(cls, name, method)
    return cls
