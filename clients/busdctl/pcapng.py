"""pcapng blocks for D-Bus traffic (link type DBUS), as busctl capture writes and Wireshark reads."""

from __future__ import annotations

import struct

LINKTYPE_DBUS = 231
BYTE_ORDER_MAGIC = 0x1A2B3C4D
SECTION_HEADER_BLOCK = 0x0A0D0D0A
INTERFACE_DESCRIPTION_BLOCK = 0x00000001
ENHANCED_PACKET_BLOCK = 0x00000006

OPTION_END = 0
SHB_OS = 3
SHB_USER_APPLICATION = 4
IF_NAME = 2

# Timestamps are in microseconds, pcapng's default resolution (no if_tsresol option needed).
TICKS_PER_SECOND = 1_000_000


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _options(options: list[tuple[int, bytes]]) -> bytes:
    if not options:
        return b""
    encoded = b"".join(struct.pack("<HH", code, len(value)) + _padded(value) for code, value in options)
    return encoded + struct.pack("<HH", OPTION_END, 0)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def section_header(application: str, operating_system: str = "") -> bytes:
    """The block that opens a capture: byte order, version 1.0, section length unknown (-1)."""
    options = [(SHB_USER_APPLICATION, application.encode())]
    if operating_system:
        options.insert(0, (SHB_OS, operating_system.encode()))
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + _options(options)
    return _block(SECTION_HEADER_BLOCK, body)


def interface_description(snaplen: int, name: str = "") -> bytes:
    """The one capture interface, carrying whole D-Bus messages up to `snaplen` bytes."""
    options = [(IF_NAME, name.encode())] if name else []
    body = struct.pack("<HHI", LINKTYPE_DBUS, 0, snaplen) + _options(options)
    return _block(INTERFACE_DESCRIPTION_BLOCK, body)


def enhanced_packet(message: bytes, timestamp: float, snaplen: int) -> bytes:
    """One D-Bus message, cut to `snaplen` bytes, stamped with its arrival time (seconds)."""
    captured = message[:snaplen]
    ticks = int(timestamp * TICKS_PER_SECOND)
    body = struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(captured), len(message))
    return _block(ENHANCED_PACKET_BLOCK, body + _padded(captured))
