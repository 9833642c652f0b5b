"""What every verb receives: the parsed options, the output, and the connected bus."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .connection import BusConnection
from .output import Output


@dataclass
class Context:
    options: argparse.Namespace
    output: Output
    bus: BusConnection
