"""A minimal, fast, blocking D-Bus client for load generation: raw sockets and pre-marshalled bytes.

It authenticates by hand (SASL EXTERNAL), says Hello, and from then on moves
bytes: messages are marshalled once into templates whose serial (and reply
serial) are patched in place, and incoming messages are framed from their
16-byte fixed header without unmarshalling bodies. That keeps the client's
CPU per message far below any bus daemon's, so benchmarks measure the bus.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

# Message types and flags (D-Bus specification, "Message Format").
METHOD_CALL = 1
METHOD_RETURN = 2
ERROR = 3
SIGNAL = 4
NO_REPLY_EXPECTED = 0x1

# Header field codes and the single type each one carries.
PATH, INTERFACE, MEMBER, ERROR_NAME, REPLY_SERIAL, DESTINATION, SENDER, SIGNATURE, UNIX_FDS = range(1, 10)
FIELD_TYPES: dict[int, str] = {
    PATH: "o", INTERFACE: "s", MEMBER: "s", ERROR_NAME: "s", REPLY_SERIAL: "u",
    DESTINATION: "s", SENDER: "s", SIGNATURE: "g", UNIX_FDS: "u",
}

BUS_NAME = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"

# Offsets in the fixed header: body length @4, serial @8, header-field array length @12.
SERIAL_OFFSET = 8
_LENGTHS_LE = struct.Struct("<4xI4xI")
_LENGTHS_BE = struct.Struct(">4xI4xI")
_U32 = {ord("l"): struct.Struct("<I"), ord("B"): struct.Struct(">I")}
_U32_LE = struct.Struct("<I")

RECV_CHUNK = 256 * 1024
# One receive buffer for every Reader in the process: data is copied out of it right after
# each recv(), and a thousand idle connections should not cost a thousand buffers.
_SCRATCH = bytearray(RECV_CHUNK)
_SCRATCH_VIEW = memoryview(_SCRATCH)


class BusError(Exception):
    """The bus answered with an error or broke the protocol."""


def _pad8(n: int) -> int:
    return (n + 7) & ~7


# --- marshalling (little-endian, only the types the benchmarks need) ---------------------------

def _marshal_field(out: bytearray, code: int, value: str | int) -> None:
    out += b"\0" * (_pad8(len(out)) - len(out))
    kind = FIELD_TYPES[code]
    out += bytes((code, 1, ord(kind), 0))
    if kind == "u":
        out += _U32_LE.pack(value)
    elif kind == "g":
        raw = value.encode()
        out += bytes((len(raw),)) + raw + b"\0"
    else:
        raw = value.encode()
        out += _U32_LE.pack(len(raw)) + raw + b"\0"


def marshal_body(signature: str, values: tuple) -> bytes:
    """Marshal a body of strings ('s'), uint32s ('u') and byte arrays ('ay'); enough for benchmarks."""
    out = bytearray()
    codes = signature.replace("ay", "A")
    if len(codes) != len(values):
        raise ValueError(f"signature {signature!r} needs {len(codes)} values, got {len(values)}")
    for code, value in zip(codes, values):
        out += b"\0" * (((len(out) + 3) & ~3) - len(out))  # s, u and ay all align to 4
        if code == "s":
            raw = value.encode()
            out += _U32_LE.pack(len(raw)) + raw + b"\0"
        elif code == "u":
            out += _U32_LE.pack(value)
        elif code == "A":
            out += _U32_LE.pack(len(value)) + bytes(value)
        else:
            raise ValueError(f"rawclient cannot marshal type {code!r}; use 's', 'u' or 'ay'")
    return bytes(out)


def marshal(msg_type: int, fields: dict[int, str | int], body: bytes = b"", signature: str = "",
            serial: int = 1, flags: int = 0) -> bytearray:
    """Marshal a whole message (little-endian). Header fields are written in `fields` order."""
    header = bytearray(16)
    for code, value in fields.items():
        _marshal_field(header, code, value)
    if signature:
        _marshal_field(header, SIGNATURE, signature)
    fields_len = len(header) - 16
    header += b"\0" * (_pad8(len(header)) - len(header))
    struct.pack_into("<cBBBIII", header, 0, b"l", msg_type, flags, 1, len(body), serial, fields_len)
    return header + body


def method_call(destination: str | None, path: str, interface: str | None, member: str,
                signature: str = "", args: tuple = (), flags: int = 0) -> bytearray:
    fields: dict[int, str | int] = {PATH: path}
    if interface:
        fields[INTERFACE] = interface
    fields[MEMBER] = member
    if destination:
        fields[DESTINATION] = destination
    return marshal(METHOD_CALL, fields, marshal_body(signature, args), signature, flags=flags)


def signal(path: str, interface: str, member: str, signature: str = "", args: tuple = ()) -> bytearray:
    fields = {PATH: path, INTERFACE: interface, MEMBER: member}
    return marshal(SIGNAL, fields, marshal_body(signature, args), signature)


def set_serial(message: bytearray, serial: int, offset: int = 0) -> None:
    """Patch the serial of a little-endian message in place (at `offset` in a batch buffer)."""
    _U32_LE.pack_into(message, offset + SERIAL_OFFSET, serial)


class ReplyTemplate:
    """An empty method return to one caller, marshalled once; only the two serials change per reply."""

    # REPLY_SERIAL is the first field, so its value sits right after the 16-byte fixed header
    # and the 4 bytes of field code + variant signature.
    REPLY_SERIAL_OFFSET = 20

    def __init__(self, destination: str) -> None:
        self.bytes = bytes(marshal(METHOD_RETURN, {REPLY_SERIAL: 0, DESTINATION: destination}))

    def render(self, out: bytearray, serial: int, reply_serial: int) -> None:
        """Append this reply to `out` with its serials filled in."""
        start = len(out)
        out += self.bytes
        _U32_LE.pack_into(out, start + SERIAL_OFFSET, serial)
        _U32_LE.pack_into(out, start + self.REPLY_SERIAL_OFFSET, reply_serial)


# --- reading ---------------------------------------------------------------------------------

def message_type(header: bytes) -> int:
    return header[1]


def message_serial(header: bytes) -> int:
    return _U32[header[0]].unpack_from(header, SERIAL_OFFSET)[0]


def header_fields(header: bytes) -> dict[int, str | int]:
    """Decode the header fields of a message header (fixed part + field array)."""
    u32 = _U32[header[0]]
    end = 16 + u32.unpack_from(header, 12)[0]
    pos = 16
    fields: dict[int, str | int] = {}
    while pos < end:
        code, sig_len = header[pos], header[pos + 1]
        kind = chr(header[pos + 2]) if sig_len == 1 else "?"
        pos += 3 + sig_len  # code, signature length, signature, nul
        if kind in "so":
            pos = (pos + 3) & ~3
            length = u32.unpack_from(header, pos)[0]
            fields[code] = header[pos + 4:pos + 4 + length].decode()
            pos += 5 + length
        elif kind == "g":
            length = header[pos]
            fields[code] = header[pos + 1:pos + 1 + length].decode()
            pos += 2 + length
        elif kind == "u":
            pos = (pos + 3) & ~3
            fields[code] = u32.unpack_from(header, pos)[0]
            pos += 4
        else:
            raise BusError(f"header field {code} has a type rawclient does not read (signature length {sig_len})")
        pos = _pad8(pos)
    return fields


class Reader:
    """Frames incoming messages on a socket from their fixed header; bodies are skipped unread.

    `read()` blocks for one recv() and returns the headers of the messages it completed;
    `count()` does the same but only counts them, which is all a load generator needs.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._pending = bytearray()
        self._skip = 0                  # body bytes of a large message still to discard
        self._held: bytes | None = None  # header of that message, returned once it is whole
        self.errors = 0                 # ERROR messages seen so far

    def _recv(self, headers: list[bytes] | None) -> int:
        n = self.sock.recv_into(_SCRATCH)
        if n == 0:
            raise ConnectionError("the bus closed the connection")
        done = 0
        start = 0
        if self._skip:
            start = min(self._skip, n)
            self._skip -= start
            if self._skip == 0:
                done += 1
                if headers is not None:
                    headers.append(self._held)
                self._held = None
            if start == n:
                return done
        buf = self._pending
        buf += _SCRATCH_VIEW[start:n]
        return done + self._frame(headers)

    def _frame(self, headers: list[bytes] | None) -> int:
        buf = self._pending
        avail = len(buf)
        off = 0
        done = 0
        little, big = _LENGTHS_LE, _LENGTHS_BE  # locals: this loop runs once per message
        while avail - off >= 16:
            endian = buf[off]
            if endian == 108:  # "l"
                body_len, fields_len = little.unpack_from(buf, off)
            elif endian == 66:  # "B"
                body_len, fields_len = big.unpack_from(buf, off)
            else:
                raise BusError(f"not a D-Bus message: endianness byte {endian!r}; the stream is out of step")
            header_len = 16 + ((fields_len + 7) & ~7)
            total = header_len + body_len
            if avail - off >= total:
                done += 1
                if buf[off + 1] == ERROR:
                    self.errors += 1
                if headers is not None:
                    headers.append(bytes(buf[off:off + header_len]))
                off += total
            elif avail - off >= header_len:
                # A big message: keep its header, discard the body as it arrives.
                if buf[off + 1] == ERROR:
                    self.errors += 1
                self._held = bytes(buf[off:off + header_len])
                self._skip = total - (avail - off)
                off = avail
                break
            else:
                break
        del buf[:off]
        return done

    def read(self) -> list[bytes]:
        """Block until at least one whole message arrived; return the headers of all that did."""
        headers: list[bytes] = []
        while not headers:
            self._recv(headers)
        return headers

    def count(self) -> int:
        """One recv(): the number of whole messages it completed (may be 0)."""
        return self._recv(None)


