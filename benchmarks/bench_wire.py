"""Micro-benchmark of the router's per-message wire work: framing, header + SENDER rewrite, body check.

Run from the repository root:

    python3 benchmarks/bench_wire.py

It prints microseconds per message (best of several timing runs) for three
messages a bus routes: a typical method call, a signal with a string argument,
and a method call carrying a 1 MiB `ay`. "header+SENDER" is parse_header without
the body check plus stamp_sender, for header fields seen before (the usual case:
parse_header caches validated fields); "same, uncached" is for fields never seen.
"all three" is framing, parse_header with the body check, and stamp_sender. This
is a measurement, not a test: it asserts nothing and its figures depend on the
machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import timeit
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from busd.wire import message as wire_message  # noqa: E402
from busd.wire.marshal import check_body  # noqa: E402
from busd.wire.message import (  # noqa: E402
    BIG, LITTLE, METHOD_CALL, SIGNAL, build_message, frame_size, parse_header, sender_field,
    stamp_sender,
)

SENDER = ":1.42"


def sample_messages(endian: int) -> dict[str, bytes]:
    """The three messages of the issue, as a client would send them (no SENDER field)."""
    return {
        "method call (Properties.Get, 'ss')": build_message(
            METHOD_CALL, 1234, path="/org/example/Music/Player", interface="org.freedesktop.DBus.Properties",
            member="Get", destination="org.example.Music", signature="ss",
            body=["org.example.Music.Player", "Volume"], endian=endian),
        "signal with a string argument": build_message(
            SIGNAL, 1235, path="/org/example/Music/Player", interface="org.example.Music.Player",
            member="TrackChanged", signature="s", body=["Nina Simone - Sinnerman (10:21)"], endian=endian),
        "method call with a 1 MiB 'ay'": build_message(
            METHOD_CALL, 1236, path="/org/example/Store", interface="org.example.Store", member="Put",
            destination="org.example.Store", signature="ay", body=[os.urandom(1 << 20)], endian=endian),
    }


def best_microseconds(step: Callable[[], object], repeats: int) -> float:
    """Best per-call time of `step` over `repeats` timing runs, each at least 0.2 s long."""
    timer = timeit.Timer(step)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=repeats, number=number)) / number * 1e6


def bench_message(buf: bytes, repeats: int) -> dict[str, float]:
    h = parse_header(buf)
    field = sender_field(SENDER, h.endian)
    size = len(buf)

    def framing() -> object:
        return frame_size(buf)

    def header_and_sender() -> object:
        hh = parse_header(buf, validate_body=False)
        return stamp_sender(buf, hh, field)

    forget_headers = wire_message._FIELDS_CACHE.clear

    def first_sight() -> object:
        # The same, for header fields not seen before: the cache of validated fields is emptied.
        forget_headers()
        hh = parse_header(buf, validate_body=False)
        return stamp_sender(buf, hh, field)

    def body_check() -> object:
        return check_body(h.signature, buf, h.body_start, size, h.endian, h.unix_fds)

    def whole_path() -> object:
        frame_size(buf)
        hh = parse_header(buf)
        return stamp_sender(buf, hh, field)

    return {
        "framing": best_microseconds(framing, repeats),
        "header+SENDER": best_microseconds(header_and_sender, repeats),
        "same, uncached": best_microseconds(first_sight, repeats),
        "body check": best_microseconds(body_check, repeats),
        "all three": best_microseconds(whole_path, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endian", choices=("l", "B"), default="l", help="byte order of the messages")
    parser.add_argument("--repeats", type=int, default=5, help="timing runs per figure; the best is kept")
    args = parser.parse_args()
    endian = LITTLE if args.endian == "l" else BIG

    print(f"# busd wire micro-benchmark: {platform.python_implementation()} {platform.python_version()}, "
          f"{platform.machine()}, byte order {args.endian!r}, best of {args.repeats}")
    columns = ("framing", "header+SENDER", "same, uncached", "body check", "all three")
    print(f"{'message':<38}{'bytes':>9}" + "".join(f"{c + ' µs':>18}" for c in columns))
    for name, buf in sample_messages(endian).items():
        figures = bench_message(buf, args.repeats)
        print(f"{name:<38}{len(buf):>9}" + "".join(f"{figures[c]:>18.2f}" for c in columns))


if __name__ == "__main__":
    main()
