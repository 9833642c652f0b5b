"""What every verb receives: the parsed options, the output, and the connected bus."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Generic, TypeVar

from .connection import BusConnection
from .link import WireLink
from .output import Output

# Most verbs talk through dbus-next (BusConnection); status, monitor and capture through busdctl's own link.
BusT = TypeVar("BusT", BusConnection, WireLink)


@dataclass
class Context(Generic[BusT]):
    options: argparse.Namespace
    output: Output
    bus: BusT
