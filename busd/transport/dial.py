"""The client side of a D-Bus address: one connected, non-blocking socket (unix:, tcp:, nonce-tcp:).

Shared by the bridge's upstream link and busdctl's link; both then authenticate on the socket
with busd.wire's SASL client and read it through a Stream.
"""

from __future__ import annotations

import asyncio
import socket

from ..wire.address import Address

NONCE_SIZE = 16  # bytes a nonce-tcp client sends first, read from the server's nonce file
TRANSPORTS = ("unix", "tcp", "nonce-tcp")


def can_dial(address: Address) -> bool:
    """True if `address` names a bus to connect to over a transport dial() knows."""
    return address.transport in TRANSPORTS and address.connectable


async def dial(loop: asyncio.AbstractEventLoop, address: Address) -> socket.socket:
    """Connect to `address` (can_dial must hold); raises OSError naming why no socket connected."""
    if address.transport == "unix":
        return await _dial_unix(loop, address)
    return await _dial_tcp(loop, address)


async def _dial_unix(loop: asyncio.AbstractEventLoop, address: Address) -> socket.socket:
    params = address.params
    target = params["path"] if "path" in params else "\0" + params["abstract"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, target)
    except BaseException:
        sock.close()
        raise
    return sock


async def _dial_tcp(loop: asyncio.AbstractEventLoop, address: Address) -> socket.socket:
    params = address.params
    family = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}.get(params.get("family", ""), socket.AF_UNSPEC)
    infos = await loop.getaddrinfo(params.get("host", "localhost"), int(params["port"]), family=family,
                                   type=socket.SOCK_STREAM)
    last: OSError = OSError(f"no address for host {params.get('host', 'localhost')}")
    for family, kind, proto, _name, sockaddr in infos:
        sock = socket.socket(family, kind | socket.SOCK_CLOEXEC, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, sockaddr)
            if address.transport == "nonce-tcp":
                with open(params["noncefile"], "rb") as nonce_file:
                    await loop.sock_sendall(sock, nonce_file.read(NONCE_SIZE))
        except OSError as error:
            sock.close()
            last = error
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise last
