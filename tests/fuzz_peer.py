"""The hostile peer of the live fuzz (tests/live/test_live_fuzz.py): mutated messages and SASL to a running bus.

A FuzzPeer sends one input at a time and reports what the bus did with it:
  answered        the connection is still served: a Ping after the input got its reply
  dropped         the bus closed the connection (before or instead of answering the Ping)
  dropped at EOF  the input left the bus waiting for more bytes (a long message); once
                  we shut our side, the bus closed the connection
Anything else (no answer and no close within TIMEOUT) is a failure: the bus hung
on one peer's input. SASL inputs always end with our side shut: the bus must
answer what it can and then close ("answered, then dropped", or "dropped" when
it sent nothing).

The message inputs are tests/unit/test_wire_fuzz.py's mutated messages and the
bodies of tests/corpus/ wrapped in a message; the SASL inputs are generated here.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import strategies as st

from busclient import TIMEOUT, BusClosed, RawClient, WaitTimeout, _connect
from busd.wire.errors import ProtocolError
from busd.wire.message import FIXED_HEADER_SIZE, METHOD_CALL, build_message, frame_size
from test_message import raw_field, raw_message
from test_wire_fuzz import CorpusEntry

PAD_LIMIT = 256 * 1024  # a message claiming more than this many missing bytes is ended by EOF instead
ANSWERED, DROPPED, DROPPED_AT_EOF = "answered", "dropped", "dropped at EOF"
ANSWERED_THEN_DROPPED = "answered, then dropped"  # a SASL input: the bus replied, and closed at our EOF (or before)


class BusHung(AssertionError):
    """The bus neither answered nor closed a fuzzed connection in time."""


def complete_frame(buf: bytes) -> bytes | None:
    """`buf` padded with zeros to the length its fixed header claims; None when that is more than PAD_LIMIT.

    A frame the bus refuses outright (bad byte order, version or lengths) needs no
    padding: the bus drops the peer on its first 16 bytes.
    """
    if len(buf) < FIXED_HEADER_SIZE:
        buf += b"\0" * (FIXED_HEADER_SIZE - len(buf))
    try:
        total = frame_size(buf, 0, 1 << 32)
    except ProtocolError:
        return buf
    if total <= len(buf):
        return buf
    if total - len(buf) > PAD_LIMIT:
        return None
    return buf + b"\0" * (total - len(buf))


def corpus_message(entry: CorpusEntry) -> bytes:
    """A corpus input as a message: whole messages as they are, bodies behind a signal header."""
    if entry.signature is None:
        return entry.data
    fields = [raw_field(1, "o", "/fuzz", entry.endian), raw_field(2, "s", "dev.busd.Fuzz", entry.endian),
              raw_field(3, "s", "Corpus", entry.endian), raw_field(8, "g", entry.signature, entry.endian)]
    if entry.nfds:
        fields.append(raw_field(9, "u", entry.nfds, entry.endian))
    return raw_message(fields, entry.data[entry.start:], mtype=4, endian=entry.endian)


@dataclass
class FuzzPeer:
    """One hostile client: it keeps its connection while the bus answers, and reconnects after a drop."""

    address: str
    outcomes: Counter = field(default_factory=Counter)
    client: RawClient | None = None

    def message(self, buf: bytes) -> str:
        """Send one (mutated) message after Hello, then a Ping; what the bus did with it."""
        if self.client is None or self.client.closed:
            self.client = RawClient(self.address)
        client = self.client
        data = complete_frame(buf)
        try:
            if data is None:
                client.send_bytes(buf)
                return self._count(self._eof(client, buf))
            client.send_bytes(data)
            serial = client.call("org.freedesktop.DBus", "/", "org.freedesktop.DBus.Peer", "Ping")
            client.reply_to(serial, TIMEOUT)
            client.backlog.clear()  # what the input made the bus send us (replies, errors, signals)
            return self._count(ANSWERED)
        except (BusClosed, BrokenPipeError, ConnectionResetError):
            client.close()
            return self._count(DROPPED)
        except WaitTimeout:
            return self._count(self._eof(client, buf))

    def sasl(self, buf: bytes) -> str:
        """Send one (mutated) SASL conversation on a new connection, shut our side, and wait for the close."""
        sock = _connect(self.address)
        with sock:
            try:
                sock.sendall(buf)
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                return self._count(DROPPED)
            deadline = time.monotonic() + TIMEOUT
            answered = False
            while True:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    if not sock.recv(65536):
                        return self._count(ANSWERED_THEN_DROPPED if answered else DROPPED)
                    answered = True
                except ConnectionResetError:
                    return self._count(DROPPED)
                except socket.timeout:
                    raise BusHung(f"the bus kept a connection open {TIMEOUT}s after EOF; input {buf.hex()}") from None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def _eof(self, client: RawClient, buf: bytes) -> str:
        """Shut our side: a bus waiting for the rest of a message must now close the connection."""
        try:
            client.sock.shutdown(socket.SHUT_WR)
            client.wait_closed(TIMEOUT)
        except WaitTimeout:
            raise BusHung(f"the bus neither answered nor closed the connection; input {buf.hex()}") from None
        except OSError:
            pass
        finally:
            client.close()
        return DROPPED_AT_EOF

    def _count(self, outcome: str) -> str:
        self.outcomes[outcome] += 1
        return outcome


# ---------------------------------------------------------------- SASL inputs

HELLO = build_message(METHOD_CALL, 1, path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
                      member="Hello", destination="org.freedesktop.DBus")
_HEX_UID = "30"  # "0": uid 0 as EXTERNAL's hex-encoded decimal
_COMMANDS = [
    b"AUTH", b"AUTH EXTERNAL", b"AUTH EXTERNAL " + _HEX_UID.encode(), b"AUTH EXTERNAL 3130", b"AUTH ANONYMOUS",
    b"AUTH ANONYMOUS 74657374", b"AUTH DBUS_COOKIE_SHA1 30", b"AUTH BOGUS", b"CANCEL", b"BEGIN", b"DATA",
    b"DATA 30", b"DATA zz", b"ERROR", b"ERROR \"what\"", b"NEGOTIATE_UNIX_FD", b"OK", b"OK 0123",
    b"REJECTED EXTERNAL", b"AGREE_UNIX_FD", b"",
]


@st.composite
def sasl_inputs(draw) -> bytes:
    """A SASL conversation (the NUL byte, lines from the protocol's vocabulary or junk), then a few mutations."""
    out = bytearray(b"\0" if draw(st.integers(0, 9)) else draw(st.binary(min_size=1, max_size=2)))
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 4)):
            line = draw(st.sampled_from(_COMMANDS))
        else:
            line = draw(st.binary(max_size=64) | st.just(b"A" * draw(st.integers(1, 20000))))
        out += line + draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""]))
    if draw(st.integers(0, 3)) == 0:  # a message after BEGIN: Hello, or junk
        out += draw(st.sampled_from([HELLO, b"l\x01\x00\x01", b"\xff" * 16]))
    for _ in range(draw(st.integers(0, 3))):
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        if kind == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del out[at:at + draw(st.integers(1, 8))]
        else:
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(out)