# --- connecting ------------------------------------------------------------------------------

def parse_address(address: str) -> tuple[str, str]:
    """The first usable unix address in a D-Bus address list, as ("path"|"abstract", location)."""
    for entry in address.split(";"):
        transport, _, params = entry.partition(":")
        if transport != "unix":
            continue
        options = dict(p.split("=", 1) for p in params.split(",") if "=" in p)
        for key in ("path", "abstract"):
            if key in options:
                return key, unquote_to_bytes(options[key]).decode()
    raise ValueError(f"no unix:path= or unix:abstract= address in {address!r}; "
                     "rawclient only speaks unix sockets")


def open_socket(address: str, timeout: float | None = 30.0) -> socket.socket:
    kind, where = parse_address(address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(where if kind == "path" else "\0" + where)
    return sock


def _read_line(sock: socket.socket) -> tuple[bytes, bytes]:
    """One SASL line, and whatever arrived after it."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the bus closed the connection during authentication")
        data += chunk
    line, _, rest = data.partition(b"\r\n")
    return line, rest


def authenticate(sock: socket.socket, negotiate_unix_fd: bool = False) -> str:
    """SASL EXTERNAL by hand; returns the server GUID. Leaves the socket ready for BEGIN."""
    uid_hex = str(os.getuid()).encode().hex().encode()
    sock.sendall(b"\0AUTH EXTERNAL " + uid_hex + b"\r\n")
    line, _ = _read_line(sock)
    if not line.startswith(b"OK "):
        raise BusError(f"EXTERNAL authentication refused: {line!r}")
    guid = line[3:].decode()
    if negotiate_unix_fd:
        sock.sendall(b"NEGOTIATE_UNIX_FD\r\n")
        line, _ = _read_line(sock)
        if line != b"AGREE_UNIX_FD":
            raise BusError(f"the bus would not pass unix fds: {line!r}")
    return guid


HELLO = bytes(method_call(BUS_NAME, BUS_PATH, BUS_NAME, "Hello"))


@dataclass
class Connection:
    """One authenticated bus connection that has said Hello."""

    sock: socket.socket
    unique_name: str
    guid: str
    reader: Reader
    serial: int = 1  # the last serial used; Hello was 1
    backlog: list[bytes] = field(default_factory=list)  # headers read while waiting for a reply

    @classmethod
    def open(cls, address: str, negotiate_unix_fd: bool = False, timeout: float | None = 30.0,
             sync: bool = True) -> Connection:
        """Connect, authenticate and say Hello. With `sync`, one more round trip to the bus makes
        sure the NameAcquired signal that follows Hello has been read (into `backlog`), so that
        everything read later is traffic the caller asked for."""
        sock = open_socket(address, timeout)
        try:
            guid = authenticate(sock, negotiate_unix_fd)
            sock.sendall(b"BEGIN\r\n" + HELLO)
            conn = cls(sock=sock, unique_name="", guid=guid, reader=Reader(sock))
            reply = conn.wait_reply(1)
        except BaseException:
            sock.close()
            raise
        # Hello's body is our unique name, and the bus addresses its reply to that same name:
        # reading DESTINATION spares us unmarshalling a body.
        name = header_fields(reply).get(DESTINATION)
        if not isinstance(name, str) or not name.startswith(":"):
            sock.close()
            raise BusError(f"the Hello reply is not addressed to a unique name: {name!r}")
        conn.unique_name = name
        if sync:
            conn.bus_call("GetId")
        return conn

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def batch(self, template: bytes | bytearray, count: int) -> bytearray:
        """`count` copies of a marshalled message back to back, each with a fresh serial."""
        data = bytearray(template) * count
        size = len(template)
        for offset in range(0, size * count, size):
            self.serial += 1
            _U32_LE.pack_into(data, offset + SERIAL_OFFSET, self.serial)
        return data

    def send(self, data: bytes | bytearray | memoryview) -> None:
        self.sock.sendall(data)

    def wait_reply(self, serial: int) -> bytes:
        """Read until the reply to `serial` arrives; other messages go to `backlog`. Raises on ERROR."""
        reply = None
        while reply is None:
            for header in self.reader.read():
                if (reply is None and header[1] in (METHOD_RETURN, ERROR)
                        and header_fields(header).get(REPLY_SERIAL) == serial):
                    reply = header
                else:
                    self.backlog.append(header)
        if reply[1] == ERROR:
            raise BusError(f"call {serial} failed: {header_fields(reply).get(ERROR_NAME)}")
        return reply

    def call(self, message: bytearray) -> bytes:
        """Send a template message with a fresh serial and wait for its reply; returns the reply header."""
        serial = self.next_serial()
        set_serial(message, serial)
        self.send(message)
        return self.wait_reply(serial)

    def bus_call(self, member: str, signature: str = "", args: tuple = ()) -> bytes:
        return self.call(method_call(BUS_NAME, BUS_PATH, BUS_NAME, member, signature, args))

    def add_match(self, rule: str) -> None:
        self.bus_call("AddMatch", "s", (rule,))

    def close(self) -> None:
        self.sock.close()

