"""Micro-benchmark of what one hostile body costs the bus's event loop (issue 13, #7 and #11).

Run from the repository root:

    python3 benchmarks/bench_bodies.py [--mib 30]

"validate" is parse_header with the body check, for bodies of many tiny
elements (the shapes that cost the most per byte); "arg0 rule" is the work a
match rule `arg0='x'` does on a signal whose first argument is a large `ai`
(nothing, since argN only tests strings) or a string followed by one
(that string only). Figures are seconds per body, scaled from a body of
--mib MiB; the bus answers no one else meanwhile. This is a measurement, not a
test: it asserts nothing and its figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from busd.bus.match import MatchRule  # noqa: E402
from busd.wire.marshal import Variant  # noqa: E402
from busd.wire.message import SIGNAL, body_arguments, build_message, parse_header  # noqa: E402

MIB = 1 << 20


def signal(signature: str, body: list) -> bytes:
    return build_message(SIGNAL, 1, path="/", interface="com.example.Bench", member="Big",
                         signature=signature, body=body)


def shapes(size: int) -> dict[str, tuple[str, list]]:
    """Bodies of about `size` bytes, by name: (signature, values)."""
    return {
        "av, byte variants": ("av", [[Variant("y", 0)] * (size // 4)]),
        "av, byte and int16 mixed": ("av", [[Variant("y", 0), Variant("n", 0)] * (size // 10)]),
        "av, empty strings": ("av", [[Variant("s", "")] * (size // 9)]),
        "as, empty strings": ("as", [[""] * (size // 8)]),
        "aay, empty arrays": ("aay", [[b""] * (size // 4)]),
        "a(yy)": ("a(yy)", [[(1, 2)] * (size // 8)]),
        "ab": ("ab", [[True] * (size // 4)]),
    }


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=4, help="body size to time (default 4), scaled to 30 MiB")
    args = parser.parse_args()
    size = int(args.mib * MIB)
    scale = 30 * MIB / size
    print(f"seconds per 30 MiB body (timed on {args.mib:g} MiB)")
    for name, (signature, values) in shapes(size).items():
        message = signal(signature, values)
        print(f"  validate {name:28s} {timed(lambda: parse_header(message)) * scale:7.3f}")
    rule = MatchRule.parse("arg0='x'")
    numbers = [0] * (size // 4)
    for name, signature, values in (("ai first", "ai", [numbers]), ("string, then ai", "sai", ["x", numbers])):
        message = signal(signature, values)
        h = parse_header(message)
        cost = timed(lambda: rule.matches(h, (), lambda: body_arguments(message, h)))
        print(f"  arg0 rule, {name:27s} {cost * scale:7.3f}")


if __name__ == "__main__":
    main()
