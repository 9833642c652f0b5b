"""busd.wire.records.record makes the same classes as dataclasses.dataclass (no bus needed).

Each case defines one class twice, with record and with dataclass, and demands the same
behaviour: construction (positional, keyword-only, defaults, factories, __post_init__),
the errors of a bad call, repr, equality, hashing, frozenness, and dataclasses.fields(),
replace(), asdict() and __match_args__.
"""

from __future__ import annotations

import dataclasses

import pytest

from busd.wire.records import field, record


def twins(frozen: bool, kw_only: bool) -> list[type]:
    made = []
    for decorate in (record(frozen=frozen, kw_only=kw_only), dataclasses.dataclass(frozen=frozen, kw_only=kw_only)):
        @decorate
        class Value:
            """A value."""

            x: int
            y: list[int] = field(default_factory=list, compare=False)
            z: str | None = None
            hidden: int = field(default=7, repr=False)

            def __post_init__(self) -> None:
                if self.x < 0:
                    raise ValueError("x must not be negative")

        made.append(Value)
    return made


def outcome(call):  # noqa: ANN001, ANN201
    try:
        return ("value", repr(call()))
    except Exception as exc:  # the kind of error is what must agree
        return ("error", type(exc).__name__)


@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("kw_only", [True, False])
def test_record_behaves_as_dataclass(frozen: bool, kw_only: bool) -> None:
    results = []
    for cls in twins(frozen, kw_only):
        a, b = cls(x=1), cls(x=1, y=[2], z="z")
        c = cls(x=1, y=[3])
        seen = [
            repr(a), repr(b), a == c, a == b, a != c, a == (1,), cls.__match_args__, cls.z,
            [(f.name, f.type, f.repr, f.compare) for f in dataclasses.fields(cls)],
            dataclasses.asdict(b), repr(dataclasses.replace(a, z="q")), dataclasses.is_dataclass(a),
            outcome(lambda: hash(a) == hash(c)),
            outcome(lambda: cls(1, [4])), outcome(lambda: cls()), outcome(lambda: cls(x=1, w=2)),
            outcome(lambda: cls(x=-1)), outcome(lambda: cls(1, 2, 3, 4, 5)),
        ]

        def assign() -> object:
            a.x = 5
            return a.x

        seen.append(outcome(assign))
        results.append(seen)
    assert results[0] == results[1]
