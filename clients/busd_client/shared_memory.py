"""Named shared memory: a SharedBuffer published under a bus name, attached to by name (QSharedMemory, without keys).

    async with await bus.publish_shared_memory("org.example.Frame", frame_bytes):   # the publisher
        ...
    with await bus.shared_memory("org.example.Frame") as frame:                     # any other process
        show(frame.view)

The publisher owns the bus name and serves dev.busd.SharedMemory1
(interfaces/dev.busd.SharedMemory1.xml) at `memory_path(name)`; Attach hands
each caller a duplicate of the memfd, so the bus policy (who may own the name,
who may call it) and the publisher's own `allow` decide who maps it.  When the
publisher exits, the name vanishes and new attaches fail with
SharedMemoryNotFound, while mappings already made stay valid: they hold the
memory, not the publisher.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .dbus_types import MessageInfo, UInt64
from .errors import (AccessDenied, NameHasNoOwner, ServiceUnknown, SharedMemoryError, SharedMemoryNotFound,
                     UnknownInterface, UnknownMethod, UnknownObject)
from .names import RequestNameReply
from .service import Interface, dbus_property, method
from .shared_buffer import SharedBuffer

INTERFACE = "dev.busd.SharedMemory1"
PATH_PREFIX = "/dev/busd/SharedMemory"


def memory_path(name: str) -> str:
    """The object path serving the block published as `name`: one path per name, so one connection can
    publish several.  Characters other than letters and digits become _XX (their hex code)."""
    return f"{PATH_PREFIX}/" + "".join(c if c.isascii() and c.isalnum() else f"_{ord(c):02x}" for c in name)


class PublishingBus(Protocol):
    """What publishing and attaching need of a Bus (the facade passes itself)."""

    def export(self, path: str, obj: Interface) -> Any: ...

    def unexport(self, path: str, obj: Any = None) -> None: ...

    async def request_name(self, name: str, *, do_not_queue: bool = False) -> RequestNameReply: ...

    async def release_name(self, name: str) -> Any: ...

    async def call(self, destination: str, path: str, interface: str | None, member: str, *args: Any,
                   signature: str | None = None) -> Any: ...


class SharedMemory1(Interface, name=INTERFACE):
    """The publisher's side of one block (checked against interfaces/dev.busd.SharedMemory1.xml by the tests)."""

    def __init__(self, buffer: SharedBuffer, allow: Callable[[str], bool] | None) -> None:
        self.buffer = buffer
        self.allow = allow

    @method(out_names=("memory", "size", "writable"))
    def Attach(self, write_access: bool, info: MessageInfo) -> tuple[SharedBuffer, UInt64, bool]:
        if write_access and not self.buffer.writable:
            raise AccessDenied("this shared memory is published read-only")
        if self.allow is not None and not self.allow(info.sender or ""):
            raise AccessDenied(f"the publisher refuses {info.sender}")
        return self.buffer, self.buffer.size, self.buffer.writable

    @dbus_property(emits_changed="const")
    def Size(self) -> UInt64:
        return self.buffer.size

    @dbus_property(emits_changed="const")
    def Writable(self) -> bool:
        return self.buffer.writable


class PublishedMemory:
    """A block published under a bus name; `close()` (or leaving `async with`) withdraws it.

    `buffer` is the publisher's own mapping: writable when published
    writable, so the publisher writes through `buffer.view` like everyone else.
    """

    def __init__(self, bus: PublishingBus, name: str, buffer: SharedBuffer, service: SharedMemory1) -> None:
        self.bus = bus
        self.name = name
        self.buffer = buffer
        self._service = service
        self._closed = False

    async def close(self) -> None:
        """Give up the name, stop serving, and close the publisher's buffer (attached maps stay valid)."""
        if self._closed:
            return
        self._closed = True
        self.bus.unexport(memory_path(self.name), self._service)
        try:
            await self.bus.release_name(self.name)
        finally:
            self.buffer.close()

    async def __aenter__(self) -> PublishedMemory:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<PublishedMemory {self.name} {self.buffer!r}>"


async def publish(bus: PublishingBus, name: str, source: bytes | bytearray | memoryview | int | SharedBuffer,
                  writable: bool, allow: Callable[[str], bool] | None) -> PublishedMemory:
    """Publish a block under `name` (see Bus.publish_shared_memory)."""
    if isinstance(source, SharedBuffer):
        buffer = source
    elif isinstance(source, int) and not writable:
        raise ValueError("a read-only block needs its contents: pass bytes, or a frozen SharedBuffer(size)")
    else:
        buffer = SharedBuffer(source, writable=writable)
    if buffer.mode not in ("frozen", "write"):
        raise ValueError(f"publish a frozen or writable SharedBuffer, not one in mode {buffer.mode!r}")
    service = SharedMemory1(buffer, allow)
    path = memory_path(name)
    try:
        # Served before the name is taken, so a caller who sees the name finds the object.
        bus.export(path, service)
    except ValueError:
        if buffer is not source:
            buffer.close()
        raise SharedMemoryError(f"cannot publish under {name}: this connection already publishes it") from None
    try:
        reply = await bus.request_name(name, do_not_queue=True)
        if reply != RequestNameReply.PRIMARY_OWNER:
            raise SharedMemoryError(f"cannot publish under {name}: it is already owned "
                                    f"({'by this connection' if reply == RequestNameReply.ALREADY_OWNER else 'by another connection'})")
    except BaseException:
        bus.unexport(path, service)
        if buffer is not source:
            buffer.close()
        raise
    return PublishedMemory(bus, name, buffer, service)


async def attach(bus: PublishingBus, name: str, size: int | None, writable: bool) -> SharedBuffer:
    """Map the block published as `name` (see Bus.shared_memory)."""
    try:
        fd, block_size, block_writable = await bus.call(name, memory_path(name), INTERFACE, "Attach", writable,
                                                         signature="b")
    except (ServiceUnknown, NameHasNoOwner):
        raise SharedMemoryNotFound(f"no process publishes shared memory under {name}") from None
    except (UnknownObject, UnknownInterface, UnknownMethod):
        raise SharedMemoryError(f"{name} is owned, but its owner publishes no shared memory under it") from None
    except AccessDenied as error:
        raise SharedMemoryError(f"attaching {name} was refused: {error.message}") from error
    mode = "write" if writable else ("read" if block_writable else "frozen")
    buffer = SharedBuffer.adopt(fd, mode=mode)
    if size is not None and buffer.size != size:
        buffer.close()
        raise SharedMemoryError(f"{name} is {block_size} bytes, not the {size} asked for")
    return buffer
